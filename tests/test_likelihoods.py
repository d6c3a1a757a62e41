"""Likelihoods: log-densities against torch's reference implementations, the learned variance's floor, the
discretised logistic against high-precision sums (its 256 levels' masses sum to 1, its gradients are finite),
the description round trip, and refused settings."""

import math

import mpmath
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from funcvae import likelihoods
from funcvae.likelihoods import MIN_LOG_SCALE, MIN_OBS_LOGVAR

LEVELS = torch.arange(256, dtype=torch.float64) / 255


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
                                  likelihoods.gaussian(2), likelihoods.discretized_logistic()])
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
    assert likelihoods.get("discretized_logistic") == likelihoods.discretized_logistic()


@pytest.mark.parametrize("std", [0, -1.0, float("nan"), float("inf"), True, "0.1"])
def test_bad_std_is_refused(std):
    with pytest.raises(ValueError, match="std"):
        likelihoods.gaussian(std)


@pytest.mark.parametrize("bad", ["poisson", {"name": "gaussian", "std": 0.1, "extra": 1}, {"name": "laplace"},
                                 {"std": 0.1}, {"name": "discretized_logistic", "mixtures": 10}, None, 3])
def test_get_refuses_what_is_not_a_likelihood(bad):
    with pytest.raises(ValueError):
        likelihoods.get(bad)


# -- The discretised logistic ------------------------------------------------------------------------------

def discretized(mean, log_scale, x=LEVELS):
    """The likelihood's log-probability of each element of ``x`` (default: the 256 levels), ``mean`` and
    ``log_scale`` numbers or tensors that broadcast against it."""
    mean, log_scale = (torch.as_tensor(v, dtype=x.dtype).expand_as(x) for v in (mean, log_scale))
    return likelihoods.discretized_logistic().log_prob((mean[..., None], log_scale[..., None]), x[..., None])


def reference(mean: float, log_scale: float, k: int) -> float:
    """log P(level k) to 17 digits: the logistic's CDF differences in 80-digit arithmetic, taken on the side of
    the mean where both CDF values are small, so that no digits cancel."""
    with mpmath.workdps(80):
        m, s = mpmath.mpf(mean), mpmath.exp(mpmath.mpf(max(log_scale, MIN_LOG_SCALE)))
        below = lambda e: 1 / (1 + mpmath.exp(-(e - m) / s))  # P(X <= e)  # noqa: E731
        above = lambda e: 1 / (1 + mpmath.exp((e - m) / s))  # P(X >= e)  # noqa: E731
        lo, hi = (mpmath.mpf(k) - mpmath.mpf(0.5)) / 255, (mpmath.mpf(k) + mpmath.mpf(0.5)) / 255
        if k == 0:
            p = below(hi)
        elif k == 255:
            p = above(lo)
        else:
            p = above(lo) - above(hi) if k / 255 > mean else below(hi) - below(lo)
        return float(mpmath.log(p))


means = st.one_of(st.floats(-0.5, 1.5), st.floats(-1e4, 1e4))
log_scales = st.one_of(st.floats(MIN_LOG_SCALE - 20, 3), st.floats(-3, 80))


@given(mean=means, log_scale=log_scales)
def test_discretized_logistic_levels_sum_to_one(mean, log_scale):
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        logp = discretized(mean, log_scale, LEVELS.to(dtype))
        assert torch.isfinite(logp).all() and (logp <= 0).all()
        assert abs(float(torch.logsumexp(logp, 0))) < tol, dtype


@given(mean=means, log_scale=log_scales, k=st.integers(0, 255))
def test_discretized_logistic_matches_high_precision(mean, log_scale, k):
    want = reference(mean, log_scale, k)
    got64 = float(discretized(mean, log_scale, LEVELS[k:k + 1]))
    assert got64 == pytest.approx(want, rel=1e-12, abs=1e-12)
    # float32: its inputs rounded to float32 first, then within a few float32 ulps of the exact answer.
    m32, s32 = (float(torch.tensor(v, dtype=torch.float32)) for v in (mean, log_scale))
    got32 = float(discretized(m32, s32, LEVELS[k:k + 1].float()))
    assert got32 == pytest.approx(reference(m32, s32, k), rel=1e-6, abs=1e-6)


def test_discretized_logistic_far_tails_keep_their_exact_log():
    # Masses far below the smallest float (exp(-1e5)): a log of a difference of sigmoids would give -inf here.
    for mean, log_scale, k in ((40.0, -7.0, 128), (-40.0, -7.0, 3), (1e4, 2.0, 254), (0.5, 60.0, 77)):
        got = float(discretized(mean, log_scale, LEVELS[k:k + 1]))
        assert got == pytest.approx(reference(mean, log_scale, k), rel=1e-12), (mean, log_scale, k)


def direct(mean, log_scale, x):
    """The definition in float64, term by term: log(CDF(x + 1/510) - CDF(x - 1/510)), the edges open."""
    cdf = lambda e: torch.sigmoid((e - mean) / torch.exp(log_scale))  # noqa: E731
    upper = torch.where(x > 254.5 / 255, torch.ones_like(x), cdf(x + 0.5 / 255))
    lower = torch.where(x < 0.5 / 255, torch.zeros_like(x), cdf(x - 0.5 / 255))
    return torch.log(upper - lower)


def test_discretized_logistic_matches_the_float64_definition_where_it_is_well_conditioned():
    g = torch.Generator().manual_seed(0)
    mean = torch.rand(400, 1, generator=g, dtype=torch.float64) * 1.4 - 0.2
    log_scale = torch.rand(400, 1, generator=g, dtype=torch.float64) * 5 - 5
    x = LEVELS[torch.randint(256, (400, 1), generator=g)]
    want = direct(mean, log_scale, x).squeeze(1)
    # A difference of two sigmoids keeps ~16 - log10(1 / mass) digits: the definition is trusted above 1e-4.
    kept = want > math.log(1e-4)
    assert kept.sum() > 200
    like = likelihoods.discretized_logistic()
    torch.testing.assert_close(like.log_prob((mean, log_scale), x)[kept], want[kept], rtol=1e-10, atol=1e-10)
    got32 = like.log_prob((mean.float(), log_scale.float()), x.float())
    torch.testing.assert_close(got32.double()[kept], want[kept], rtol=1e-5, atol=1e-5)


@given(mean=means, log_scale=log_scales)
def test_discretized_logistic_gradients_are_finite(mean, log_scale):
    for dtype in (torch.float64, torch.float32):
        m = torch.full((256,), mean, dtype=dtype, requires_grad=True)
        s = torch.full((256,), log_scale, dtype=dtype, requires_grad=True)
        likelihoods.discretized_logistic().log_prob((m, s), LEVELS.to(dtype)).backward()
        assert torch.isfinite(m.grad).all() and torch.isfinite(s.grad).all(), dtype


def test_discretized_logistic_gradients_are_autograd_of_the_definition():
    g = torch.Generator().manual_seed(1)
    mean = (torch.rand(200, generator=g, dtype=torch.float64) * 1.4 - 0.2).requires_grad_()
    log_scale = (torch.rand(200, generator=g, dtype=torch.float64) * 4 - 4).requires_grad_()
    x = LEVELS[torch.randint(256, (200,), generator=g)]
    definition = direct(mean, log_scale, x)
    kept = definition.detach() > math.log(1e-4)  # where the definition keeps its digits, as above
    ours = likelihoods.discretized_logistic().log_prob((mean[:, None], log_scale[:, None]), x[:, None])
    for a, b in zip(torch.autograd.grad(ours.sum(), (mean, log_scale)),
                    torch.autograd.grad(definition.sum(), (mean, log_scale))):
        torch.testing.assert_close(a[kept], b[kept], rtol=1e-9, atol=1e-9)


def test_discretized_logistic_log_scale_is_floored():
    like = likelihoods.discretized_logistic()
    mean, x = torch.full((1, 3), 0.5, dtype=torch.float64), LEVELS[[0, 128, 255]][None]
    below = torch.full_like(mean, MIN_LOG_SCALE - 30.0, requires_grad=True)
    at = torch.full_like(mean, MIN_LOG_SCALE)
    assert torch.equal(like.log_prob((mean, below), x), like.log_prob((mean, at), x))
    like.log_prob((mean, below), x).sum().backward()
    assert torch.equal(below.grad, torch.zeros_like(below))
    assert MIN_LOG_SCALE == pytest.approx(-7 - math.log(2))


def test_discretized_logistic_mean_and_samples_follow_its_probabilities():
    like = likelihoods.discretized_logistic()
    mean, log_scale = torch.tensor([0.3, 0.02, 0.9], dtype=torch.float64), torch.tensor([-3.0, -2.0, -6.0],
                                                                                         dtype=torch.float64)
    probs = discretized(mean[:, None], log_scale[:, None], LEVELS.expand(3, 256)).exp()  # (3, 256)
    torch.testing.assert_close(like.mean((mean, log_scale)), (probs * LEVELS).sum(1), rtol=1e-10, atol=1e-12)
    n = 20_000
    draws = like.sample((mean.expand(n, 3), log_scale.expand(n, 3)), torch.Generator().manual_seed(0))
    k = draws * 255
    assert torch.equal(k, k.round()) and draws.min() >= 0 and draws.max() <= 1
    counts = torch.stack([torch.bincount(k[:, j].round().long(), minlength=256) for j in range(3)]).double()
    # Each level's count is Binomial(n, p): within 5 standard errors (plus one draw for tiny p).
    assert ((counts - n * probs).abs() <= 5 * (n * probs * (1 - probs)).sqrt() + 1).all()


def test_discretized_logistic_support_is_the_256_levels():
    like = likelihoods.discretized_logistic()
    for dtype in (torch.float32, torch.float64):
        like.check_support(LEVELS.to(dtype), "data")  # k / 255 as either dtype rounds it
    x = LEVELS.clone().reshape(16, 16)
    x[3, 4] = 0.3  # 76.5 / 255: between two levels
    x[9, 1] = 1.5
    with pytest.raises(ValueError, match=r"^data holds 2 values that are not 8-bit levels k/255 in \[0, 1\], the "
                                         r"support of the discretized logistic likelihood \(the first is 0\.3, at "
                                         r"index \(3, 4\)\); pass 8-bit pixels with scale=255"):
        like.check_support(x, "data")
    for bad in (-1 / 255, 256 / 255, 1 / 256, float("nan")):
        with pytest.raises(ValueError, match="NaN or Inf" if bad != bad else "not 8-bit levels"):
            like.check_support(torch.tensor([0.0, bad]), "data")


def test_bits_per_dim_is_nats_over_dims_ln2():
    assert likelihoods.bits_per_dim(3072 * math.log(256), 3072) == pytest.approx(8.0)
    nats = torch.tensor([100.0, 200.0])
    torch.testing.assert_close(likelihoods.bits_per_dim(nats, 784), nats / (784 * math.log(2)))
    assert likelihoods.discretized_logistic().discrete and likelihoods.bernoulli().discrete
    assert not likelihoods.gaussian().discrete and not likelihoods.gaussian(0.1).discrete
