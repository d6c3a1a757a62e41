"""The importance-weighted bound on nonlinear models: its noise layout, its streaming, its link to the ELBO,
and its input checks (exact-value checks against log p(x) are in test_oracle.py)."""

import math

import pytest
import torch

import funcvae
from funcvae import distributions as D
from funcvae import objectives
from funcvae.importance import BLOCK, batch_log_weights, example_log_weights, iwae, log_weights, noise

Z = 5.0
SMALL = dict(hidden=(32,), latent=4)
MODELS = {
    "mlp-bernoulli": dict(hidden=(16,), latent=3),
    "mlp-gaussian-learned": dict(hidden=(12,), latent=2, likelihood="gaussian", activation="tanh"),
    "conv-bernoulli": dict(arch="conv", channels=(4, 8), hidden=(16,), latent=3),
}


@pytest.fixture(scope="module")
def model_and_data(fashion):
    _, test = fashion
    return funcvae.init(seed=0, **SMALL), test[:10]


@pytest.mark.parametrize("model", MODELS)
def test_vmapped_log_weights_equal_a_python_loop(model):
    params = funcvae.init(seed=1, **MODELS[model])
    g = torch.Generator().manual_seed(0)
    model = params.model
    x, eps = torch.rand(3, model.features, generator=g), torch.randn(3, 4, model.latent, generator=g)
    batched = batch_log_weights(params, x, eps)
    for i in range(3):
        mean, logvar = model.encode_one(params.tree, x[i])
        torch.testing.assert_close(example_log_weights(params, x[i], eps[i]), batched[i])
        for j in range(4):  # the importance weight written out for one sample
            z = D.reparameterize(mean, logvar, eps[i, j])
            one = (model.likelihood.log_prob(model.decode_one(params.tree, z), x[i])
                   + model.prior.log_prob(params.tree, model, z) - D.gaussian_log_prob(mean, logvar, z).sum())
            torch.testing.assert_close(one, batched[i, j])


def test_streaming_equals_one_logsumexp_whatever_the_chunking(model_and_data):
    params, x = model_and_data
    k = 300  # not a multiple of BLOCK: a partial last block
    direct = torch.logsumexp(log_weights(params, x, k=k, seed=3), -1) - math.log(k)
    for chunk_size, batch_size in ((k, 10), (7, 3), (BLOCK, 1), (1000, 4)):
        torch.testing.assert_close(iwae(params, x, k=k, seed=3, chunk_size=chunk_size, batch_size=batch_size), direct)


def test_same_seed_same_bound_other_seed_other_bound(model_and_data):
    params, x = model_and_data
    a = iwae(params, x, k=40, seed=5)
    assert a.shape == (10,)
    assert torch.equal(a, iwae(params, x, k=40, seed=5))
    assert not torch.equal(a, iwae(params, x, k=40, seed=6))


def test_smaller_k_uses_the_first_samples_of_larger_k(model_and_data):
    params, x = model_and_data
    many = log_weights(params, x, k=2 * BLOCK + 5, seed=2)
    for k in (1, 50, BLOCK + 1):
        torch.testing.assert_close(iwae(params, x, k=k, seed=2), torch.logsumexp(many[:, :k], -1) - math.log(k))


def test_the_noise_of_a_sample_does_not_depend_on_the_window_it_is_drawn_in():
    whole = noise(9, range(3), 0, 3 * BLOCK, 2, like=torch.zeros(()))
    torch.testing.assert_close(noise(9, range(1, 3), BLOCK - 5, 2 * BLOCK + 7, 2, like=torch.zeros(())),
                               whole[1:3, BLOCK - 5:2 * BLOCK + 7], rtol=0, atol=0)


def test_one_sample_is_the_elbo_with_a_monte_carlo_kl(model_and_data):
    # Same noise: log w = log p(x|z) + log p(z) - log q(z|x) = -loss + (KL - (log q(z|x) - log p(z))).
    params, x = model_and_data
    eps = noise(4, range(10), 0, 1, params.model.latent, like=x)
    bound = iwae(params, x, k=1, seed=4)
    elbo = objectives.elbo(1.0)
    for i in range(10):
        terms = elbo.terms(params, x[i].reshape(-1), eps[i], {"beta": torch.tensor(1.0)})
        mean, logvar = params.model.encode_one(params.tree, x[i].reshape(-1))
        kl_sample = D.kl_monte_carlo(mean, logvar, eps[i])[0]
        torch.testing.assert_close(bound[i], -terms["loss"] + terms["kl"] - kl_sample)


def test_iwae_with_one_sample_equals_the_elbo_in_expectation(model_and_data):
    params, x = model_and_data
    r = 2000
    iwae_1 = log_weights(params, x, k=r, seed=7)  # column j is an independent IWAE_1 draw
    elbo_1 = -funcvae.elbo(params, x.repeat(r, 1, 1, 1), seed=7)["loss"].reshape(r, 10).T
    diff = iwae_1.mean(1) - elbo_1.mean(1)
    se = torch.sqrt(iwae_1.var(1) / r + elbo_1.var(1) / r)
    assert bool((diff.abs() <= Z * se).all())


def test_iwae_is_at_least_the_elbo(model_and_data):
    params, x = model_and_data
    k, r = 64, 400
    bound = iwae(params, x, k=k, seed=8)
    # Draw by draw: log of the mean weight >= mean log weight (Jensen).
    assert bool((bound >= log_weights(params, x, k=k, seed=8).mean(-1) - 1e-4).all())
    # In expectation against the public ELBO (independent noise).
    elbo_1 = -funcvae.elbo(params, x.repeat(r, 1, 1, 1), seed=8)["loss"]
    assert float(bound.mean()) >= float(elbo_1.mean()) - Z * float(elbo_1.std() / math.sqrt(len(elbo_1)))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(k=0), ValueError, "k must be an int >= 1"),
        (dict(k=2.0), ValueError, "k must be an int >= 1"),
        (dict(chunk_size=0), ValueError, "chunk_size must be an int >= 1"),
        (dict(batch_size=True), ValueError, "batch_size must be an int >= 1"),
        (dict(seed=-1), ValueError, "seed must be non-negative"),
        (dict(seed="a"), TypeError, "seed must be an int"),
    ],
)
def test_bad_settings_fail_before_any_work(kwargs, error, match):
    params = funcvae.init(seed=0, **SMALL)
    kwargs = {"k": 3, "seed": 0, **kwargs}
    with pytest.raises(error, match=match):
        iwae(params, torch.rand(2, 784), **kwargs)


def test_bad_data_and_params_are_refused_like_the_elbo():
    params = funcvae.init(seed=0, **SMALL)
    with pytest.raises(ValueError, match="shape"):
        iwae(params, torch.rand(2, 10), k=2, seed=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        iwae(params, torch.full((2, 784), float("nan")), k=2, seed=0)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        iwae(params, torch.full((2, 784), 2.0), k=2, seed=0)
    torch.testing.assert_close(iwae(params, torch.full((2, 784), 255, dtype=torch.uint8), k=2, seed=0, scale=255),
                               iwae(params, torch.ones(2, 784), k=2, seed=0))
    with pytest.raises(TypeError, match="Params"):
        iwae(params.tree, torch.rand(2, 784), k=2, seed=0)
    broken = funcvae.Params(params.model, {"encoder": params.tree["encoder"], "decoder": {}})
    with pytest.raises(ValueError, match="missing"):
        iwae(broken, torch.rand(2, 784), k=2, seed=0)
