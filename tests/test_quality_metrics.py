"""Sample-quality metrics: FID against closed forms and scipy, KID's unbiasedness, k-NN metrics on sets with
known answers and against their expectations, class coverage, the classifier's confusion and the true class
shares behind its predictions, duplicates, and errors that name the argument."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, strategies as st

from funcvae.quality import metrics


def _scipy_frechet(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance in numpy/scipy, independent of the module: tr sqrtm(cov1 cov2) = tr (cov1^1/2 cov2
    cov1^1/2)^1/2 (the two matrices are similar)."""
    cross = np.trace(scipy.linalg.sqrtm(cov1 @ cov2)).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def _fitted(x: np.ndarray):
    """Mean and unbiased covariance of (N, d) rows."""
    return x.mean(0), np.cov(x, rowvar=False)


@st.composite
def gaussians(draw):
    """Two d-dimensional Gaussians (d in 2..6): means in [-2, 2]^d, covariances A A^T + eps I, and a seed."""
    d = draw(st.integers(2, 6))
    entries = st.floats(-1, 1, allow_nan=False)
    out = []
    for _ in range(2):
        a = np.array(draw(st.lists(entries, min_size=d * d, max_size=d * d))).reshape(d, d)
        mean = np.array(draw(st.lists(st.floats(-2, 2, allow_nan=False), min_size=d, max_size=d)))
        out.append((mean, a @ a.T + draw(st.floats(0.1, 1)) * np.eye(d)))
    return out, draw(st.integers(0, 2**32 - 1))


@given(gaussians())
def test_fid_of_samples_approaches_the_closed_form(case):
    """FID of N samples from each of two Gaussians G_1, G_2 approaches FD = the Fréchet distance of G_1, G_2.

    FD = W^2, W the 2-Wasserstein metric between Gaussians, and FID_N = W^2 between the fitted Gaussians
    Ĝ_i = N(mean_i, cov_i). By the triangle inequality, for every sample (no probability involved):
        |sqrt(FID_N) - sqrt(FD)| <= W(Ĝ_1, G_1) + W(Ĝ_2, G_2) = w_1 + w_2,
    each w_i being how far sample i's fit lies from its truth (computed here with scipy). The bound shrinks
    as 1/sqrt(N): w^2 = |mean - mu|^2 + B(cov, S)^2 with B(A, C)^2 <= |A^1/2 - C^1/2|_F^2 (the fidelity term
    is a nuclear norm, >= the trace) <= |A - C|_F^2 / lambda_min(C) (van Hemmen & Ando 1980), and for Gaussian
    data E|mean - mu|^2 = tr S / N, E|cov - S|_F^2 = ((tr S)^2 + tr S^2) / (N - 1), so
        E w^2 <= tr S / N + ((tr S)^2 + tr S^2) / ((N - 1) lambda_min(S)).
    The 1e-9 is float64 roundoff of the two computations.
    """
    params, seed = case
    rng = np.random.default_rng(seed)
    fd = max(_scipy_frechet(*params[0], *params[1]), 0.0)  # roundoff makes FD of equal Gaussians -1e-15
    for n in (250, 1000, 4000):
        samples = [rng.multivariate_normal(mean, cov, size=n) for mean, cov in params]
        bound = sum(math.sqrt(max(_scipy_frechet(*_fitted(x), *p), 0.0)) for x, p in zip(samples, params))
        fid = metrics.fid(*samples)
        assert abs(math.sqrt(fid) - math.sqrt(fd)) <= bound + 1e-9


def test_fid_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 32) * 3 + 1
    assert 0 <= metrics.fid(x, x) <= 1e-9
    assert 0 <= metrics.fid(x, x.flip(0)) <= 1e-9  # the order of the rows does not matter


@pytest.mark.parametrize("d, n", [(16, 300), (64, 500)])
def test_fid_matches_scipy(d, n):
    real = torch.randn(n, d, dtype=torch.float64) @ torch.randn(d, d, dtype=torch.float64)
    fake = torch.randn(n + 50, d, dtype=torch.float64) @ torch.randn(d, d, dtype=torch.float64) * 0.5 + 0.3
    expected = _scipy_frechet(*_fitted(real.numpy()), *_fitted(fake.numpy()))
    assert metrics.fid(real, fake) == pytest.approx(expected, rel=1e-6)
    low = real.float()  # float32 numpy features are computed on in float64
    assert metrics.fid(low.numpy(), fake) == pytest.approx(
        _scipy_frechet(*_fitted(low.double().numpy()), *_fitted(fake.numpy())), rel=1e-6)


def test_frechet_distance_is_zero_for_identical_gaussians_and_symmetric():
    a = torch.randn(5, 5, dtype=torch.float64)
    mu1, cov1 = torch.randn(5, dtype=torch.float64), a @ a.T + 0.1 * torch.eye(5, dtype=torch.float64)
    b = torch.randn(5, 5, dtype=torch.float64)
    mu2, cov2 = torch.randn(5, dtype=torch.float64), b @ b.T
    assert 0 <= metrics.frechet_distance(mu1, cov1, mu1, cov1) <= 1e-12
    assert metrics.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(
        metrics.frechet_distance(mu2, cov2, mu1, cov1), rel=1e-10)


def test_frechet_distance_of_diagonal_gaussians_is_the_sum_over_coordinates():
    # Commuting covariances: W^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2, exactly.
    a, b = torch.rand(6, dtype=torch.float64) * 4, torch.rand(6, dtype=torch.float64) * 4
    mu1, mu2 = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert metrics.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_takes_singular_covariances():
    # A rank-1 covariance (fewer samples than dims) has zero eigenvalues that roundoff makes slightly negative.
    v = torch.randn(8, 1, dtype=torch.float64)
    mu = torch.zeros(8, dtype=torch.float64)
    assert 0 <= metrics.frechet_distance(mu, v @ v.T, mu, v @ v.T) <= 1e-12
    assert metrics.frechet_distance(mu, v @ v.T, mu, torch.zeros(8, 8, dtype=torch.float64)) == pytest.approx(
        float(v.square().sum()), rel=1e-12)  # W^2 to a point mass is the trace


@pytest.mark.parametrize("dead", [0, 58])
def test_fid_of_a_set_with_itself_is_zero_before_the_clamp(dead):
    # ReLU features, some units zero on every image (58 of the shipped network's 128 are, among the others): the
    # distance of a set to itself, and to its rows in another order, is 0 within the roundoff of one
    # eigendecomposition, d eps tr(cov), without the clamp at 0. Square roots of the roundoff eigenvalues the
    # dead units leave would make it -7.6e-6 here, 4e-9 of tr(cov): 10^5 times the roundoff.
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(128 - dead, 128 - dead, generator=g, dtype=torch.float64)
    live = (torch.randn(2000, 128 - dead, generator=g, dtype=torch.float64) @ mix).relu()
    x = torch.cat([live, torch.zeros(2000, dead, dtype=torch.float64)], 1)[:, torch.randperm(128, generator=g)]
    tolerance = 128 * torch.finfo(torch.float64).eps * float(torch.cov(x.T).trace())
    for other in (x, x.flip(0)):
        distance = float(metrics._frechet(x.mean(0), torch.cov(x.T), other.mean(0), torch.cov(other.T)))
        assert abs(distance) <= tolerance


def test_units_dead_on_both_sets_add_nothing_to_fid():
    # The distance with 58 constant units is the distance without them, within roundoff.
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(500, 70, generator=g).relu(), (torch.randn(500, 70, generator=g) + 0.1).relu()
    dead = torch.zeros(500, 58)
    roundoff = 128 * torch.finfo(torch.float64).eps * float(torch.cov(real.double().T).trace())
    assert metrics.fid(torch.cat([real, dead], 1), torch.cat([fake, dead], 1)) == pytest.approx(
        metrics.fid(real, fake), rel=0, abs=roundoff)


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel():
    # With one subset the size of both sets, the subset is the whole set (in some order): the estimate is the
    # U-statistic written out term by term.
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64) + 0.5

    def k(a, b):
        return (float(a @ b) / 3 + 1) ** 3

    m = 7
    within = sum(k(s[i], s[j]) for s in (x, y) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    expected = within - 2 * sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    mean, std = metrics.kid(x, y, subsets=1, subset_size=100)
    assert mean == pytest.approx(expected, rel=1e-12) and std == 0


def test_kid_is_unbiased():
    # Independent pairs of samples of one distribution: the estimates average to 0 within 4 standard errors.
    estimates = torch.tensor([metrics.kid(torch.randn(10, 2), torch.randn(10, 2), subsets=1, subset_size=10)[0]
                              for _ in range(300)])
    assert abs(float(estimates.mean())) <= 4 * float(estimates.std()) / math.sqrt(len(estimates))


def test_kid_tells_one_distribution_from_two():
    # The mean over subsets has variance <= a single subset's (Cauchy-Schwarz, however the subsets overlap), and
    # the std over subsets of 100 drawn from 2000 estimates that single-subset spread.
    real, same, shifted = torch.randn(2000, 4), torch.randn(2000, 4), torch.randn(2000, 4) + 1
    mean, std = metrics.kid(real, same, subsets=50, subset_size=100)
    assert abs(mean) <= 4 * std
    mean, std = metrics.kid(real, shifted, subsets=50, subset_size=100)
    assert mean > 4 * std


def test_kid_of_sets_no_larger_than_a_subset_is_one_estimate():
    # Every subset is then both whole sets, in some order: one estimate, whatever the number of subsets.
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, 3, dtype=torch.float64) + 0.3
    mean, std = metrics.kid(x, y, subsets=7, subset_size=40)
    assert std == 0.0 and mean == pytest.approx(float(metrics._mmd2(x.flip(0), y)), rel=1e-12)


def test_kid_subsets_follow_the_seed():
    x, y = torch.randn(300, 3), torch.randn(300, 3)
    assert metrics.kid(x, y, subsets=5, subset_size=50, seed=1) == metrics.kid(x, y, subsets=5, subset_size=50, seed=1)
    assert metrics.kid(x, y, subsets=5, subset_size=50, seed=1) != metrics.kid(x, y, subsets=5, subset_size=50, seed=2)


def test_knn_metrics_of_a_set_with_itself():
    # Each open ball holds its centre and the k - 1 nearer neighbours (the k-th lies on the sphere): density 1.
    x = torch.randn(200, 5)
    assert metrics.precision_recall(x, x) == (1.0, 1.0)
    assert metrics.density_coverage(x, x) == (1.0, 1.0)


@pytest.mark.parametrize("make", [
    lambda g: (torch.randn(300, 6, generator=g), torch.randn(250, 6, generator=g) * 1.3 + 0.2),
    lambda g: (torch.randint(0, 4, (200, 3), generator=g).double(),  # many ties and repeated points
               torch.randint(0, 5, (150, 3), generator=g).double()),
], ids=["gaussians", "ties"])
def test_prdc_is_precision_recall_and_density_coverage_at_once(make):
    real, fake = make(torch.Generator().manual_seed(0))
    precision, recall = metrics.precision_recall(real, fake, k=3)
    density, coverage = metrics.density_coverage(real, fake, k=5)
    assert metrics.prdc(real, fake) == {"precision": precision, "recall": recall, "density": density,
                                        "coverage": coverage}


def test_knn_metrics_of_far_apart_sets_are_zero():
    real = torch.randn(100, 5)
    assert metrics.precision_recall(real, torch.randn(80, 5) + 100) == (0.0, 0.0)
    assert metrics.density_coverage(real, torch.randn(80, 5) + 100) == (0.0, 0.0)


def test_knn_metrics_of_one_repeated_real_point():
    # A cluster of N - 1 points and one point p far from it; the fakes are p, 10 times. Only p's own ball holds
    # p, so coverage = 1/N and density = 1/k; every fake lies in it (precision 1); the fakes' balls have radius
    # 0 and hold nothing (recall 0).
    n = 100
    p = torch.tensor([[50.0, 0, 0, 0]])
    real = torch.cat([torch.randn(n - 1, 4), p])
    fake = p.repeat(10, 1)
    assert metrics.precision_recall(real, fake) == (1.0, 0.0)
    assert metrics.density_coverage(real, fake, k=5) == (1 / 5, 1 / n)


@pytest.mark.parametrize("k", [3, 5])
def test_knn_metrics_of_one_repeated_point_on_a_line(k):
    # Reals at 0, 1, ..., N-1: an inner point's k-th nearest other point (k odd) is (k+1)/2 away, so its open
    # ball holds the k points within (k-1)/2; the middle point j lies in the balls of j-(k-1)/2 ... j+(k-1)/2.
    n = 40
    real = torch.stack([torch.arange(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)], 1)
    fake = real[n // 2].repeat(10, 1)
    assert metrics.density_coverage(real, fake, k=k) == (1.0, k / n)
    assert metrics.precision_recall(real, fake, k=k) == (1.0, 0.0)


def test_precision_and_recall_swap_with_the_sets():
    real, fake = torch.randn(150, 3), torch.randn(120, 3) + 1.5  # overlapping in part
    precision, recall = metrics.precision_recall(real, fake)
    assert metrics.precision_recall(fake, real) == (recall, precision)
    assert 0 < precision < 1 and 0 < recall < 1


def test_density_and_coverage_match_their_expectations_for_one_distribution():
    # Naeem et al. 2020 (Lemma 1, 2): for i.i.d. real and fake sets of one continuous distribution,
    # E[density] = 1 and E[coverage] = 1 - prod_{j=1..k} (N - j) / (N + M - j). Means over 400 draws, 4 SEs.
    n, m, k = 100, 80, 5
    draws = torch.tensor([metrics.density_coverage(torch.randn(n, 3), torch.randn(m, 3), k=k) for _ in range(400)],
                         dtype=torch.float64)
    expected = torch.tensor([1.0, 1 - math.prod((n - j) / (n + m - j) for j in range(1, k + 1))], dtype=torch.float64)
    standard_error = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - expected).abs() <= 4 * standard_error).all()


def test_knn_metrics_do_not_depend_on_the_blocks(monkeypatch):
    real, fake = torch.randn(60, 4), torch.randn(50, 4) + 0.2
    whole = metrics.precision_recall(real, fake), metrics.density_coverage(real, fake)
    monkeypatch.setattr(metrics, "_BLOCK", 7)  # one row per block
    assert (metrics.precision_recall(real, fake), metrics.density_coverage(real, fake)) == whole


def test_nearest_finds_the_nearest_reference_row():
    reference = torch.randn(50, 6, dtype=torch.float64)
    reference[7] = reference[3]  # a duplicate: the first one is the answer
    queries = torch.cat([torch.randn(20, 6, dtype=torch.float64), reference[3:4]])
    full = (queries[:, None] - reference[None]).square().sum(-1).sqrt()
    distances, indices = metrics.nearest(queries, reference, chunk=4)
    assert torch.equal(indices, full.argmin(1)) and int(indices[-1]) == 3 and float(distances[-1]) == 0
    torch.testing.assert_close(distances, full.min(1).values, rtol=1e-12, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(metrics.nearest(queries, reference), (distances, indices)))


def test_nearest_other_skips_the_row_itself():
    x = torch.randn(30, 4, dtype=torch.float64)
    x[5] = x[9]  # a repeated row: its nearest other row is its copy
    full = (x[:, None] - x[None]).square().sum(-1).sqrt() + torch.diag(torch.full((30,), math.inf))
    got = metrics.nearest_other(x)
    torch.testing.assert_close(got, full.min(1).values, rtol=1e-12, atol=0)
    assert float(got[5]) == float(got[9]) == 0.0


@pytest.mark.parametrize("block", [None, 7])
def test_distinct_counts_each_group_of_copies_once(monkeypatch, block):
    if block is not None:
        monkeypatch.setattr(metrics, "_BLOCK", block)  # one row per block
    base = torch.randn(12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    copies = base[torch.randperm(12, generator=torch.Generator().manual_seed(1)).repeat(4)]  # 48 rows, 12 distinct
    assert metrics.distinct(copies, 0.0) == 12 and metrics.distinct(base, 0.0) == 12
    pair = torch.tensor([[0.0, 0.0], [3.0, 4.0]])  # 5 apart: the same within a radius of 5 (inclusive), not 4.99
    assert metrics.distinct(pair, 5.0) == 1 and metrics.distinct(pair, 4.99) == 2


def test_confusion_of_a_calibrated_classifier_matches_the_labelled_one():
    # Calibrated by construction: each image's label is drawn from the classifier's own probabilities. The
    # label-free estimate and the count of labelled predictions agree within 4 standard errors of the count
    # (binomial, per true class), doubled for the estimate's own error.
    g = torch.Generator().manual_seed(0)
    p = (3 * torch.randn(20_000, 4, generator=g, dtype=torch.float64)).softmax(1)
    labels = torch.multinomial(p, 1, generator=g).squeeze(1)
    predicted = p.argmax(1)
    counted = torch.stack([torch.bincount(predicted[labels == t], minlength=4).double() / int((labels == t).sum())
                           for t in range(4)])
    per_class = torch.bincount(labels, minlength=4).double()[:, None]
    standard_error = (counted * (1 - counted) / per_class).sqrt()
    estimated = metrics.confusion(p)
    roundoff = len(p) * torch.finfo(torch.float64).eps  # of sums of N probabilities
    torch.testing.assert_close(estimated.sum(1), torch.ones(4, dtype=torch.float64), rtol=0, atol=roundoff)
    assert ((estimated - counted).abs() <= 2 * 4 * standard_error).all()


def test_class_shares_take_the_confusion_out():
    # Two true classes of three, half each, predicted through C: the counts are 1000 * (pi @ C) exactly.
    c = torch.tensor([[0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.1, 0.9]], dtype=torch.float64)
    ids = torch.tensor([0] * 475 + [1] * 500 + [2] * 25)  # class 2 predicted 25 times, all misclassified
    assert torch.equal(torch.bincount(ids).double(), 1000 * torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64) @ c)
    few, many = metrics.class_shares(ids, c, steps=1000), metrics.class_shares(ids, c, steps=10_000)
    # EM approaches a share of 0 as 1/steps; the others settle as fast.
    assert many[2] <= few[2] / 5 and few[2] < 1e-3
    torch.testing.assert_close(many[:2], torch.full((2,), 0.5, dtype=torch.float64), rtol=0, atol=float(few[2]))
    # Shares all inside (0, 1) are found to roundoff: EM converges geometrically there.
    pi = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    ids = torch.repeat_interleave(torch.arange(3), (1000 * pi @ c).round().long())  # 195, 340, 465 exactly
    torch.testing.assert_close(metrics.class_shares(ids, c), pi, rtol=0, atol=3 * torch.finfo(torch.float64).eps)


def test_class_coverage_of_one_class():
    three = torch.full((50,), 3)
    assert metrics.class_coverage(three[:20], three, 10) == {
        "covered": 1.0, "classes_covered": 1, "classes_real": 1, "kl": 0.0, "entropy": 0.0, "entropy_real": 0.0}


def test_class_coverage_of_fakes_missing_classes():
    # Real: the 10 classes evenly; fake: classes 0-3 evenly. KL(fake || real) = log(0.25 / 0.1).
    real, fake = torch.arange(10).repeat(30), np.arange(4).repeat(25)
    result = metrics.class_coverage(real, fake, 10)
    assert (result["covered"], result["classes_covered"], result["classes_real"]) == (0.4, 4, 10)
    assert result["kl"] == pytest.approx(math.log(2.5), rel=1e-12)
    assert result["entropy"] == pytest.approx(math.log(4), rel=1e-12)
    assert result["entropy_real"] == pytest.approx(math.log(10), rel=1e-12)


def test_class_coverage_of_fakes_with_a_class_real_lacks():
    result = metrics.class_coverage(torch.tensor([0, 1]), torch.tensor([0, 1, 2]), 3)
    assert result["covered"] == 1.0 and result["kl"] == math.inf


x = torch.arange(60.0).reshape(20, 3) % 7
cov = torch.eye(3)


@pytest.mark.parametrize("call, name", [
    (lambda: metrics.fid(x[0], x), "real"),
    (lambda: metrics.fid(x, x[:1]), "fake"),
    (lambda: metrics.fid(x, torch.randn(20, 4)), "fake"),
    (lambda: metrics.fid(x, torch.full((5, 3), math.nan)), "fake"),
    (lambda: metrics.fid(x.to(torch.complex64), x), "real"),
    (lambda: metrics.frechet_distance(torch.zeros(3), cov, torch.zeros(4), cov), "mu2"),
    (lambda: metrics.frechet_distance(torch.zeros(3), torch.eye(4), torch.zeros(3), cov), "cov1"),
    (lambda: metrics.frechet_distance(torch.zeros(3), cov, torch.zeros(3), cov * math.inf), "cov2"),
    (lambda: metrics.kid(x, x, subsets=0), "subsets"),
    (lambda: metrics.kid(x, x, subset_size=1), "subset_size"),
    (lambda: metrics.precision_recall(x[:3], x), "real"),
    (lambda: metrics.precision_recall(x, x, k=0), "k"),
    (lambda: metrics.density_coverage(x, x[:0]), "fake"),
    (lambda: metrics.class_coverage(torch.tensor([0]), torch.tensor([0, 10]), 10), "fake_classes"),
    (lambda: metrics.class_coverage(torch.tensor([0.0]), torch.tensor([0]), 10), "real_classes"),
    (lambda: metrics.class_coverage(torch.tensor([0]), torch.tensor([0]), 0), "classes"),
    (lambda: metrics.nearest(x, x, chunk=0), "chunk"),
    (lambda: metrics.nearest(x, torch.zeros(0, 3)), "reference"),
    (lambda: metrics.nearest_other(x[:1]), "x"),
    (lambda: metrics.distinct(x[:0], 1.0), "x"),
    (lambda: metrics.confusion(torch.zeros(0, 3)), "probabilities"),
    (lambda: metrics.class_shares(torch.tensor([0, 3]), torch.eye(3)), "classes"),
    (lambda: metrics.class_shares(torch.tensor([0]), torch.eye(3)[:2]), "confusion_matrix"),
])
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()


def test_a_list_is_not_features():
    with pytest.raises(TypeError, match="^real"):
        metrics.fid([[0.0, 1.0], [1.0, 0.0]], x)
