"""The bound: torch.func against plain autograd and Python loops, and the public elbo/encode/decode."""

import pytest
import torch
import torch.nn.functional as F

import funcvae
from funcvae.elbo import batch_terms, example_terms, loss_and_grad, objective

MODELS = {
    "mlp-bernoulli": dict(hidden=(64, 32), latent=5),
    "mlp-gaussian-learned": dict(hidden=(48,), latent=4, likelihood="gaussian", activation="tanh"),
    "mlp-gaussian-fixed": dict(hidden=(48,), latent=4, likelihood="gaussian", obs_std=0.3, activation="elu"),
    "conv-bernoulli": dict(arch="conv", channels=(4, 8), hidden=(16,), latent=3),
}


def batch(spec, n=6, k=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, spec.features, generator=g)
    eps = torch.randn(n, k, spec.latent, generator=g)
    return x, eps


@pytest.mark.parametrize("model", MODELS)
def test_torch_func_gradients_equal_plain_autograd(model):
    params = funcvae.init(seed=1, **MODELS[model])
    x, eps = batch(params.spec, k=2)
    grads, (loss, _) = loss_and_grad(params.tree, params.spec, x, eps, 0.7)

    leaves = funcvae.leaves_by_path(params)
    live = {path: t.clone().requires_grad_() for path, t in leaves.items()}
    tree = _unflatten(live)
    total = sum(example_terms(params.spec, tree, x[i], eps[i], 0.7)["loss"] for i in range(len(x))) / len(x)
    total.backward()
    torch.testing.assert_close(loss, total.detach())
    for path, g in funcvae.leaves_by_path(funcvae.Params(params.spec, grads)).items():
        torch.testing.assert_close(g, live[path].grad, msg=path)


def test_the_mlp_bound_equals_its_textbook_formula():
    params = funcvae.init(seed=2, hidden=(32,), latent=4)
    x, eps = batch(params.spec, n=10)
    enc, dec = params.tree["encoder"], params.tree["decoder"]
    h = F.relu(x @ enc["hidden_0"]["kernel"].T + enc["hidden_0"]["bias"])
    mean = h @ enc["mean"]["kernel"].T + enc["mean"]["bias"]
    logvar = h @ enc["logvar"]["kernel"].T + enc["logvar"]["bias"]
    z = mean + torch.exp(0.5 * logvar) * eps[:, 0]
    h = F.relu(z @ dec["hidden_0"]["kernel"].T + dec["hidden_0"]["bias"])
    logits = h @ dec["out"]["kernel"].T + dec["out"]["bias"]
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
    kl = -0.5 * torch.sum(1 + logvar - mean**2 - logvar.exp(), dim=1)
    terms = batch_terms(params.spec, params.tree, x, eps, 2.0)
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(terms["loss"], recon + 2.0 * kl)


@pytest.mark.parametrize("model", MODELS)
def test_vmapped_per_example_terms_equal_a_python_loop(model):
    params = funcvae.init(seed=3, **MODELS[model])
    x, eps = batch(params.spec, n=7, k=3)
    terms = batch_terms(params.spec, params.tree, x, eps, 1.0)
    for i in range(len(x)):
        one = example_terms(params.spec, params.tree, x[i], eps[i], 1.0)
        for name, value in one.items():
            torch.testing.assert_close(terms[name][i], value)


def test_k_samples_average_the_single_sample_reconstructions():
    params = funcvae.init(seed=4, hidden=(32,), latent=4)
    x, eps = batch(params.spec, n=5, k=8)
    many = batch_terms(params.spec, params.tree, x, eps, 1.0)
    singles = torch.stack([batch_terms(params.spec, params.tree, x, eps[:, j:j + 1], 1.0)["recon"] for j in range(8)])
    torch.testing.assert_close(many["recon"], singles.mean(0))


def test_objective_is_the_batch_mean_and_reports_sums():
    params = funcvae.init(seed=5, hidden=(16,), latent=2)
    x, eps = batch(params.spec, n=9)
    loss, sums = objective(params.tree, params.spec, x, eps, 0.5)
    terms = batch_terms(params.spec, params.tree, x, eps, 0.5)
    torch.testing.assert_close(loss, terms["loss"].mean())
    for name in ("recon", "kl", "loss"):
        torch.testing.assert_close(sums[name], terms[name].sum())
    torch.testing.assert_close(terms["kl_dims"].sum(-1), terms["kl"])


def test_free_bits_floor_each_dimensions_batch_mean_kl():
    params = funcvae.init(seed=5, hidden=(16,), latent=3)
    x, eps = batch(params.spec, n=9)
    terms = batch_terms(params.spec, params.tree, x, eps, 2.0)
    floor = float(terms["kl_dims"].mean(0).median())  # one dimension above, one below (or at) the floor
    loss, sums = objective(params.tree, params.spec, x, eps, 2.0, free_bits=floor)
    want = terms["recon"].mean() + 2.0 * torch.clamp(terms["kl_dims"].mean(0), min=floor).sum()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(sums["kl"], terms["kl"].sum())  # reported: the true KL
    # Below the floor a dimension gets no gradient from the KL: only the reconstruction moves it.
    low = int(terms["kl_dims"].mean(0).argmin())
    g_fb, _ = loss_and_grad(params.tree, params.spec, x, eps, 2.0, None, None, 1e6)
    g_recon, _ = loss_and_grad(params.tree, params.spec, x, eps, 0.0)
    torch.testing.assert_close(g_fb["encoder"]["logvar"]["bias"][low], g_recon["encoder"]["logvar"]["bias"][low])


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
    x, eps = batch(params.spec, n=4)
    images = x.view(4, *params.spec.input_shape)
    mean, logvar = funcvae.encode(params, images)
    assert mean.shape == logvar.shape == (4, params.spec.latent)
    out = funcvae.decode(params, mean)
    assert out.shape == (4, params.spec.features)
    from funcvae.model import decode_one, encode_one

    torch.testing.assert_close(mean[1], encode_one(params.spec, params.tree, x[1])[0])
    torch.testing.assert_close(out[2], decode_one(params.spec, params.tree, mean[2]))


def _unflatten(by_path):
    tree = {}
    for path, leaf in by_path.items():
        node = tree
        *parents, name = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = leaf
    return tree
