"""Stacks: N models trained in one vmapped step equal N separate fits."""

import pytest
import torch

import funcvae


def test_stack_and_unstack_round_trip():
    models = [funcvae.init(seed=s, hidden=(8,), latent=2) for s in range(3)]
    stacked = funcvae.stack(models)
    assert funcvae.model.stack_size(stacked) == 3
    for a, b in zip(models, funcvae.unstack(stacked)):
        assert all(torch.equal(a.tree["decoder"]["out"][k], b.tree["decoder"]["out"][k]) for k in ("kernel", "bias"))


def test_a_stack_trains_like_separate_fits(fashion):
    train, test = fashion
    models = [funcvae.init(seed=s, hidden=(32,), latent=4) for s in range(3)]
    seeds, lrs, betas = [0, 1, 2], [1e-3, 3e-3, 2e-3], [1.0, 0.5, 2.0]
    settings = dict(epochs=2, batch_size=100, kl_warmup=1, compile=False)
    stacked, histories = funcvae.fit(funcvae.stack(models), train[:350], val_data=test[:100], seed=seeds, lr=lrs,
                                     beta=betas, **settings)
    for i, (model, got) in enumerate(zip(models, funcvae.unstack(stacked))):
        want, history = funcvae.fit(model, train[:350], val_data=test[:100], seed=seeds[i], lr=lrs[i], beta=betas[i],
                                    **settings)
        for path, t in funcvae.leaves_by_path(want).items():
            torch.testing.assert_close(funcvae.leaves_by_path(got)[path], t, rtol=1e-4, atol=1e-5, msg=path)
        for a, b in zip(histories[i], history):
            for key in ("recon", "kl", "loss", "val_loss", "beta"):
                assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_a_compiled_stack_step_is_traced_once(fashion):
    train, _ = fashion
    graphs = []
    stacked = funcvae.stack([funcvae.init(seed=s, hidden=(16,), latent=2) for s in range(2)])
    funcvae.fit(stacked, train[:250], epochs=2, batch_size=100, seed=[3, 4],
                compile=lambda gm, inputs: graphs.append(1) or gm.forward)
    assert len(graphs) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=[0, 1, 2]), "seed has 3 values"),
    (dict(lr=[1e-3]), "lr has 1 values"),
])
def test_per_model_settings_must_match_the_stack(kwargs, match):
    stacked = funcvae.stack([funcvae.init(seed=s, hidden=(8,), latent=2) for s in range(2)])
    with pytest.raises(ValueError, match=match):
        funcvae.fit(stacked, torch.rand(8, 784), epochs=1, batch_size=4, **kwargs)


def test_stacks_need_one_spec_and_single_models_refuse_sequences():
    with pytest.raises(ValueError, match="one spec"):
        funcvae.stack([funcvae.init(seed=0, latent=2), funcvae.init(seed=0, latent=3)])
    with pytest.raises(ValueError, match="a stack of that many"):
        funcvae.fit(funcvae.init(seed=0, hidden=(8,)), torch.rand(8, 784), epochs=1, batch_size=4, seed=[0, 1])
