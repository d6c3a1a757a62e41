"""Stacks: N models trained in one vmapped step equal N separate fits."""

import pytest
import torch

import funcvae


def test_stack_and_unstack_round_trip():
    models = [funcvae.init(seed=s, hidden=(8,), latent=2) for s in range(3)]
    stacked = funcvae.stack(models)
    assert funcvae.contract.stack_size(stacked) == 3
    for a, b in zip(models, funcvae.unstack(stacked)):
        assert all(torch.equal(a.tree["decoder"]["out"][k], b.tree["decoder"]["out"][k]) for k in ("kernel", "bias"))


def test_a_stack_of_a_users_model_with_a_vamp_prior_round_trips():
    def init(gen):
        return {"enc": funcvae.nn.dense_init(gen, 784, 6), "dec": funcvae.nn.dense_init(gen, 3, 784)}

    def encode(tree, x):
        h = funcvae.nn.dense(tree["enc"], x)
        return h[:3], h[3:]

    def decode(tree, z):
        return funcvae.nn.dense(tree["dec"], z)

    model = funcvae.Model(init=init, encode=encode, decode=decode, latent=3, prior=funcvae.priors.vamp(4))
    models = [model.init(seed=s) for s in range(2)]
    stacked = funcvae.stack(models)
    assert stacked.model is model and funcvae.contract.stack_size(stacked) == 2
    assert stacked.tree["prior"]["pseudo_inputs"].shape == (2, 4, 784)
    for a, b in zip(models, funcvae.unstack(stacked)):
        la, lb = funcvae.leaves_by_path(a), funcvae.leaves_by_path(b)
        assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)
    with pytest.raises(ValueError, match="params are a stack of 2 models"):
        funcvae.elbo(stacked, torch.rand(2, 784), seed=0)


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
                compile=lambda gm, inputs: graphs.append(1) or gm.forward, share_cores=False)  # one thread count
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
    with pytest.raises(ValueError, match="stacked params must share one model, got 2 different ones"):
        funcvae.stack([funcvae.init(seed=0, latent=2), funcvae.init(seed=0, latent=3)])
    with pytest.raises(ValueError, match="a stack of that many"):
        funcvae.fit(funcvae.init(seed=0, hidden=(8,)), torch.rand(8, 784), epochs=1, batch_size=4, seed=[0, 1])


def test_a_per_example_optimiser_is_refused_for_a_stack_before_any_work():
    stacked = funcvae.stack([funcvae.init(seed=s, hidden=(8,), latent=2) for s in range(2)])
    dp = funcvae.optim.chain(funcvae.optim.differentially_private_aggregate(1.0, 1.0), funcvae.optim.adam(1e-3))
    with pytest.raises(ValueError, match="per-example gradients.*not a stack"):
        funcvae.fit(stacked, torch.rand(8, 784), epochs=1, batch_size=4, optimizer=dp, compile=False)
