"""Estimators against an exact linear-Gaussian VAE, whose log p(x), posterior and expected ELBO are known.

p(z) = N(0, I), p(x | z) = N(W z + b, sigma^2 I) with orthogonal columns of W: the exact posterior is a
diagonal Gaussian that a funcvae MLP with no hidden layer represents exactly. Every Monte Carlo claim is
checked within Z standard errors, the standard error computed from the draws themselves.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

import funcvae
from funcvae import distributions as D
from funcvae import objectives, oracle
from funcvae.importance import iwae, log_weights

Z = 5.0  # a false alarm has probability < 6e-7 per Gaussian check
N = 6  # examples per model
F64 = torch.float64


@st.composite
def models(draw, max_latent=3, max_features=6):
    """A random linear-Gaussian model with orthogonal decoder columns (float64)."""
    latent = draw(st.integers(1, max_latent))
    features = draw(st.integers(latent, max_features))
    sigma = draw(st.floats(0.2, 1.5))
    return oracle.linear_gaussian(draw(st.integers(0, 2**31)), features=features, latent=latent, sigma=sigma)


def random_encoder_params(model, seed):
    """The exact decoder with funcvae's own random initial encoder (means and log-variances linear in x)."""
    W, b, sigma = model
    init = funcvae.init(seed, dtype=F64, arch="mlp", input_shape=(1, 1, W.shape[0]), hidden=(), latent=W.shape[1],
                        likelihood="gaussian", obs_std=sigma)
    return oracle.vae_params(W, b, sigma, init.tree["encoder"])


def mean_and_se(samples, dim=0):
    """Mean over ``dim`` and its standard error from the sample standard deviation."""
    return samples.mean(dim), samples.std(dim) / math.sqrt(samples.shape[dim])


def single_sample_elbos(params, x, *, r, seed):
    """(r, N) independent single-sample estimates of the ELBO from the public ``funcvae.elbo``."""
    return -funcvae.elbo(params, x.repeat(r, 1), seed=seed)["loss"].reshape(r, x.shape[0])


# The oracle itself -------------------------------------------------------------------------------------


@given(model=models(), seed=st.integers(0, 2**31))
def test_log_marginal_equals_torch_multivariate_normal(model, seed):
    W, b, sigma = model
    W = W + 0.3 * torch.randn(W.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)  # any W
    x = oracle.sample(W, b, sigma, N, seed=seed)
    cov = W @ W.T + sigma**2 * torch.eye(W.shape[0], dtype=F64)
    ref = torch.distributions.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)
    torch.testing.assert_close(oracle.log_marginal(W, b, sigma, x), ref)


@given(model=models(), seed=st.integers(0, 2**31))
def test_the_exact_encoder_outputs_the_bayes_posterior(model, seed):
    W, b, sigma = model
    x = oracle.sample(W, b, sigma, N, seed=seed)
    torch.testing.assert_close(W.T @ W, torch.diag(torch.diagonal(W.T @ W)))  # orthogonal columns
    mean, logvar = funcvae.encode(oracle.exact_params(W, b, sigma), x)
    precision = W.T @ W / sigma**2 + torch.eye(W.shape[1], dtype=F64)  # Bayes: prior + likelihood precision
    cov = torch.linalg.inv(precision)
    torch.testing.assert_close(mean, (x - b) @ W @ cov.T / sigma**2)
    torch.testing.assert_close(logvar, torch.log(torch.diagonal(cov)).expand_as(logvar))


def test_exact_encoder_refuses_a_decoder_with_non_orthogonal_columns():
    W = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]], dtype=F64)
    with pytest.raises(ValueError, match="orthogonal"):
        oracle.exact_encoder(W, torch.zeros(3, dtype=F64), 0.5)


def test_linear_gaussian_takes_the_column_norms_it_is_given():
    W, _, _ = oracle.linear_gaussian(0, features=5, latent=3, sigma=0.5, norms=[2.0, 0.0, 0.5])
    torch.testing.assert_close(W.norm(dim=0), torch.tensor([2.0, 0.0, 0.5], dtype=F64))


# (a) the ELBO never exceeds log p(x) -------------------------------------------------------------------


@settings(max_examples=10)
@given(model=models(), seed=st.integers(0, 2**31))
def test_the_elbo_never_exceeds_log_marginal(model, seed):
    W, b, sigma = model
    x = oracle.sample(W, b, sigma, N, seed=seed)
    log_px = oracle.log_marginal(W, b, sigma, x)
    for params in (random_encoder_params(model, seed), oracle.perturbed_params(W, b, sigma, seed=seed)):
        # Closed form: the gap is exactly KL(q(z|x) || p(z|x)) >= 0.
        expected = oracle.expected_elbo(params, x)
        q_mean, q_logvar = funcvae.encode(params, x)
        p_mean, p_logvar = funcvae.encode(oracle.exact_params(W, b, sigma), x)
        torch.testing.assert_close(log_px - expected, D.kl_diagonal_gaussians(q_mean, q_logvar, p_mean, p_logvar))
        assert bool((expected <= log_px + 1e-12).all())
        # Monte Carlo through the public elbo: unbiased for the expected ELBO, never above log p(x).
        mc, se = mean_and_se(single_sample_elbos(params, x, r=2000, seed=seed))
        assert bool((mc <= log_px + Z * se).all())
        assert bool(((mc - expected).abs() <= Z * se).all())


# (b) with the exact posterior, every bound is log p(x) -------------------------------------------------


@settings(max_examples=15)
@given(model=models(), seed=st.integers(0, 2**31))
def test_the_exact_posterior_makes_every_bound_exact(model, seed):
    W, b, sigma = model
    params = oracle.exact_params(W, b, sigma)
    x = oracle.sample(W, b, sigma, N, seed=seed)
    log_px = oracle.log_marginal(W, b, sigma, x)
    torch.testing.assert_close(oracle.expected_elbo(params, x), log_px)
    # Each log-weight p(x, z) / q(z | x) is log p(x) for every z, so IWAE_k is exact for every k.
    torch.testing.assert_close(log_weights(params, x, k=50, seed=seed), log_px[:, None].expand(N, 50))
    for k, chunk in ((1, 1), (7, 3), (300, 128)):
        torch.testing.assert_close(iwae(params, x, k=k, seed=seed, chunk_size=chunk), log_px)
    # funcvae.elbo uses the analytic KL beside a sampled log p(x | z): exact in expectation, not per sample.
    mc, se = mean_and_se(single_sample_elbos(params, x, r=2000, seed=seed))
    assert bool(((mc - log_px).abs() <= Z * se).all())


# (c) a wrong encoder: IWAE_k rises with k towards log p(x) ---------------------------------------------

KS = (1, 4, 16, 64, 256)
REPEATS = 40


@settings(max_examples=10)
@given(model=models(), seed=st.integers(0, 2**31))
def test_iwae_rises_with_k_from_the_elbo_towards_log_marginal(model, seed):
    W, b, sigma = model
    # q is 1 posterior std off in mean and e times too wide: KL(q || p(z|x)) >= 0.36 nats per latent dim.
    params = oracle.perturbed_params(W, b, sigma, seed=seed, shift=1.0, widen=1.0)
    x = oracle.sample(W, b, sigma, N, seed=seed)
    log_px, elbo = oracle.log_marginal(W, b, sigma, x), oracle.expected_elbo(params, x)
    # IWAE_k for the nested first k samples of REPEATS independent draws: (REPEATS, len(KS), N).
    lw = torch.stack([log_weights(params, x, k=KS[-1], seed=seed + r) for r in range(REPEATS)])
    bounds = torch.stack([torch.logsumexp(lw[..., :k], -1) - math.log(k) for k in KS], 1)
    assert bool((bounds[:, 0] == lw[..., 0]).all())
    # Jensen, draw by draw: log of the mean weight >= mean of the log weights (the k-sample ELBO).
    assert bool((bounds[:, -1] >= lw.mean(-1) - 1e-12).all())
    # Every log-weight is an IWAE_1 draw, an unbiased estimate of the ELBO.
    first, se = mean_and_se(lw.transpose(0, 1).reshape(N, -1), dim=1)
    assert bool(((first - elbo).abs() <= Z * se).all())
    # Every step up in k raises the mean bound (paired differences over draws and examples) ...
    for i in range(len(KS) - 1):
        step, se = mean_and_se((bounds[:, i + 1] - bounds[:, i]).reshape(-1))
        assert float(step) >= -Z * float(se), (KS[i], KS[i + 1])
    # ... and the largest k is clearly above the ELBO (against the same draws' mean log-weight).
    total, se = mean_and_se((bounds[:, -1] - lw.mean(-1)).reshape(-1))
    assert float(total) > Z * float(se)
    assert bool((bounds.mean(0)[-1] <= log_px + Z * bounds[:, -1].std(0) / math.sqrt(REPEATS)).all())


@settings(max_examples=10)
@given(model=models(), seed=st.integers(0, 2**31))
def test_iwae_with_many_samples_reaches_log_marginal(model, seed):
    W, b, sigma = model
    params = oracle.perturbed_params(W, b, sigma, seed=seed)
    x = oracle.sample(W, b, sigma, N, seed=seed)
    k = 4096
    lw = log_weights(params, x, k=k, seed=seed)
    bound = iwae(params, x, k=k, seed=seed)
    torch.testing.assert_close(bound, torch.logsumexp(lw, -1) - math.log(k))
    # Delta method: log of a mean of k weights has standard error sd(w) / (mean(w) sqrt(k)) and bias
    # -se^2 / 2 (bounded weights: q is wider than the posterior).
    w = torch.exp(lw - lw.max(-1, keepdim=True).values)
    se = w.std(-1) / w.mean(-1) / math.sqrt(k)
    gap = oracle.log_marginal(W, b, sigma, x) - bound
    assert bool((gap.abs() <= Z * se + se**2).all())
    assert bool((gap < oracle.log_marginal(W, b, sigma, x) - oracle.expected_elbo(params, x)).all())


# (d) the analytic KL and the gradient of the bound ----------------------------------------------------


@settings(max_examples=10)
@given(model=models(), seed=st.integers(0, 2**31))
def test_the_reported_kl_equals_its_monte_carlo_estimate(model, seed):
    W, b, sigma = model
    params = random_encoder_params(model, seed)
    x = oracle.sample(W, b, sigma, N, seed=seed)
    kl = funcvae.elbo(params, x, seed=seed)["kl"]
    mean, logvar = funcvae.encode(params, x)
    eps = torch.randn(20_000, N, W.shape[1], generator=torch.Generator().manual_seed(seed), dtype=F64)
    estimates = vmap(D.kl_monte_carlo, in_dims=(0, 0, 1), out_dims=1)(mean, logvar, eps)  # (20000, N)
    mc, se = mean_and_se(estimates)
    assert bool(((mc - kl).abs() <= Z * se + 1e-12).all())


@settings(max_examples=8)
@given(model=models(), seed=st.integers(0, 2**31))
def test_the_reparameterised_gradient_is_unbiased(model, seed):
    W, b, sigma = model
    params = random_encoder_params(model, seed)
    x = oracle.sample(W, b, sigma, N, seed=seed)
    draws = 2000
    eps = torch.randn(draws, N, 1, params.model.latent, generator=torch.Generator().manual_seed(seed), dtype=F64)
    elbo, hyper = objectives.elbo(1.0), {"beta": torch.tensor(1.0, dtype=F64)}

    # torch.func.grad of the mean single-sample loss (-ELBO) with the noise held fixed, for each noise draw.
    def mean_loss(p, e):
        return vmap(lambda xi, ei: elbo.terms(p, xi, ei, hyper)["loss"])(x, e).mean()

    sampled = vmap(grad(mean_loss), in_dims=(None, 0))(params, eps)
    exact = grad(lambda p: -vmap(lambda xi: oracle.expected_elbo_one(p, xi))(x).mean())(params)
    assert isinstance(sampled, funcvae.Params) and isinstance(exact, funcvae.Params)
    for path, g in funcvae.leaves_by_path(sampled).items():
        mean, se = mean_and_se(g)
        target = funcvae.leaves_by_path(exact)[path]
        assert bool(((mean - target).abs() <= Z * se + 1e-10 * (1 + target.abs())).all()), path
