"""Log-densities and KL divergences: closed forms against Monte Carlo and against torch.distributions."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from funcvae import distributions as D

Z = 5.0  # bounds are Z standard errors: a false alarm has probability < 6e-7 per example


@st.composite
def gaussians(draw, max_dim=8):
    """A diagonal Gaussian (mean, logvar) of a drawn dimension, float64."""
    d = draw(st.integers(1, max_dim))
    mean = draw(st.lists(st.floats(-3, 3), min_size=d, max_size=d))
    logvar = draw(st.lists(st.floats(-4, 2), min_size=d, max_size=d))
    return torch.tensor(mean, dtype=torch.float64), torch.tensor(logvar, dtype=torch.float64)


@st.composite
def gaussian_pairs(draw):
    q = draw(gaussians())
    d = q[0].shape[0]
    mean_p = draw(st.lists(st.floats(-3, 3), min_size=d, max_size=d))
    logvar_p = draw(st.lists(st.floats(-2, 2), min_size=d, max_size=d))
    return q, (torch.tensor(mean_p, dtype=torch.float64), torch.tensor(logvar_p, dtype=torch.float64))


def estimator_std(mean_q, logvar_q, mean_p, logvar_p):
    """Exact std of one sample of log q(z) - log p(z), z ~ q. Per dimension the estimate is
    a*eps^2 + b*eps + const with a = (s_q^2/v_p - 1)/2, b = (m_q - m_p) s_q / v_p, so Var = 2a^2 + b^2."""
    s_q, v_p = torch.exp(0.5 * logvar_q), torch.exp(logvar_p)
    a = 0.5 * (s_q**2 / v_p - 1.0)
    b = (mean_q - mean_p) * s_q / v_p
    return math.sqrt(float(torch.sum(2 * a**2 + b**2)))


K = 20_000


@given(q=gaussians(), seed=st.integers(0, 2**31))
def test_analytic_kl_equals_monte_carlo_estimate(q, seed):
    mean, logvar = q
    eps = torch.randn(K, mean.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mc = D.kl_monte_carlo(mean, logvar, eps).mean()
    zero = torch.zeros_like(mean)
    se = estimator_std(mean, logvar, zero, zero) / math.sqrt(K)
    assert abs(float(mc - D.kl_standard_normal(mean, logvar))) <= Z * se + 1e-9


@given(pair=gaussian_pairs(), seed=st.integers(0, 2**31))
def test_general_kl_equals_monte_carlo_estimate(pair, seed):
    (mean_q, logvar_q), (mean_p, logvar_p) = pair
    eps = torch.randn(K, mean_q.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mc = D.kl_monte_carlo(mean_q, logvar_q, eps, mean_p, logvar_p).mean()
    se = estimator_std(mean_q, logvar_q, mean_p, logvar_p) / math.sqrt(K)
    assert abs(float(mc - D.kl_diagonal_gaussians(mean_q, logvar_q, mean_p, logvar_p))) <= Z * se + 1e-9


@given(pair=gaussian_pairs())
def test_kl_is_non_negative(pair):
    (mean_q, logvar_q), (mean_p, logvar_p) = pair
    assert float(D.kl_standard_normal(mean_q, logvar_q)) >= 0.0
    assert float(D.kl_diagonal_gaussians(mean_q, logvar_q, mean_p, logvar_p)) >= 0.0


@given(q=gaussians())
def test_kl_is_exactly_zero_when_q_equals_p(q):
    mean, logvar = q
    assert float(D.kl_diagonal_gaussians(mean, logvar, mean, logvar)) == 0.0
    zero = torch.zeros_like(mean)
    assert float(D.kl_standard_normal(zero, zero)) == 0.0
    assert float(D.kl_diagonal_gaussians(zero, zero, zero, zero)) == 0.0


@given(q=gaussians())
def test_general_kl_against_the_standard_normal_is_the_special_case(q):
    mean, logvar = q
    zero = torch.zeros_like(mean)
    torch.testing.assert_close(D.kl_diagonal_gaussians(mean, logvar, zero, zero), D.kl_standard_normal(mean, logvar))


@given(q=gaussians(), other=gaussians())
def test_kl_equals_torch_distributions(q, other):
    mean, logvar = q
    d = mean.shape[0]
    mean_p, logvar_p = other[0][:1].expand(d), other[1][:1].expand(d)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, torch.exp(0.5 * logvar)),
        torch.distributions.Normal(mean_p, torch.exp(0.5 * logvar_p)),
    ).sum()
    torch.testing.assert_close(D.kl_diagonal_gaussians(mean, logvar, mean_p, logvar_p), ref)


@given(logits=st.lists(st.floats(-60, 60), min_size=1, max_size=50), seed=st.integers(0, 2**31))
def test_bernoulli_log_prob_equals_torch_distributions(logits, seed):
    logits = torch.tensor(logits, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    binary = torch.bernoulli(torch.full_like(logits, 0.5), generator=g)
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(binary)
    torch.testing.assert_close(D.bernoulli_log_prob(logits, binary), ref)
    # Grey levels: the same formula is the cross-entropy, which torch computes without validation.
    grey = torch.rand(logits.shape, generator=g, dtype=torch.float64)
    ref = torch.distributions.Bernoulli(logits=logits, validate_args=False).log_prob(grey)
    torch.testing.assert_close(D.bernoulli_log_prob(logits, grey), ref)


def test_bernoulli_log_prob_is_finite_and_exact_at_extreme_logits():
    logits = torch.tensor([-200.0, 200.0])
    assert torch.equal(D.bernoulli_log_prob(logits, torch.tensor([0.0, 1.0])), torch.zeros(2))
    torch.testing.assert_close(D.bernoulli_log_prob(logits, torch.tensor([1.0, 0.0])), torch.tensor([-200.0, -200.0]))


@given(q=gaussians(), x=st.lists(st.floats(-10, 10), min_size=8, max_size=8))
def test_gaussian_log_prob_equals_torch_distributions(q, x):
    mean, logvar = q
    x = torch.tensor(x[: mean.shape[0]], dtype=torch.float64)
    ref = torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(x)
    torch.testing.assert_close(D.gaussian_log_prob(mean, logvar, x), ref)


def test_standard_normal_log_prob_is_the_unit_gaussian():
    z = torch.linspace(-4, 4, 9, dtype=torch.float64)
    torch.testing.assert_close(D.standard_normal_log_prob(z), torch.distributions.Normal(0.0, 1.0).log_prob(z))


@pytest.mark.parametrize(
    "likelihood, values, match",
    [
        ("bernoulli", [0.0, 1.5], r"outside \[0, 1\]"),
        ("bernoulli", [-0.1, 0.5], r"outside \[0, 1\]"),
        ("bernoulli", [0.0, float("nan")], "NaN or Inf"),
        ("gaussian", [0.0, float("inf")], "NaN or Inf"),
    ],
)
def test_values_outside_the_support_are_refused(likelihood, values, match):
    with pytest.raises(ValueError, match=match):
        D.check_support(likelihood, torch.tensor(values))


def test_values_inside_the_support_pass():
    assert D.check_support("bernoulli", torch.tensor([0.0, 0.3, 1.0])) is None
    assert D.check_support("gaussian", torch.tensor([-5.0, 3.0])) is None
