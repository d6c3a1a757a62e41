"""Every VAE family through the one contract: hierarchical latents (the built-in ladder and a two-layer model
written by hand), flow and full-covariance posteriors, conditional models. Every tool works for each; the
bounds keep their properties; bad models, contexts and settings are refused before any work."""

import importlib.util
import math
from pathlib import Path

import optree
import pytest
import torch
from hypothesis import given, settings, strategies as st

import funcvae
import funcvae.sweep
from funcvae import models, objectives as O

REPO = Path(__file__).resolve().parents[1]
N = 48


def example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FAMILIES = {
    "iaf": lambda: models.mlp(hidden=(16,), latent=3, posterior="iaf", flow_steps=2),
    "full": lambda: models.mlp(hidden=(16,), latent=3, posterior="full"),
    "ladder": lambda: models.ladder(hidden=(16, 8), latents=(4, 2)),
    "conditional": lambda: models.mlp(hidden=(16,), latent=3, context=10),
    "conditional-iaf": lambda: models.conv(channels=(4,), hidden=(16,), latent=3, context=4, posterior="iaf"),
    "two-layer (by hand)": lambda: example("two_layer").model,
    "conditional (by hand)": lambda: example("conditional").model,
}


def images(n=N, seed=0):
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))


def labels(model, n=N):
    return None if model.context is None else torch.arange(n) % model.context


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request):
    model = FAMILIES[request.param]()
    x, y = images(), labels(model)
    params, history = funcvae.fit(model.init(0), x, epochs=2, batch_size=16, compile=False, context=y,
                                  val_data=x[:16], val_context=None if y is None else y[:16], progress=False)
    return params, history, x, y


def test_every_tool_works_for_every_family(trained, tmp_path):
    params, history, x, y = trained
    model = params.model
    assert len(history) == 2 and all(math.isfinite(h["val_loss"]) for h in history)
    if model.groups is not None:  # the KL per group, in the history, summing to the total
        for h in history:
            assert list(h["kl_groups"]) == list(model.groups)
            assert sum(h["val_kl_groups"].values()) == pytest.approx(h["val_kl"], rel=1e-4, abs=1e-4)
    terms = funcvae.elbo(params, x, seed=0, context=y)
    bound = funcvae.iwae(params, x, k=20, seed=0, context=y)
    assert bound.shape == (N,) and bool(torch.isfinite(bound).all())
    mean, logvar = funcvae.encode(params, x[:4], seed=0, context=None if y is None else y[:4])
    assert mean.shape == logvar.shape == (4, model.noise_size)
    out = funcvae.decode(params, mean, context=None if y is None else y[:4])
    assert model.likelihood.mean(out).shape == (4, 784)
    images_ = funcvae.sample(params, 5, seed=0, context=None if y is None else torch.arange(5) % model.context)
    assert images_.shape == (5, 1, 28, 28) and 0 <= float(images_.min()) and float(images_.max()) <= 1
    active = funcvae.diagnostics.active_units(params, x, context=y)
    assert active.variance.shape == (model.noise_size,)
    funcvae.save_params(tmp_path / "p.safetensors", params)
    back = funcvae.load_params(tmp_path / "p.safetensors", model=model if model.spec is None else None)
    # A round trip is the identity, leaf for leaf, in the tree's own key order (the ladder's is not sorted).
    assert torch.utils._pytree.tree_structure(back.tree) == torch.utils._pytree.tree_structure(params.tree)
    assert all(torch.equal(a, b) for a, b in zip(torch.utils._pytree.tree_leaves(back.tree),
                                                 torch.utils._pytree.tree_leaves(params.tree)))
    assert all(torch.equal(a, b) for a, b in zip(funcvae.leaves_by_path(back).values(),
                                                 funcvae.leaves_by_path(params).values()))
    assert torch.equal(funcvae.elbo(back, x, seed=0, context=y)["loss"], terms["loss"])


def test_per_example_gradients_average_to_the_batch_gradient(trained):
    params, _, x, y = trained
    per = funcvae.per_example_grads(params, x[:6], seed=3, context=None if y is None else y[:6], compile=False)
    eps = torch.randn(6, 1, params.model.noise_size, generator=funcvae.rng.generator(3, "per-example"))
    c = None if y is None else funcvae.context.as_context(params.model, y[:6], 6, like=x)
    grads, _ = O.loss_and_grad(params, x[:6], eps, context=c)
    for path, g in funcvae.leaves_by_path(grads).items():
        torch.testing.assert_close(funcvae.leaves_by_path(per)[path].mean(0), g, atol=1e-5, rtol=1e-4, msg=path)


@pytest.mark.parametrize("family", ["ladder", "conditional"])
def test_the_compiled_step_and_a_stack_give_the_eager_numbers(family):
    model = FAMILIES[family]()
    x, y = images(32), labels(model, 32)
    settings_ = dict(epochs=1, batch_size=16, context=y, progress=False, seed=0)
    eager, _ = funcvae.fit(model.init(0), x, compile=False, **settings_)
    traced, _ = funcvae.fit(model.init(0), x, compile="aot_eager", **settings_)
    stack, _ = funcvae.fit(funcvae.stack([model.init(0), model.init(1)]), x, compile=False, seed=[0, 1],
                           **{k: v for k, v in settings_.items() if k != "seed"})
    first = funcvae.unstack(stack)[0]
    for path, t in funcvae.leaves_by_path(eager).items():
        torch.testing.assert_close(funcvae.leaves_by_path(traced)[path], t, atol=1e-5, rtol=1e-5, msg=path)
        torch.testing.assert_close(funcvae.leaves_by_path(first)[path], t, atol=1e-5, rtol=1e-5, msg=path)


def test_a_checkpointed_run_resumes_to_the_same_bits(tmp_path):
    model = FAMILIES["ladder"]()
    x = images(32)
    run = dict(batch_size=16, compile=False, progress=False, checkpoint_dir=str(tmp_path), checkpoint_every=1)
    whole, _ = funcvae.fit(model.init(0), x, epochs=2, batch_size=16, compile=False, progress=False)
    funcvae.fit(model.init(0), x, epochs=1, **run)
    resumed, history = funcvae.fit(model.init(0), x, epochs=2, resume=True, **run)
    assert [h["epoch"] for h in history] == [1, 2] and "kl_groups" in history[0]
    assert all(torch.equal(a, b) for a, b in zip(funcvae.leaves_by_path(whole).values(),
                                                 funcvae.leaves_by_path(resumed).values()))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), sizes=st.lists(st.integers(1, 4), min_size=2, max_size=3))
def test_the_elbo_of_latent_groups_is_the_sum_over_groups(seed, sizes):
    model = models.ladder(hidden=tuple(8 for _ in sizes), latents=tuple(sizes))
    params, x = model.init(seed), images(8, seed)
    terms = funcvae.elbo(params, x, seed=seed, k=3)
    torch.testing.assert_close(terms["kl_groups"].sum(-1), terms["kl"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(terms["loss"], terms["recon"] + terms["kl"])


@settings(max_examples=4, deadline=None)
@given(family=st.sampled_from(["iaf", "full", "ladder", "conditional"]), seed=st.integers(0, 2**16))
def test_iwae_is_above_the_elbo_and_rises_with_k(family, seed):
    # Params scaled by 3 put q(z|x) far from the true posterior, so IWAE_100 - IWAE_1 is many of its
    # standard errors above 0 (5 or more on 64 images for each family here), whatever the seed.
    model = FAMILIES[family]()
    params, x, y = model.init(seed), images(64, seed), labels(model, 64)
    params = funcvae.Params(model, optree.tree_map(lambda t: 3 * t, params.tree))
    w = funcvae.importance.log_weights(params, x, k=100, seed=seed, context=y)
    hundred = funcvae.iwae(params, x, k=100, seed=seed, context=y)
    assert bool((hundred >= w.mean(-1) - 1e-4).all())  # Jensen: above the ELBO of the same samples, always
    one = funcvae.iwae(params, x, k=1, seed=seed, context=y)
    d = (hundred - one).double()
    assert float(d.mean()) > 3 * float(d.std() / math.sqrt(d.numel()))
    # IWAE_1 is one sample of the ELBO (Monte Carlo KL): its mean is the 100-sample ELBO's, within 4 SEs.
    gap = one.double() + funcvae.elbo(params, x, seed=seed + 1, k=100, context=y)["loss"].double()  # paired
    assert abs(float(gap.mean())) < 4 * float(gap.std() / math.sqrt(gap.numel()))


def test_free_bits_floor_each_group_and_are_refused_where_there_are_none():
    ladder = FAMILIES["ladder"]()
    O.check(O.free_bits(O.elbo(), 0.5), ladder)  # per group
    for model, match in ((FAMILIES["iaf"](), "no KL per group"),
                         (models.mlp(hidden=(8,), latent=2, prior="vamp", pseudo_inputs=3), "closed-form")):
        with pytest.raises(ValueError, match=match):
            O.check(O.free_bits(O.elbo(), 0.5), model)
    with pytest.raises(ValueError, match="closed-form KL per latent dimension, which a posterior given as a draw"):
        O.check(O.elbo(kl="analytic"), ladder)
    # The floor lifts a group's KL term out of the loss's gradient while it is below the floor.
    params, x = ladder.init(0), images(8)
    eps = torch.randn(8, 1, ladder.noise_size, generator=torch.Generator().manual_seed(0))
    (_, (floored, terms)), (_, (plain, _)) = (O.loss_and_grad(params, x, eps, o)
                                              for o in (O.free_bits(O.elbo(), 1e6), O.elbo()))
    recon = float(terms["recon"].mean())
    assert float(floored) == pytest.approx(recon + 1e6 * len(ladder.groups), rel=1e-6)
    assert float(plain) == pytest.approx(recon + float(terms["kl"].mean()), rel=1e-6)


def _posterior_model(posterior, latent=3, **fields):
    def init(gen):
        return {"w": funcvae.nn.dense_init(gen, 784, 3), "d": funcvae.nn.dense_init(gen, 3, 784)}
    return funcvae.Model(init=init, posterior=posterior, decode=lambda t, z: funcvae.nn.dense(t["d"], z[..., :3] if
                                                                                           isinstance(z, torch.Tensor)
                                                                                           else z["a"]),
                         latent=latent, **fields)


def _draw(t, x, eps):
    z = funcvae.nn.dense(t["w"], x) + eps
    return z, -0.5 * (eps**2).sum()


@pytest.mark.parametrize("posterior,latent,match", [
    (lambda t, x, e: _draw(t, x, e)[0], 3, r"posterior must return \(z, log_q\)"),
    (lambda t, x, e: (_draw(t, x, e)[0][:2], _draw(t, x, e)[1]), 3, r"z for one example must be a tensor of shape \(3,\)"),
    (lambda t, x, e: (_draw(t, x, e)[0], _draw(t, x, e)[0]), 3, "log_q for one example must be a 0-d tensor"),
    (lambda t, x, e: ({"a": e["a"], "b": e["a"]}, torch.zeros(())), {"a": 3, "c": 2},
     r"must be a dict of 1-d tensors \{'a': 3, 'c': 2\}.*keys \['a', 'b'\]"),
    (lambda t, x, e: ({"a": e["a"], "c": e["c"]}, {"a": torch.zeros(()), "x": torch.zeros(())}), {"a": 3, "c": 2},
     r"log_q .* keyed \['a', 'c'\], got a dict with keys \['a', 'x'\]"),
])
def test_a_posterior_of_the_wrong_structure_is_refused_before_any_work(posterior, latent, match):
    model = _posterior_model(posterior, latent)
    with pytest.raises(ValueError, match=match):
        funcvae.elbo(model.init(0), images(4), seed=0)


def test_model_settings_that_cannot_work_are_refused_when_the_model_is_made():
    init = lambda g: {"w": torch.zeros(1)}  # noqa: E731
    with pytest.raises(TypeError, match="exactly one of encode= .* and posterior="):
        funcvae.Model(init=init, decode=init, latent=2)
    with pytest.raises(TypeError, match="got both"):
        funcvae.Model(init=init, encode=init, posterior=init, decode=init, latent=2)
    with pytest.raises(ValueError, match="latent groups .a dict. need posterior="):
        funcvae.Model(init=init, encode=init, decode=init, latent={"a": 2})
    with pytest.raises(ValueError, match="latent group 'a' must have a size"):
        funcvae.Model(init=init, posterior=init, decode=init, latent={"a": 0})
    with pytest.raises(ValueError, match="VampPrior .* needs a model given by encode="):
        funcvae.Model(init=init, posterior=init, decode=init, latent=2, prior="vamp")
    with pytest.raises(ValueError, match="context must be None or the size"):
        funcvae.Model(init=init, encode=init, decode=init, latent=2, context=0)
    with pytest.raises(ValueError, match="VampPrior's pseudo-inputs carry no context"):
        funcvae.Model(init=init, encode=init, decode=init, latent=2, context=3, prior="vamp")


@pytest.mark.parametrize("context,match", [
    (None, r"the model is conditional \(context=10\): pass context="),
    (torch.arange(N) + 1, "holds the label 10 at index 9, outside \\[0, 10\\)"),
    (torch.zeros(N, 3), r"vectors must have shape \(N, 10\)"),
    (torch.arange(N - 1) % 10, "has 47 rows for 48 examples"),
    (torch.full((N, 10), math.nan), "NaN or Inf"),
    (["a"] * N, "integer labels or float vectors"),
])
def test_a_bad_context_is_refused_before_any_work(context, match):
    params = FAMILIES["conditional"]().init(0)
    for entry in (lambda: funcvae.fit(params, images(), context=context, epochs=1, batch_size=16, compile=False),
                  lambda: funcvae.elbo(params, images(), seed=0, context=context),
                  lambda: funcvae.iwae(params, images(), k=2, seed=0, context=context)):
        with pytest.raises((ValueError, TypeError), match=match):
            entry()


def test_a_context_for_an_unconditional_model_is_refused():
    params = models.mlp(hidden=(8,), latent=2).init(0)
    with pytest.raises(ValueError, match=r"the model is unconditional \(context=None\), but a context was given"):
        funcvae.fit(params, images(), context=torch.zeros(N, dtype=torch.int64), epochs=1, compile=False)
    with pytest.raises(ValueError, match="unconditional"):
        funcvae.sample(params, 3, seed=0, context=torch.zeros(3, dtype=torch.int64))


def test_a_labelled_dataset_gives_its_labels_as_the_context():
    model = FAMILIES["conditional"]()
    params, x, y = model.init(0), images(), labels(model)
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=7, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    want = funcvae.elbo(params, x, seed=0, context=y)["loss"]
    torch.testing.assert_close(funcvae.elbo(params, dataset, seed=0)["loss"], want)
    shuffled = funcvae.elbo(params, loader, seed=0)["loss"]  # the loader's order, each label with its image
    order = torch.cat([b[0] for b in torch.utils.data.DataLoader(dataset, batch_size=7, shuffle=True,
                                                                  generator=torch.Generator().manual_seed(0))])
    mine = funcvae.elbo(params, order, seed=0, context=torch.cat(
        [b[1] for b in torch.utils.data.DataLoader(dataset, batch_size=7, shuffle=True,
                                                   generator=torch.Generator().manual_seed(0))]))["loss"]
    torch.testing.assert_close(shuffled, mine)
    vectors = torch.nn.functional.one_hot(y, 10).double()  # float vectors pass as they are
    torch.testing.assert_close(funcvae.elbo(params, x, seed=0, context=vectors)["loss"], want)


def test_conditional_samples_follow_their_label():
    # A decoder that ignores z and draws the label's own image: every sample of label k is image k.
    def init(gen):
        return {"images": torch.rand(10, 784, generator=gen)}
    model = funcvae.Model(init=init, encode=lambda t, x, c: (torch.zeros(2) + 0 * x[:2], torch.zeros(2)),
                          decode=lambda t, z, c: torch.logit(c @ t["images"], eps=1e-6) + 0 * z.sum(),
                          latent=2, context=10)
    params = model.init(0)
    out = funcvae.sample(params, 20, seed=0, context=torch.arange(20) % 10)
    torch.testing.assert_close(out.reshape(20, -1), params.tree["images"][torch.arange(20) % 10], atol=1e-5, rtol=0)


def test_the_examples_train_and_report_per_layer(capsys):
    two = example("two_layer").main(["--epochs", "1", "--n-train", "256", "--n-test", "64", "--no-compile"])
    assert set(two["history"][0]["val_kl_groups"]) == {"z1", "z2"} and math.isfinite(two["iwae"])
    assert "KL by layer: z1" in capsys.readouterr().out
    cond = example("conditional").main(["--epochs", "1", "--n-train", "256", "--n-test", "64", "--no-compile"])
    assert cond["samples"].shape == (10, 1, 28, 28) and math.isfinite(cond["iwae"])


def test_a_collapsed_group_is_named():
    history = [{"epoch": 1, "recon": 100.0, "kl": 12.0, "loss": 112.0, "val_recon": None, "val_kl": None,
                "val_loss": None, "kl_groups": {"z1": 11.99, "z2": 0.01}, "val_kl_groups": None}]
    (finding,) = funcvae.diagnostics.diagnose(history)
    assert finding["name"] == "posterior collapse" and finding["evidence"]["collapsed_groups"] == ["z2"]
    assert "z2: KL 0.01 nats, collapsed" in finding["advice"] and "free bits per group" in finding["advice"]


def test_every_batch_keeps_each_context_with_its_example():
    # Sharded as data-parallel processes take their rows: together they see every example once, each
    # example beside its own context.
    x = torch.arange(10.0).unsqueeze(1)
    c = torch.cat([2 * x, -x], 1)  # a context that names its example
    seen = []
    for shard in ((0, 2), (1, 2)):
        for xb, _, weights, cb in funcvae.batches.epoch_batches(x, 4, torch.Generator().manual_seed(0), 1, None,
                                                                 context=c, shard=shard):
            torch.testing.assert_close(cb, torch.cat([2 * xb, -xb], 1))
            seen += xb[weights > 0].flatten().tolist()
    assert sorted(seen) == list(range(10))


@pytest.mark.parametrize("family", ["ladder", "conditional"])
def test_the_rate_distortion_sweep_takes_any_family(family):
    model = FAMILIES[family]()
    x, y = images(32), labels(model, 32)
    rows = funcvae.sweep.rate_distortion(model.init(0), x, betas=[0.5, 2.0], epochs=1, batch_size=16, compile=False,
                                         val_data=x[:16], context=y, val_context=None if y is None else y[:16],
                                         progress=False)
    for row in rows:
        assert row["latent"] == model.noise_size and math.isfinite(row["loss"])
        assert row["rate"] + row["distortion"] == pytest.approx(row["loss"], rel=1e-5)


@pytest.mark.parametrize("name", [*FAMILIES, "default, iwae", "default, bf16 products"])
def test_the_eager_gradients_by_autograd_are_torch_func_grads_bit_for_bit(monkeypatch, name):
    """Run op by op, the step takes its gradients with torch.autograd.grad, else (traced, vmapped) with
    torch.func.grad: the same backward formulas, so the same bits, for every family."""
    from funcvae import step as S
    from funcvae.optim import adam
    model = models.mlp() if name.startswith("default") else FAMILIES[name]()
    objective = O.iwae(4) if name.endswith("iwae") else O.elbo()
    step = S.make_train_step(model, objective, adam(1e-3),
                             matmul_dtype=torch.bfloat16 if name.endswith("products") else None)
    state = S.init_state(model.init(seed=0), objective, adam(1e-3))
    g = torch.Generator().manual_seed(1)
    x = images(8)
    c = None if model.context is None else torch.nn.functional.one_hot(labels(model, 8), model.context).float()
    batch = S.Batch(x, torch.randn(8, objective.samples, model.noise_size, generator=g), torch.ones(8), context=c)
    seen = {}
    for by_autograd in (True, False):
        monkeypatch.setattr(S, "op_by_op", lambda: by_autograd)
        seen[by_autograd] = optree.tree_leaves(step.gradients(state, batch))
    assert len(seen[True]) == len(seen[False])
    for a, b in zip(seen[True], seen[False]):
        assert a.dtype == b.dtype and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
