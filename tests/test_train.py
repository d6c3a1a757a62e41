"""fit on real Fashion-MNIST subsets: it learns, it is deterministic, it is pure, its options do what they say."""

import math

import optree
import pytest
import torch

import funcvae

EAGER = dict(compile=False)  # the compiled step has tests of its own (test_step.py)
KEYS = {"epoch", "recon", "kl", "loss", "val_recon", "val_kl", "val_loss", "beta", "skipped", "seconds"}


def test_fit_lowers_the_held_out_loss(fashion):
    train, test = fashion
    params = funcvae.init(seed=0)
    before = funcvae.elbo(params, test, seed=1)["loss"]
    trained, history = funcvae.fit(params, train, epochs=3, val_data=test, seed=0, **EAGER)
    after = funcvae.elbo(trained, test, seed=1)["loss"]
    # Paired per-example differences: the mean drop must exceed 5 standard errors of itself.
    drop = before - after
    assert float(drop.mean()) > 5 * float(drop.std() / math.sqrt(len(drop)))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(set(h) == KEYS for h in history)
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_loss"] == pytest.approx(history[-1]["val_recon"] + history[-1]["val_kl"])


def test_same_seed_gives_identical_params_and_history(fashion):
    train, test = fashion
    runs = [funcvae.fit(funcvae.init(seed=0), train[:600], epochs=2, val_data=test[:200], seed=s, **EAGER)
            for s in (5, 5, 6)]
    (a, ha), (b, hb), (c, _) = runs
    for k, t in funcvae.leaves_by_path(a).items():
        assert torch.equal(t, funcvae.leaves_by_path(b)[k]), k
    assert not torch.equal(a.tree["decoder"]["out"]["kernel"], c.tree["decoder"]["out"]["kernel"])
    def without_seconds(history):
        return [{k: v for k, v in record.items() if k != "seconds"} for record in history]

    assert without_seconds(ha) == without_seconds(hb)


def test_fit_does_not_touch_its_inputs(fashion):
    train, _ = fashion
    params = funcvae.init(seed=0, hidden=(32,), latent=4)
    data = train[:256].clone()
    before = [t.clone() for t in optree.tree_leaves(params.tree)]
    trained, _ = funcvae.fit(params, data, epochs=1, batch_size=64, **EAGER)
    assert all(torch.equal(a, b) for a, b in zip(before, optree.tree_leaves(params.tree)))
    assert torch.equal(data, train[:256])
    assert not torch.equal(trained.tree["encoder"]["mean"]["bias"], params.tree["encoder"]["mean"]["bias"])


def test_without_val_data_the_val_keys_are_none(fashion):
    train, _ = fashion
    _, history = funcvae.fit(funcvae.init(seed=0, hidden=(32,)), train[:300], epochs=1, batch_size=128, **EAGER)
    assert history[0]["val_recon"] is None and history[0]["val_kl"] is None and history[0]["val_loss"] is None


def test_kl_warmup_raises_beta_linearly_to_its_target(fashion):
    train, _ = fashion
    _, history = funcvae.fit(funcvae.init(seed=0, hidden=(32,)), train[:512], epochs=4, batch_size=128,
                             beta=2.0, kl_warmup=2, **EAGER)
    assert [h["beta"] for h in history] == [1.0, 2.0, 2.0, 2.0]
    for h in history:  # the reported loss uses the target beta, so epochs stay comparable
        assert h["loss"] == pytest.approx(h["recon"] + 2.0 * h["kl"])


def test_dynamic_binarisation_is_seeded_and_changes_the_data_seen(fashion):
    train, test = fashion
    runs = [funcvae.fit(funcvae.init(seed=0, hidden=(32,)), train[:512], epochs=1, val_data=test[:100], seed=0,
                        binarize=b, **EAGER)[1][0] for b in ("dynamic", "dynamic", None)]
    assert runs[0]["val_loss"] == runs[1]["val_loss"] and runs[0]["loss"] == runs[1]["loss"]
    assert runs[0]["loss"] != runs[2]["loss"]


@pytest.mark.parametrize("model", [
    dict(arch="conv", channels=(8, 16), hidden=(64,), latent=8),
    dict(hidden=(128,), latent=8, likelihood="gaussian"),
    dict(hidden=(128,), latent=8, likelihood="gaussian", obs_std=0.2),
])
def test_every_architecture_and_likelihood_learns(fashion, model):
    train, test = fashion
    params = funcvae.init(seed=0, **model)
    before = funcvae.elbo(params, test[:300], seed=1)["loss"]
    trained, _ = funcvae.fit(params, train[:1024], epochs=2, batch_size=64, seed=0, **EAGER)
    drop = before - funcvae.elbo(trained, test[:300], seed=1)["loss"]
    assert float(drop.mean()) > 5 * float(drop.std() / math.sqrt(len(drop)))
