"""The bound: torch.func against plain autograd and Python loops, and the public elbo/encode/decode."""

import pytest
import torch
import torch.nn.functional as F

import funcvae
from funcvae import objectives, optim
from funcvae.objectives import batch_terms, loss_and_grad
from funcvae.step import Batch, init_state, make_train_step

MODELS = {
    "mlp-bernoulli": dict(hidden=(64, 32), latent=5),
    "mlp-gaussian-learned": dict(hidden=(48,), latent=4, likelihood="gaussian", activation="tanh"),
    "mlp-gaussian-fixed": dict(hidden=(48,), latent=4, likelihood="gaussian", obs_std=0.3, activation="elu"),
    "conv-bernoulli": dict(arch="conv", channels=(4, 8), hidden=(16,), latent=3),
}


def batch(model, n=6, k=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, model.features, generator=g)
    eps = torch.randn(n, k, model.latent, generator=g)
    return x, eps


def hyper(objective, x, count=0):
    """The objective's numbers in force at step ``count``, in ``x``'s dtype (as a training step sees them)."""
    return objective.schedule(objective.init(), torch.tensor(count), x.dtype)


def example_terms(params, x, eps, beta):
    """The beta-ELBO's terms of ONE example."""
    obj = objectives.elbo(beta)
    return obj.terms(params, x, eps, hyper(obj, x))


def elbo_terms(params, x, eps, beta):
    """The beta-ELBO's terms of a batch."""
    obj = objectives.elbo(beta)
    return batch_terms(params, x, eps, hyper(obj, x), obj)


@pytest.mark.parametrize("model", MODELS)
def test_torch_func_gradients_equal_plain_autograd(model):
    params = funcvae.init(seed=1, **MODELS[model])
    x, eps = batch(params.model, k=2)
    grads, (loss, _) = loss_and_grad(params, x, eps, objectives.elbo(0.7))
    assert isinstance(grads, funcvae.Params) and grads.model is params.model

    leaves = funcvae.leaves_by_path(params)
    live = {path: t.clone().requires_grad_() for path, t in leaves.items()}
    live_params = funcvae.Params(params.model, _unflatten(live))
    total = sum(example_terms(live_params, x[i], eps[i], 0.7)["loss"] for i in range(len(x))) / len(x)
    total.backward()
    torch.testing.assert_close(loss, total.detach())
    for path, g in funcvae.leaves_by_path(grads).items():
        # The two sum the same products in different orders (vmap's batched kernels against a loop, and the
        # thread count changes the order too). A conv bias's gradient sums its channel over every position and
        # example, thousands of terms, whose reordering costs up to about sqrt(n) float32 roundoffs u of the
        # leaf's largest entry (58 u measured at the worst leaf on one thread): allow 128 u of it.
        reference = live[path].grad
        torch.testing.assert_close(g, reference, atol=128 * 2.0**-24 * float(reference.abs().max()), rtol=1.3e-6,
                                   msg=path)


def test_the_mlp_bound_equals_its_textbook_formula():
    params = funcvae.init(seed=2, hidden=(32,), latent=4)
    x, eps = batch(params.model, n=10)
    enc, dec = params.tree["encoder"], params.tree["decoder"]
    h = F.relu(x @ enc["hidden_0"]["kernel"].T + enc["hidden_0"]["bias"])
    mean = h @ enc["mean"]["kernel"].T + enc["mean"]["bias"]
    logvar = h @ enc["logvar"]["kernel"].T + enc["logvar"]["bias"]
    z = mean + torch.exp(0.5 * logvar) * eps[:, 0]
    h = F.relu(z @ dec["hidden_0"]["kernel"].T + dec["hidden_0"]["bias"])
    logits = h @ dec["out"]["kernel"].T + dec["out"]["bias"]
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
    kl = -0.5 * torch.sum(1 + logvar - mean**2 - logvar.exp(), dim=1)
    terms = elbo_terms(params, x, eps, 2.0)
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(terms["loss"], recon + 2.0 * kl)


@pytest.mark.parametrize("model", MODELS)
def test_vmapped_per_example_terms_equal_a_python_loop(model):
    params = funcvae.init(seed=3, **MODELS[model])
    x, eps = batch(params.model, n=7, k=3)
    terms = elbo_terms(params, x, eps, 1.0)
    for i in range(len(x)):
        one = example_terms(params, x[i], eps[i], 1.0)
        for name, value in one.items():
            torch.testing.assert_close(terms[name][i], value)


def test_k_samples_average_the_single_sample_reconstructions():
    params = funcvae.init(seed=4, hidden=(32,), latent=4)
    x, eps = batch(params.model, n=5, k=8)
    many = elbo_terms(params, x, eps, 1.0)
    singles = torch.stack([elbo_terms(params, x, eps[:, j:j + 1], 1.0)["recon"] for j in range(8)])
    torch.testing.assert_close(many["recon"], singles.mean(0))


def test_objective_is_the_batch_mean_and_reports_sums():
    params = funcvae.init(seed=5, hidden=(16,), latent=2)
    x, eps = batch(params.model, n=9)
    obj = objectives.elbo(0.5)
    grads, (loss, reported) = loss_and_grad(params, x, eps, obj)
    terms = elbo_terms(params, x, eps, 0.5)
    torch.testing.assert_close(loss, terms["loss"].mean())
    for name in ("recon", "kl", "loss"):
        torch.testing.assert_close(reported[name], terms[name])
    torch.testing.assert_close(terms["kl_dims"].sum(-1), terms["kl"])
    # The training step's metrics are the batch SUMS of the terms and the number of rows, and its gradients
    # those of the batch mean; padding rows (weight 0) count in neither.
    step = make_train_step(params.model, obj, optim.sgd(1.0))
    state = init_state(params, obj, optim.sgd(1.0))
    padded = Batch(torch.cat([x, x[:3]]), torch.cat([eps, eps[:3]]), torch.cat([torch.ones(9), torch.zeros(3)]))
    step_grads, stats = step.gradients(state, padded)
    for i, name in enumerate(("recon", "kl", "loss")):
        torch.testing.assert_close(stats[i], terms[name].sum())
    assert float(stats[3]) == 9
    for path, g in funcvae.leaves_by_path(grads).items():
        torch.testing.assert_close(funcvae.leaves_by_path(funcvae.Params(params.model, step_grads))[path], g, msg=path)


def test_free_bits_floor_each_dimensions_batch_mean_kl():
    params = funcvae.init(seed=5, hidden=(16,), latent=3)
    x, eps = batch(params.model, n=9)
    terms = elbo_terms(params, x, eps, 2.0)
    floor = float(terms["kl_dims"].mean(0).median())  # one dimension above, one below (or at) the floor
    _, (loss, reported) = loss_and_grad(params, x, eps, objectives.free_bits(objectives.elbo(2.0), floor))
    want = terms["recon"].mean() + 2.0 * torch.clamp(terms["kl_dims"].mean(0), min=floor).sum()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(reported["kl"].sum(), terms["kl"].sum())  # reported: the true KL
    # Below the floor a dimension gets no gradient from the KL: only the reconstruction moves it.
    low = int(terms["kl_dims"].mean(0).argmin())
    g_fb, _ = loss_and_grad(params, x, eps, objectives.free_bits(objectives.elbo(2.0), 1e6))
    g_recon, _ = loss_and_grad(params, x, eps, objectives.elbo(0.0))
    torch.testing.assert_close(g_fb.tree["encoder"]["logvar"]["bias"][low],
                               g_recon.tree["encoder"]["logvar"]["bias"][low])


def test_elbo_is_reproducible_and_independent_of_chunking(fashion):
    _, test = fashion
    params = funcvae.init(seed=0)
    a = funcvae.elbo(params, test[:300], seed=7, k=2)
    b = funcvae.elbo(params, test[:300], seed=7, k=2, chunk_size=37)
    c = funcvae.elbo(params, test[:300], seed=8, k=2)
    for name in ("recon", "kl", "loss"):
        assert a[name].shape == (300,)
        assert torch.equal(a[name], funcvae.elbo(params, test[:300], seed=7, k=2)[name])
        torch.testing.assert_close(a[name], b[name])  # same noise; matmul rounding may differ by batch size
    assert torch.equal(a["kl"], c["kl"])  # analytic: no noise in it
    assert not torch.equal(a["recon"], c["recon"])
    torch.testing.assert_close(a["loss"], a["recon"] + a["kl"])


def test_more_samples_keep_the_mean_and_lower_the_variance(fashion):
    _, test = fashion
    params = funcvae.init(seed=0, latent=8)
    x = test[:200]
    one = torch.stack([funcvae.elbo(params, x, seed=s)["recon"] for s in range(8)])
    many = torch.stack([funcvae.elbo(params, x, seed=s, k=16)["recon"] for s in range(8)])
    # Same expectation: the per-example difference of the two averages is within its standard error.
    diff = one.mean(0) - many.mean(0)
    se = torch.sqrt(one.var(0) / 8 + many.var(0) / 8)
    assert float(diff.abs().mean()) <= 5 * float(se.mean())
    assert float(many.var(0).mean()) < float(one.var(0).mean())


@pytest.mark.parametrize("model", MODELS)
def test_encode_and_decode_are_the_batched_halves(model):
    params = funcvae.init(seed=6, **MODELS[model])
    model = params.model
    x, eps = batch(model, n=4)
    images = x.view(4, *model.input_shape)
    mean, logvar = funcvae.encode(params, images)
    assert mean.shape == logvar.shape == (4, model.latent)
    out = funcvae.decode(params, mean)
    # The likelihood's parameters: logits or a mean (N, F), or a (mean, logvar) pair for a learned variance.
    learned = model.spec.likelihood == "gaussian" and model.spec.obs_std is None
    parts = out if learned else (out,)
    assert len(parts) == (2 if learned else 1) and all(p.shape == (4, model.features) for p in parts)
    assert model.likelihood.mean(out).shape == (4, model.features)

    torch.testing.assert_close(mean[1], model.encode_one(params.tree, x[1])[0])
    one = model.decode_one(params.tree, mean[2])
    for got, want in zip(parts, one if learned else (one,)):
        torch.testing.assert_close(got[2], want)


def _unflatten(by_path):
    tree = {}
    for path, leaf in by_path.items():
        node = tree
        *parents, name = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = leaf
    return tree
