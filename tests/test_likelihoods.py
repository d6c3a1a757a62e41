"""Likelihoods: log-densities against torch's reference implementations, the learned variance's floor, the
description round trip, and refused settings."""

import math

import pytest
import torch
import torch.nn.functional as F

from funcvae import likelihoods
from funcvae.likelihoods import MIN_OBS_LOGVAR


def data(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64), torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("binary", [False, True])
def test_bernoulli_log_prob_is_minus_summed_binary_cross_entropy(binary):
    x, logits = data(5, 40)
    logits = logits * 6  # far into both tails
    x = x.round() if binary else x
    expected = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    got = likelihoods.bernoulli().log_prob(logits, x)
    assert got.shape == (5,)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)
    if binary:
        reference = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
        torch.testing.assert_close(got, reference, rtol=1e-12, atol=1e-10)


def test_bernoulli_mean_and_sample():
    like = likelihoods.bernoulli()
    logits = torch.tensor([-30.0, 0.0, 30.0])
    torch.testing.assert_close(like.mean(logits), torch.sigmoid(logits))
    draws = like.sample(logits.expand(4000, 3), torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert draws[:, 0].sum() == 0 and draws[:, 2].sum() == 4000
    se = math.sqrt(0.25 / 4000)
    assert abs(float(draws[:, 1].mean()) - 0.5) < 5 * se


@pytest.mark.parametrize("std", [0.05, 0.3, 1.0, 2.5])
def test_gaussian_fixed_std_is_torch_normal_summed(std):
    x, mean = data(6, 30, seed=1)
    expected = torch.distributions.Normal(mean, std).log_prob(x).sum(-1)
    got = likelihoods.gaussian(std).log_prob(mean, x)
    assert got.shape == (6,)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)


def test_gaussian_learned_variance_is_torch_normal_above_the_floor():
    x, mean = data(6, 30, seed=2)
    logvar = torch.empty_like(mean).uniform_(MIN_OBS_LOGVAR + 0.1, 2.0, generator=torch.Generator().manual_seed(3))
    expected = torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(x).sum(-1)
    torch.testing.assert_close(likelihoods.gaussian().log_prob((mean, logvar), x), expected, rtol=1e-12, atol=1e-10)


def test_gaussian_learned_variance_is_floored_at_min_obs_logvar():
    like = likelihoods.gaussian()
    x, mean = data(4, 20, seed=4)
    below = torch.full_like(mean, MIN_OBS_LOGVAR - 15.0)
    at_floor = torch.full_like(mean, MIN_OBS_LOGVAR)
    assert torch.equal(like.log_prob((mean, below), x), like.log_prob((mean, at_floor), x))
    floor_std = math.exp(0.5 * MIN_OBS_LOGVAR)
    expected = torch.distributions.Normal(mean, floor_std).log_prob(x).sum(-1)
    torch.testing.assert_close(like.log_prob((mean, below), x), expected, rtol=1e-10, atol=1e-6)
    assert MIN_OBS_LOGVAR == pytest.approx(math.log((1 / 255) ** 2 / 12))
    # A pixel predicted exactly cannot push the density to +inf: its log-density is capped by the floor.
    exact = like.log_prob((x, below), x)
    assert torch.isfinite(exact).all()
    torch.testing.assert_close(exact, torch.full((4,), -0.5 * 20 * (math.log(2 * math.pi) + MIN_OBS_LOGVAR),
                                                 dtype=torch.float64))
    # The floor holds in the gradient too: no pull below it.
    logvar = below.clone().requires_grad_()
    like.log_prob((mean, logvar), x).sum().backward()
    assert torch.equal(logvar.grad, torch.zeros_like(logvar))


def test_gaussian_sample_has_the_floored_variance():
    like = likelihoods.gaussian()
    mean, logvar = torch.zeros(20000, 2), torch.tensor([MIN_OBS_LOGVAR - 10.0, 0.0]).expand(20000, 2)
    draws = like.sample((mean, logvar), torch.Generator().manual_seed(0))
    var = draws.var(0)
    expected = torch.tensor([math.exp(MIN_OBS_LOGVAR), 1.0])
    # The sample variance of n normal draws has a relative standard error of sqrt(2 / (n - 1)).
    assert torch.all((var / expected - 1).abs() < 5 * math.sqrt(2 / 19999))
    assert torch.equal(like.mean((torch.tensor([-0.5, 0.5, 1.5]), torch.zeros(3))), torch.tensor([0.0, 0.5, 1.0]))


@pytest.mark.parametrize("like", [likelihoods.bernoulli(), likelihoods.gaussian(), likelihoods.gaussian(0.1),
                                  likelihoods.gaussian(2)])
def test_get_round_trips_to_dict(like):
    back = likelihoods.get(like.to_dict())
    assert back == like and hash(back) == hash(like) and type(back) is type(like)
    assert likelihoods.get(like) is like


def test_get_by_name_and_equal_settings_are_equal():
    assert likelihoods.get("bernoulli") == likelihoods.bernoulli()
    assert likelihoods.get("gaussian") == likelihoods.gaussian() and likelihoods.get("gaussian").std is None
    assert likelihoods.gaussian(1) == likelihoods.gaussian(1.0) and hash(likelihoods.gaussian(1)) == hash(
        likelihoods.gaussian(1.0))
    assert likelihoods.gaussian(0.1) != likelihoods.gaussian(0.2) != likelihoods.gaussian()


@pytest.mark.parametrize("std", [0, -1.0, float("nan"), float("inf"), True, "0.1"])
def test_bad_std_is_refused(std):
    with pytest.raises(ValueError, match="std"):
        likelihoods.gaussian(std)


@pytest.mark.parametrize("bad", ["poisson", {"name": "gaussian", "std": 0.1, "extra": 1}, {"name": "laplace"},
                                 {"std": 0.1}, None, 3])
def test_get_refuses_what_is_not_a_likelihood(bad):
    with pytest.raises(ValueError):
        likelihoods.get(bad)
