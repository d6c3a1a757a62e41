"""Disentanglement scores: MIG, SAP and DCI against straightforward sklearn computations, their exact cases and
invariances, MIG's plug-in bias on independent codes, the FactorVAE and beta-VAE scores of the factors themselves
and of codes that ignore them (chance, within binomial errors), a model's codes, and errors that name the input."""

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings, strategies as st
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import mutual_info_score
from sklearn.svm import LinearSVC

import funcvae
from funcvae import disentanglement as dis
from funcvae.rng import derive_seed


def _grid(sizes, repeats: int, seed: int) -> np.ndarray:
    """Every combination of factors of ``sizes`` values, ``repeats`` times, rows shuffled: (N, K) int64."""
    axes = np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij")
    rows = np.repeat(np.stack(axes, -1).reshape(-1, len(sizes)), repeats, axis=0)
    return np.random.default_rng(seed).permutation(rows)


def _mixed(seed: int, n: int, dims: int, sizes) -> tuple[np.ndarray, np.ndarray]:
    """Random factors of ``sizes`` values and codes that hold some of them: each dimension a random mix of the
    factors plus Gaussian noise, so every score is away from its extremes."""
    rng = np.random.default_rng(seed)
    y = np.stack([rng.permutation(np.arange(n) % s) for s in sizes], axis=1)
    z = y @ rng.normal(size=(len(sizes), dims)) * rng.uniform(0, 1, size=dims) + rng.normal(size=(n, dims))
    return z, y


def _lookup(table) -> callable:
    """A representation of 'images' that are row numbers (N, 1): each row's code from ``table``."""
    table = torch.as_tensor(table, dtype=torch.float64)
    return lambda rows: table[rows[:, 0]]


# MIG ----------------------------------------------------------------------------------------------------------

@settings(max_examples=15)
@given(sizes=st.lists(st.integers(2, 20), min_size=2, max_size=3), repeats=st.integers(1, 3),
       bins=st.sampled_from([5, 10, 20]), seed=st.integers(0, 2**31))
def test_mig_of_the_factors_themselves_is_one(sizes, repeats, bins, seed):
    # With at most `bins` values, distinct values lie at least one bin width apart (range / (values - 1) >= range /
    # bins), so each lands in its own bin: a dimension's information is its factor's entropy. On a whole product
    # grid the plug-in information between different factors is exactly 0, so every gap is the entropy: MIG 1.
    sizes = [min(s, bins) for s in sizes]
    y = _grid(sizes, repeats, seed)
    out = dis.mig(y, y, bins=bins)
    assert out["mig"] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(np.diag(out["mutual_information"]), out["entropy"], rtol=1e-12)
    np.testing.assert_allclose(out["entropy"], np.log(sizes), rtol=1e-12)


@settings(max_examples=10)
@given(values=st.integers(2, 5), bins=st.sampled_from([10, 20]), dims=st.integers(2, 5), seed=st.integers(0, 2**31))
def test_mig_of_independent_codes_is_within_the_plug_in_bias(values, bins, dims, seed):
    # For an independent pair, 2 N times the plug-in information is about chi-squared with (bins - 1)(values - 1)
    # degrees of freedom: mean df, standard deviation sqrt(2 df). A factor's gap is at most its largest
    # information, so 6 standard deviations above the mean bound every gap (uniform codes fill every bin).
    n = 2000
    rng = np.random.default_rng(seed)
    z, y = rng.uniform(size=(n, dims)), rng.integers(0, values, size=(n, 2))
    out = dis.mig(z, y, bins=bins)
    df = (bins - 1) * (values - 1)
    bound = (df + 6 * math.sqrt(2 * df)) / (2 * n)
    assert np.all(out["per_factor"] >= 0)
    assert np.all(out["per_factor"] <= bound / out["entropy"])
    assert np.all(out["mutual_information"] <= bound)


def test_plugin_bias_is_the_mean_information_of_independent_pairs():
    # 2 N I is about chi-squared with df = (bins - 1)(values - 1): mean df, variance 2 df; 40 pairs of 40 codes.
    n, values, bins = 4000, 4, 20
    rng = np.random.default_rng(0)
    info = dis.mig(rng.uniform(size=(n, 20)), rng.integers(0, values, size=(n, 2)), bins=bins)["mutual_information"]
    df = (bins - 1) * (values - 1)
    assert dis.plugin_bias(values, n, bins=bins) == df / (2 * n)
    se = math.sqrt(2 * df) / (2 * n) / math.sqrt(info.size)
    assert abs(info.mean() - dis.plugin_bias(values, n, bins=bins)) < 4 * se
    with pytest.raises(ValueError, match="bins"):
        dis.plugin_bias(values, n, bins=1)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31), dims=st.integers(2, 5), sizes=st.lists(st.integers(2, 6), min_size=1, max_size=3),
       bins=st.integers(2, 25))
def test_mig_matches_sklearn_mutual_info_score_on_numpy_histograms(seed, dims, sizes, bins):
    z, y = _mixed(seed, 400, dims, sizes)
    binned = np.stack([np.digitize(z[:, d], np.histogram(z[:, d], bins)[1][:-1]) for d in range(dims)], axis=1)
    info = np.array([[mutual_info_score(y[:, k], binned[:, d]) for k in range(len(sizes))] for d in range(dims)])
    h = np.array([mutual_info_score(y[:, k], y[:, k]) for k in range(len(sizes))])
    top = np.sort(info, axis=0)
    out = dis.mig(z, y, bins=bins)
    np.testing.assert_allclose(out["mutual_information"], info, atol=1e-6)
    np.testing.assert_allclose(out["entropy"], h, atol=1e-6)
    assert out["mig"] == pytest.approx(np.mean((top[-1] - top[-2]) / h), abs=1e-6)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31), dims=st.integers(2, 5), data=st.data())
def test_mig_is_invariant_to_permutations_and_increasing_affine_maps_of_dimensions(seed, dims, data):
    # Equal-width bins over each dimension's own range: x -> a x + b (a > 0) keeps every value's place among the
    # edges, so the binned codes, and every number after them, are the same. A nonlinear increasing map (exp)
    # moves values between bins, so MIG is not invariant to it; that is not tested.
    z, y = _mixed(seed, 500, dims, [3, 4])
    a = np.array(data.draw(st.lists(st.floats(0.1, 10), min_size=dims, max_size=dims)))
    b = np.array(data.draw(st.lists(st.floats(-5, 5), min_size=dims, max_size=dims)))
    order = np.random.default_rng(seed).permutation(dims)
    out, moved = dis.mig(z, y), dis.mig((z * a + b)[:, order], y)
    assert moved["mig"] == pytest.approx(out["mig"], abs=1e-12)
    np.testing.assert_allclose(moved["mutual_information"], out["mutual_information"][order], atol=1e-12)


def test_most_informative_labels_each_dimension_and_marks_collapsed_ones():
    y = _grid([3, 4, 5], 2, 0)
    z = np.concatenate([y[:, [2, 0, 1]], np.zeros((len(y), 1))], axis=1)  # the last dimension collapsed
    info = dis.mig(z, y)["mutual_information"]
    assert dis.most_informative(info).tolist() == [2, 0, 1, -1]
    assert dis.most_informative(info, minimum=10.0).tolist() == [-1] * 4


# SAP and DCI ---------------------------------------------------------------------------------------------------

@settings(max_examples=5)
@given(seed=st.integers(0, 2**31), dims=st.integers(2, 4), sizes=st.lists(st.integers(2, 4), min_size=1, max_size=3))
def test_sap_matches_a_plain_linear_svc_loop(seed, dims, sizes):
    z, y = _mixed(seed, 300, dims, sizes)
    t = 200  # two thirds
    score = np.array([[np.mean(LinearSVC(C=0.01, class_weight="balanced").fit(z[:t, [d]], y[:t, k])
                               .predict(z[t:, [d]]) == y[t:, k]) for k in range(len(sizes))] for d in range(dims)])
    top = np.sort(score, axis=0)
    out = dis.sap(z, y)
    np.testing.assert_allclose(out["score_matrix"], score, atol=1e-6)
    assert out["sap"] == pytest.approx(np.mean(top[-1] - top[-2]), abs=1e-6)
    # Each dimension's classifiers see that dimension alone: a permutation permutes the score matrix's rows. SAP
    # is not tested under rescaling: C=0.01 penalises the SVM's weight and intercept, so the scale matters.
    order = np.random.default_rng(seed).permutation(dims)
    np.testing.assert_array_equal(dis.sap(z[:, order], y)["score_matrix"], out["score_matrix"][order])


def _dci_reference(z, y, t, seed):
    state = derive_seed(seed, "dci") % 2**32
    r = np.zeros((z.shape[1], y.shape[1]))
    fit, held = [], []
    for k in range(y.shape[1]):
        trees = GradientBoostingClassifier(random_state=state).fit(z[:t], y[:t, k])
        r[:, k] = trees.feature_importances_
        fit.append(np.mean(trees.predict(z[:t]) == y[:t, k]))
        held.append(np.mean(trees.predict(z[t:]) == y[t:, k]))
    d = 1 - scipy.stats.entropy(r.T + 1e-11, base=r.shape[1])
    c = 1 - scipy.stats.entropy(r + 1e-11, base=r.shape[0])
    return {"disentanglement": np.sum(d * r.sum(1) / r.sum()), "completeness": np.sum(c * r.sum(0) / r.sum()),
            "informativeness_train": np.mean(fit), "informativeness_test": np.mean(held), "importance": r}


@settings(max_examples=3)
@given(seed=st.integers(0, 2**31), dims=st.integers(2, 3), sizes=st.lists(st.integers(2, 3), min_size=2, max_size=2))
def test_dci_matches_a_plain_gradient_boosting_loop(seed, dims, sizes):
    z, y = _mixed(seed, 240, dims, sizes)
    out, want = dis.dci(z, y, seed=seed), _dci_reference(z, y, 160, seed)
    for key, value in want.items():
        np.testing.assert_allclose(out[key], value, atol=1e-6, err_msg=key)


def test_dci_is_invariant_to_power_of_two_scales_and_near_invariant_to_permutations_of_dimensions():
    # Trees split on the order of values, and sklearn's cast to float32 keeps a scale by a power of two exact,
    # thresholds (midpoints) included: the trees are the same. Other increasing maps move thresholds between
    # held-out values (and float32 may merge values), so they are not tested. A permutation permutes the
    # importances but for ties: sklearn visits features in a random order and keeps the first of equally good
    # splits, which differ in nodes of a few rows; a few held-out rows and a little importance move.
    z, y = _mixed(3, 240, 3, [3, 2])
    out, scaled = dis.dci(z, y), dis.dci(z * np.array([4.0, 0.125, 1024.0]), y)
    for key in ("importance", "disentanglement", "completeness", "informativeness_train", "informativeness_test"):
        np.testing.assert_array_equal(scaled[key], out[key], err_msg=key)
    order = np.array([2, 0, 1])
    moved = dis.dci(z[:, order], y)
    np.testing.assert_allclose(moved["importance"], out["importance"][order], atol=0.03)
    for key, tolerance in (("disentanglement", 0.03), ("completeness", 0.03), ("informativeness_train", 2 / 160),
                           ("informativeness_test", 2 / 80)):
        assert moved[key] == pytest.approx(out[key], abs=tolerance + 1e-12), key


def test_dci_of_the_factors_themselves_is_perfect():
    y = _grid([3, 4], 10, 1)
    out = dis.dci(y.astype(float), y)
    assert out["informativeness_train"] == out["informativeness_test"] == 1.0
    assert out["disentanglement"] > 0.99 and out["completeness"] > 0.99


# FactorVAE and beta-VAE scores -----------------------------------------------------------------------------------

def test_factor_scores_of_the_factors_themselves_are_one():
    # A batch with factor k held fixed has zero variance in dimension k alone: every vote is (k, k), exactly.
    y = _grid([3, 4, 5], 2, 0)
    rows = torch.arange(len(y))[:, None]
    out = dis.factor_vae_score(_lookup(y), rows, y, batch_size=16, train=300, eval=300, variance_estimate=200)
    assert out["score"] == out["train_accuracy"] == 1.0 and out["active"] == 3 and out["note"] is None
    beta = dis.beta_vae_score(_lookup(y), rows, y, batch_size=16, train=300, eval=300)
    assert beta["score"] >= 0.99


@pytest.mark.parametrize("score", ["factor_vae", "beta_vae"])
def test_factor_scores_of_codes_that_ignore_the_factors_are_chance(score):
    # The held-out accuracy of a classifier fixed before the eval draws, on labels independent of its inputs, is
    # binomial(eval, 1/K) / eval: within 4 standard errors of 1/K. Each value holds 12,000 rows, so what the
    # classifier learns of their own variances is far below that error (see factor_vae_score).
    y = _grid([2, 2, 2], 3000, 0)
    z = np.random.default_rng(1).normal(size=(len(y), 5))
    rows, k, n = torch.arange(len(y))[:, None], 3, 2000
    settings_ = dict(batch_size=32, train=1000, eval=n)
    if score == "factor_vae":
        out = dis.factor_vae_score(_lookup(z), rows, y, variance_estimate=1000, **settings_)
    else:
        out = dis.beta_vae_score(_lookup(z), rows, y, **settings_)
    assert abs(out["score"] - 1 / k) < 4 * math.sqrt((1 / k) * (1 - 1 / k) / n)


def test_factor_scores_are_invariant_to_permuting_dimensions_and_reproducible():
    z, y = _mixed(5, 600, 4, [3, 4])
    rows, order = torch.arange(len(y))[:, None], np.array([3, 1, 0, 2])
    kw = dict(batch_size=16, train=200, eval=200)
    fvae = dis.factor_vae_score(_lookup(z), rows, y, variance_estimate=200, **kw)
    assert fvae == dis.factor_vae_score(_lookup(z[:, order]), rows, y, variance_estimate=200, **kw)
    beta = dis.beta_vae_score(_lookup(z), rows, y, seed=2, **kw)
    assert beta == dis.beta_vae_score(_lookup(z), rows, y, seed=2, **kw)
    # lbfgs reaches the same optimum from permuted features up to its tolerance: one point may change sides.
    moved = dis.beta_vae_score(_lookup(z[:, order]), rows, y, seed=2, **kw)
    assert moved["score"] == pytest.approx(beta["score"], abs=1 / 200 + 1e-12)


def test_an_empty_representation_scores_zero_with_a_note():
    y = _grid([3, 4], 5, 0)
    z = np.random.default_rng(0).normal(size=(len(y), 3)) * 0.01  # every std below prune = 0.05
    out = dis.factor_vae_score(_lookup(z), torch.arange(len(y))[:, None], y, train=50, eval=50, variance_estimate=50)
    assert out["score"] == 0.0 and out["active"] == 0 and "prune" in out["note"]


# A model's codes, and every score at once --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    """A tiny MLP VAE of 8 x 8 images, 3 latents, and 40 images."""
    return funcvae.init(seed=0, input_shape=(1, 8, 8), hidden=(16,), latent=3), torch.rand(
        40, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_codes_are_posterior_means_by_default_and_samples_by_seed(small):
    params, x = small
    mean, logvar = funcvae.encode(params, x)
    means = dis.codes(params, x, chunk_size=16)
    assert means.shape == (40, 3) and means.dtype == torch.float64
    assert torch.equal(means, dis.codes(params, x, seed=5, chunk_size=16))  # a Gaussian's means use no draws
    torch.testing.assert_close(means, mean.double())
    uint8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(dis.codes(params, uint8, scale=255), dis.codes(params, uint8.double() / 255))
    a, b = dis.codes(params, x, kind="sample", seed=0), dis.codes(params, x, kind="sample", seed=1)
    assert torch.equal(a, dis.codes(params, x, kind="sample", seed=0)) and not torch.allclose(a, b)
    # (sample - mean) / std is standard normal: its mean within 5 standard errors of 0, its variance of 1.
    u = ((a - mean.double()) / torch.exp(logvar.double() / 2)).flatten()
    assert abs(float(u.mean())) < 5 / math.sqrt(len(u))
    assert abs(float(u.var()) - 1) < 5 * math.sqrt(2 / len(u))


def test_codes_of_a_hierarchy_are_its_groups_side_by_side(small):
    _, x = small
    ladder = funcvae.init(seed=0, arch="ladder", input_shape=(1, 8, 8), hidden=(16, 8), latents=(4, 2))
    assert ladder.model.groups == ("z1", "z2")
    for kind in ("mean", "sample"):
        assert dis.codes(ladder, x, kind=kind, chunk_size=64).shape == (40, 6)
    mean, _ = funcvae.encode(ladder, x, seed=derive_seed(0, "codes", "mean", 0))
    torch.testing.assert_close(dis.codes(ladder, x, chunk_size=64), mean.double())


def test_scores_gives_every_score_as_json(small):
    params, _ = small
    y = _grid([3, 4], 10, 0)
    x = torch.rand(len(y), 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = dis.scores(params, x, {"shape": torch.as_tensor(y[:, 0]), "size": torch.as_tensor(y[:, 1])}, n=90,
                     batch_size=8, train=60, eval=60, variance_estimate=60)
    assert json.loads(json.dumps(out)) == out
    assert out["factors"] == ["shape", "size"] and out["n"] == 90 and out["kind"] == "mean"
    assert np.array(out["mig"]["mutual_information"]).shape == (3, 2)
    assert np.array(out["dci"]["importance"]).shape == (3, 2)
    for key, name in (("mig", "mig"), ("sap", "sap"), ("dci", "disentanglement"), ("factor_vae", "score"),
                      ("beta_vae", "score")):
        assert 0.0 <= out[key][name] <= 1.0, key


# Bad input ---------------------------------------------------------------------------------------------------------

Z, Y = _mixed(0, 30, 3, [2, 3])


@pytest.mark.parametrize("call, error, match", [
    (lambda: dis.mig(Z[:29], Y), ValueError, "30 rows for 29"),
    (lambda: dis.mig(Z, Y.astype(np.float32)), TypeError, "integers"),
    (lambda: dis.mig(Z, np.concatenate([Y, np.full((30, 1), 7)], 1)), ValueError, "factor 2 .* one value 7"),
    (lambda: dis.mig(Z, {"a": Y[:, 0], "b": np.zeros(30, int)}), ValueError, "factor 1 \\('b'\\)"),
    (lambda: dis.mig(np.where(np.arange(3) == 1, np.nan, Z), Y), ValueError, "NaN or Inf .*\\(0, 1\\)"),
    (lambda: dis.sap(np.where(np.arange(3) == 2, np.inf, Z), Y), ValueError, "NaN or Inf"),
    (lambda: dis.mig(Z[:, 0], Y), ValueError, "\\(N, D\\)"),
    (lambda: dis.mig(Z, Y[:, 0]), ValueError, "\\(N, K\\)"),
    (lambda: dis.mig(Z[:, :1], Y), ValueError, "1 dimension"),
    (lambda: dis.mig(Z[:1], Y[:1]), ValueError, "at least 2"),
    (lambda: dis.mig(Z, Y, bins=1), ValueError, "bins"),
    (lambda: dis.mig(Z, Y, names=["a"]), ValueError, "2 strings"),
    (lambda: dis.mig(Z.astype(str), Y), TypeError, "real numbers"),
    (lambda: dis.mig("codes", Y), TypeError, "tensor or an array"),
    (lambda: dis.sap(Z, Y, train=30), ValueError, "no rows to score"),
    (lambda: dis.sap(Z, np.sort(Y, axis=0), train=5), ValueError, "factor 0 takes one value in the first 5"),
    (lambda: dis.dci(Z, Y[:, :1]), ValueError, "1 factor"),
    (lambda: dis.factor_vae_score("f", torch.zeros(30, 1), Y), TypeError, "represent"),
    (lambda: dis.factor_vae_score(_lookup(Z), list(range(30)), Y), TypeError, "images must be a tensor"),
    (lambda: dis.factor_vae_score(_lookup(Z), torch.zeros(29, 1).long(), Y), ValueError, "30 rows for 29"),
    (lambda: dis.factor_vae_score(lambda x: x[:, 0].double(), torch.arange(30)[:, None], Y), ValueError,
     "represent must"),
    (lambda: dis.factor_vae_score(lambda x: torch.zeros(len(x), 2), torch.arange(30)[:, None], Y, batch_size=1),
     ValueError, "batch_size"),
    (lambda: dis.beta_vae_score(lambda x: torch.full((len(x), 2), math.nan), torch.arange(30)[:, None], Y),
     ValueError, "NaN"),
    (lambda: dis.most_informative(np.zeros(3)), ValueError, "\\(D, K\\)"),
])
def test_bad_input_is_named_before_any_work(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_model_input_is_named(small):
    params, x = small
    with pytest.raises(ValueError, match="kind"):
        dis.codes(params, x, kind="median")
    with pytest.raises(ValueError, match="chunk_size"):
        dis.codes(params, x, chunk_size=0)
    with pytest.raises(ValueError, match="images"):
        dis.codes(params, x[:, :, :4])
    with pytest.raises(ValueError, match="n=50 rows asked for, but the data set has 40"):
        dis.scores(params, x, _grid([2, 2], 10, 0), n=50)
