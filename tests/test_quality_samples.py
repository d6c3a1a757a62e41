"""``quality.sample_quality`` and ``quality.assess``: three sets of one size scored against one reference half,
with the real floor beside them; the verdicts name a prior hole, sample collapse and memorisation only where
their evidence is (tests/test_verdicts.py: on image sets whose truth is known)."""

import math

import pytest
import torch

import funcvae
from funcvae import quality
from funcvae._runtime import records
from funcvae.quality import rules as R
from funcvae.quality import samples as S

SMALL = dict(hidden=(32,), latent=4)


def projection(dim=16, classes=10):
    """A feature function of one's own: a fixed random projection, with logits from a fixed linear map."""
    g = torch.Generator().manual_seed(0)
    w, c = torch.randn(784, dim, generator=g, dtype=torch.float64), torch.randn(dim, classes, generator=g,
                                                                                 dtype=torch.float64)

    def feats(x):
        f = x.reshape(x.shape[0], -1).double() @ w
        return f, f @ c
    return feats


@pytest.fixture(scope="module")
def trained(fashion):
    params, _ = funcvae.fit(funcvae.init(seed=0, **SMALL), fashion[0][:1024], epochs=2, batch_size=128,
                            compile=False)
    return params


def test_the_three_sets_are_scored_against_one_reference_of_their_size(trained, fashion):
    x = fashion[1][:200]
    result = quality.sample_quality(trained, x, seed=3, network=projection())
    assert result["n"] == 100 and list(result["sets"]) == list(quality.SETS)
    real = S.embed(x[:100].reshape(100, -1), network=projection())
    held = S.embed(x[100:200].reshape(100, -1), network=projection())
    assert result["sets"]["real"] == S.scores(real, held, seed=3)  # the floor: half against half
    recon = S.embed(S.reconstruction_images(trained, x[100:200].reshape(100, -1)), network=projection())
    assert result["sets"]["reconstructions"] == S.scores(real, recon, seed=3)
    # The same seed gives the same result, and the result is strict JSON.
    assert records.dumps(quality.sample_quality(trained, x, seed=3, network=projection())) == records.dumps(result)


def test_on_the_shipped_features_the_real_floor_is_below_the_model(trained, fashion):
    result = quality.sample_quality(trained, fashion[1][:400], seed=0)
    sets = result["sets"]
    assert sets["real"]["fid"] < sets["reconstructions"]["fid"] and sets["real"]["fid"] < sets["prior samples"]["fid"]
    assert sets["real"]["classes"]["covered"] == 1.0


def test_sample_quality_assesses_the_models_sets(trained, fashion):
    # Its prior samples, and the reconstructions of the floor half, through assess: the same scores and verdicts.
    x, x_train = fashion[1][:200].reshape(200, -1), fashion[0][:300].reshape(300, -1)
    result = quality.sample_quality(trained, x, seed=3, x_train=x_train, network=projection())
    want = quality.assess(S.prior_images(trained, 100, seed=3), x, seed=3, train=x_train, network=projection(),
                          reconstructions=S.reconstruction_images(trained, x[100:], seed=3))
    want["findings"] = want.pop("verdicts")
    assert records.dumps(result) == records.dumps(want)
    # Reconstructions of every real image, row for row, are cut to the floor half's.
    whole = quality.assess(S.prior_images(trained, 100, seed=3), x, seed=3, train=x_train, network=projection(),
                           reconstructions=S.reconstruction_images(trained, x, seed=3))
    assert whole["sets"]["reconstructions"] == want["sets"]["reconstructions"]


def test_assess_takes_as_many_samples_as_half_the_real_images(fashion):
    x = fashion[1][:300]
    result = quality.assess(x[200:], x[:300], network=projection())  # 100 samples: n = 100, real[:200] used
    assert result["n"] == 100 and list(result["sets"]) == ["prior samples", "real"]
    assert result["sets"]["real"] == S.scores(S.embed(x[:100], network=projection()),
                                              S.embed(x[100:200], network=projection()), seed=0)
    with pytest.raises(ValueError, match=r"reconstructions must be of the real images row for row \(300\)"):
        quality.assess(x[200:], x, reconstructions=x[:50], network=projection())
    with pytest.raises(ValueError, match=r"assess needs 6 samples and 12 real images"):
        quality.assess(x[:5], x, network=projection())


def test_memorisation_of_a_model_that_copies_its_training_images(fashion):
    # Samples that ARE training images lie nearer to one (distance 0) than any held-out image does.
    x_train, x_test = fashion[0][:300].reshape(300, -1), fashion[1][:200].reshape(200, -1)
    memo = R.memorisation(x_train[:100], x_test[:100], x_train)
    assert memo["share"] == 1.0 and memo["median_samples"] == 0.0 and memo["nearest"] == list(range(100))
    fresh = R.memorisation(x_test[100:200], x_test[:100], x_train)
    assert fresh["share"] <= fresh["expected"] + R.SIGNIFICANT * fresh["share_se"]


def test_thumbnails_are_blurred_and_pooled_images():
    # A constant image stays constant (the blur's weights sum to 1, edges repeated); one bright pixel spreads
    # its mass, 1/16 of it (a 4x4 pool's mean), over the 7x7 thumbnail of a 28x28 image.
    flat = torch.full((1, 784), 0.5)
    torch.testing.assert_close(R._thumbnails(flat), torch.full((1, 49), 0.5, dtype=torch.float64))
    dot = torch.zeros(1, 1, 28, 28)
    dot[0, 0, 13, 13] = 1.0
    thumb = R._thumbnails(dot)
    roundoff = 784 * torch.finfo(torch.float64).eps  # of sums over the image's pixels
    assert thumb.shape == (1, 49) and float(thumb.sum()) == pytest.approx(1 / 16, rel=roundoff)
    assert int(thumb.argmax()) == 3 * 7 + 3  # the centre
    odd = torch.rand(3, 10)  # no known grid: the pixels as they are
    assert torch.equal(R._thumbnails(odd), odd.double())


def result_with(prior=None, recon=None, real=None, memorisation=None, spread=600.0):
    """An assess result whose sets hold the given figures (a healthy model's otherwise)."""
    def row(fid, recall=0.6, coverage=0.9, covered=1.0, effective=9.5, distinct=1.0):
        return {"fid": fid, "kid": 0.0, "kid_std": 0.0, "precision": 0.7, "recall": recall, "density": 1.0,
                "coverage": coverage, "distinct": distinct, "distinct_real": 1.0,
                "classes": {"covered": covered, "classes_covered": round(10 * covered), "classes_real": 10,
                            "kl": 0.0, "entropy": 2.0, "entropy_real": 2.3, "shares": None, "effective": effective,
                            "effective_real": 9.9}}
    sets = {"prior samples": row(**(prior or {"fid": 12.0})), "reconstructions": row(**(recon or {"fid": 10.0})),
            "real": row(**(real or {"fid": 1.0, "recall": 0.8, "coverage": 0.95}))}
    return {"n": 1000, "network": "test", "spread": spread, "sets": sets, "memorisation": memorisation}


def names(result):
    return [f["name"] for f in R.verdicts(result)]


def test_a_healthy_model_has_no_sample_findings():
    assert names(result_with()) == []


@pytest.mark.parametrize("prior_fid, found", [(29.9, False), (30.1, True), (60.0, True)])
def test_a_prior_hole_is_prior_samples_far_worse_than_reconstructions(prior_fid, found):
    result = result_with(prior={"fid": prior_fid}, spread=100.0)  # gaps of 0.2 to 0.5 of the spread
    assert ("prior hole" in names(result)) == found
    if found:
        (finding,) = R.verdicts(result)
        assert finding["evidence"]["fid_prior_samples"] == prior_fid
        assert finding["evidence"]["gap"] == (prior_fid - 10.0) / 100.0
        assert "VampPrior" in finding["advice"] and "Ghosh" in finding["advice"]


def test_no_prior_hole_when_the_reconstructions_are_as_poor():
    assert names(result_with(prior={"fid": 60.0}, recon={"fid": 50.0})) == []
    assert names(result_with(prior={"fid": 3.5}, recon={"fid": 0.5}, real={"fid": 1.5})) == []  # near the floor


def test_no_prior_hole_for_near_real_samples_beside_perfect_reconstructions():
    # Far over 3 times the reconstructions' FID, but within PRIOR_HOLE_GAP of the spread above them: near-real
    # samples beside perfect reconstructions (real images with noise of 0.05 are 0.017 of the spread above).
    gap = R.PRIOR_HOLE_GAP * 600.0
    assert names(result_with(prior={"fid": 1.0 + gap - 1e-9}, recon={"fid": 1.0})) == []
    assert names(result_with(prior={"fid": 1.0 + gap + 1e-9}, recon={"fid": 1.0})) == ["prior hole"]
    without = result_with(prior={"fid": 500.0})
    del without["sets"]["reconstructions"]
    assert names(without) == []  # without reconstructions, no verdict on the prior


@pytest.mark.parametrize("figures", [
    {"effective": 4.9},  # under half the reference's 9.9 classes
    {"effective": 1.0, "covered": 0.3},
    {"distinct": 0.49},  # under half the reference's share of distinct images: copies
])
def test_sample_collapse_is_few_classes_or_few_distinct_images(figures):
    result = result_with(prior={"fid": 12.0, **figures})
    (finding,) = R.verdicts(result)
    assert finding["name"] == "sample collapse"
    assert finding["evidence"]["effective_classes"] == figures.get("effective", 9.5)
    assert finding["evidence"]["distinct"] == figures.get("distinct", 1.0)
    assert finding["evidence"]["recall_real"] == 0.8  # the floor's recall and coverage beside the samples'


def test_diverse_samples_are_not_collapsed():
    # Recall and coverage near 0 (blur) with the reference's classes: not "all the same"; nor at half of them.
    assert names(result_with(prior={"fid": 12.0, "recall": 0.006, "coverage": 0.07})) == []
    assert names(result_with(prior={"fid": 12.0, "effective": 4.95, "distinct": 0.5})) == []


@pytest.mark.parametrize("share, found", [(0.012, False), (0.05, True)])
def test_memorisation_needs_more_near_copies_than_chance(share, found):
    se = math.sqrt(0.01 * 0.99 * (1 / 1000 + 1 / 1000))
    memo = {"share": share, "expected": 0.01, "share_se": se, "threshold": 0.5, "median_samples": 2.0,
            "median_held_out": 2.0, "median_ratio_samples": 0.9, "median_ratio_held_out": 0.9, "nearest": []}
    assert ("memorisation" in names(result_with(memorisation=memo))) == found


def test_too_few_held_out_images_are_refused(trained, fashion):
    with pytest.raises(ValueError, match=r"x_real has 10 images; sample_quality needs 2 n of them"):
        quality.sample_quality(trained, fashion[1][:10], network=projection())


@pytest.mark.parametrize("beta, epochs, named", [
    (1.0, 5, []),                     # healthy: prior samples 2x the reconstructions' FID, every class
    (0.01, 5, ["prior hole"]),        # an unregularised latent space: prior samples 3.7x
    (100.0, 2, ["sample collapse"]),  # posterior collapse: every sample the same image, one or two classes
])
def test_real_runs_are_named_by_what_they_have(beta, epochs, named):
    # Real Fashion-MNIST (8192 training images), the shipped features, 1000 images per set.
    x_train = funcvae.data.load("fashion-mnist", "train")[:8192]
    params, _ = funcvae.fit(funcvae.init(seed=0), x_train, epochs=epochs, beta=beta, compile=False)
    result = quality.sample_quality(params, funcvae.data.load("fashion-mnist", "test")[:2000], seed=0)
    assert names(result) == named
