"""Diagnostics: per-dim KL, active units and mutual information against a model of known structure, and
the verdicts of ``diagnose`` on crafted and real training histories."""

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcvae
from funcvae import diagnostics as G
from funcvae import oracle

Z = 5.0
F64 = torch.float64


@st.composite
def structured_models(draw):
    """An oracle model whose latent dims have column norms in [0.3, 2.5] or exactly 0 (at least one each)."""
    latent = draw(st.integers(2, 4))
    dead = draw(st.permutations(range(latent)))[:draw(st.integers(1, latent - 1))]
    live = draw(st.lists(st.floats(0.3, 2.5), min_size=latent, max_size=latent))
    norms = [0.0 if i in dead else n for i, n in enumerate(live)]
    sigma = draw(st.floats(0.2, 1.0))
    model = oracle.linear_gaussian(draw(st.integers(0, 2**31)), features=latent + 2, latent=latent, sigma=sigma,
                                   norms=norms)
    return model, torch.tensor(norms, dtype=F64)


@settings(max_examples=15)
@given(structured=structured_models(), seed=st.integers(0, 2**31))
def test_kl_and_active_units_follow_the_known_structure(structured, seed):
    (W, b, sigma), norms = structured
    params = oracle.exact_params(W, b, sigma)
    n = 4000
    x = oracle.sample(W, b, sigma, n, seed=seed)
    # Exact posterior, x ~ p(x): the posterior mean of dim i has variance v = n_i^2 / (n_i^2 + sigma^2)
    # and mean 0, and the KL of dim i is (m_i^2 - v + log(1 / (1 - v))) / 2, of expectation log(1/(1-v)) / 2.
    v = norms**2 / (norms**2 + sigma**2)
    kl = G.kl_per_dim(params, x)
    units = G.active_units(params, x)
    dead = norms == 0
    assert bool((kl[dead] == 0).all()) and bool((units.variance[dead] == 0).all())
    # Standard errors: Var(m^2) = 2 v^2 for Gaussian m, so the KL average has se v / sqrt(2 n) and the
    # sample variance has se v sqrt(2 / n).
    assert bool(((kl - 0.5 * torch.log(1 / (1 - v))).abs() <= Z * v / math.sqrt(2 * n) + 1e-12).all())
    assert bool(((units.variance - v).abs() <= Z * v * math.sqrt(2 / n) + 1e-12).all())
    assert units.count == int(((v > 0.01) & ~dead).sum())
    torch.testing.assert_close(kl.sum(), funcvae.elbo(params, x, seed=0)["kl"].mean())


@settings(max_examples=10)
@given(structured=structured_models(), seed=st.integers(0, 2**31))
def test_mutual_information_is_zero_without_information_and_at_most_log_n(structured, seed):
    (W, b, sigma), _ = structured
    n = 300
    x = oracle.sample(W, b, sigma, n, seed=seed)
    exact = oracle.exact_params(W, b, sigma)
    blind_encoder = oracle.exact_encoder(W, b, sigma)
    blind_encoder["mean"]["kernel"] = torch.zeros_like(blind_encoder["mean"]["kernel"])  # ignores x
    blind = oracle.vae_params(W, b, sigma, blind_encoder)
    assert abs(float(G.mutual_information(blind, x, seed=seed))) <= 1e-12
    draws = torch.stack([G.mutual_information(exact, x, seed=seed + r, chunk_size=64) for r in range(8)])
    assert bool((draws <= math.log(n) + 1e-12).all())
    mi, se = draws.mean(), draws.std() / math.sqrt(len(draws))
    assert float(mi) > Z * float(se)


def test_mutual_information_saturates_at_log_n_for_a_perfect_code():
    # Tiny posterior variances make every z_i identify its own x_i: the estimate reaches log N.
    W, b, sigma = oracle.linear_gaussian(0, features=3, latent=2, sigma=1e-3, norms=[2.0, 2.0])
    x = oracle.sample(W, b, sigma, 50, seed=1)
    torch.testing.assert_close(G.mutual_information(oracle.exact_params(W, b, sigma), x, seed=0),
                               torch.tensor(math.log(50), dtype=F64))


def test_latent_information_marks_a_saturated_estimate_and_bounds_the_prior_gap():
    W, b, sigma = oracle.linear_gaussian(0, features=3, latent=2, sigma=1e-3, norms=[2.0, 2.0])
    x = oracle.sample(W, b, sigma, 50, seed=1)
    perfect = oracle.exact_params(W, b, sigma)
    kl = float(funcvae.elbo(perfect, x, seed=0)["kl"].mean())
    info = G.latent_information(perfect, x, seed=0, kl=kl)
    assert info["mi_saturated"] and info["mi_ceiling"] == pytest.approx(math.log(50))
    # The prior gap is E KL - I(x;z) with I(x;z) a lower bound: an upper bound, large while saturated.
    assert info["aggregate_kl"] == pytest.approx(kl - info["mutual_information"]) and info["aggregate_kl"] > 1
    blind_encoder = oracle.exact_encoder(W, b, sigma)
    blind_encoder["mean"]["kernel"] = torch.zeros_like(blind_encoder["mean"]["kernel"])
    blind = G.latent_information(oracle.vae_params(W, b, sigma, blind_encoder), x, seed=0, kl=0.5)
    assert not blind["mi_saturated"] and blind["aggregate_kl"] == pytest.approx(0.5)


def test_mutual_information_does_not_depend_on_the_chunk_size():
    W, b, sigma = oracle.linear_gaussian(2, features=4, latent=2, sigma=0.5)
    params, x = oracle.exact_params(W, b, sigma), oracle.sample(W, b, sigma, 100, seed=0)
    torch.testing.assert_close(G.mutual_information(params, x, seed=3, chunk_size=7),
                               G.mutual_information(params, x, seed=3, chunk_size=100))


# A VampPrior model ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vamp_and_twin():
    """A VampPrior model and the N(0, I) model with the same encoder and decoder (the same seed draws the
    user tree from the same stream; the pseudo-inputs come from a stream of their own)."""
    vamp = funcvae.init(seed=0, hidden=(32,), prior="vamp", pseudo_inputs=10)
    twin = funcvae.init(seed=0, hidden=(32,))
    leaves = funcvae.leaves_by_path(vamp)
    assert leaves["prior/pseudo_inputs"].shape == (10, 784)
    assert all(torch.equal(leaves[path], t) for path, t in funcvae.leaves_by_path(twin).items())
    return vamp, twin


def test_kl_per_dim_is_refused_for_the_vamp_prior_and_says_why(vamp_and_twin, fashion):
    vamp, _ = vamp_and_twin
    with pytest.raises(ValueError, match=r"does not factorise over latent dimensions, so a KL per dimension is not "
                                         r"defined for it; its total KL is funcvae\.elbo"):
        G.kl_per_dim(vamp, fashion[1][:20])


def test_active_units_and_mutual_information_work_for_the_vamp_prior(vamp_and_twin, fashion):
    # Both describe the encoder alone: the same numbers as for the twin with the N(0, I) prior.
    vamp, twin = vamp_and_twin
    x = fashion[1][:200]
    units, twin_units = G.active_units(vamp, x), G.active_units(twin, x)
    assert units.variance.shape == (20,) and units.count == twin_units.count
    assert torch.equal(units.variance, twin_units.variance)
    mi = G.mutual_information(vamp, x, seed=3)
    assert torch.equal(mi, G.mutual_information(twin, x, seed=3))
    assert 0.0 <= float(mi) <= math.log(200) + 1e-6


def test_the_vamp_elbo_has_a_monte_carlo_kl_consistent_with_the_importance_weights(vamp_and_twin, fashion):
    vamp, _ = vamp_and_twin
    x, n, r = fashion[1][:10], 10, 500
    a, b = funcvae.elbo(vamp, x, seed=1), funcvae.elbo(vamp, x, seed=2)
    assert not torch.equal(a["kl"], b["kl"])  # no closed form: the KL is sampled with the reconstruction
    torch.testing.assert_close(a["loss"], a["recon"] + a["kl"])
    # r independent single-sample estimates per example of -ELBO, and of its KL, from the public elbo ...
    draws = funcvae.elbo(vamp, x.repeat(r, 1, 1, 1), seed=3)
    loss, kl = draws["loss"].reshape(r, n), draws["kl"].reshape(r, n)
    loss_mean, loss_se = loss.mean(0), loss.std(0) / math.sqrt(r)
    # ... against -log w = log q(z|x) - log p(z) - log p(x|z), whose mean is -ELBO too (independent noise).
    lw = funcvae.importance.log_weights(vamp, x, k=r, seed=4)
    lw_se = lw.std(1) / math.sqrt(r)
    assert bool(((loss_mean + lw.mean(1)).abs() <= Z * torch.sqrt(loss_se**2 + lw_se**2)).all())
    # KL(q || p) >= 0 in expectation, and -ELBO >= -IWAE_k, draw by draw and against the public elbo.
    assert bool((kl.mean(0) >= -Z * kl.std(0) / math.sqrt(r)).all())
    bound = funcvae.iwae(vamp, x, k=r, seed=4)
    assert bool((-bound <= -lw.mean(1) + 1e-4).all())
    assert bool((-bound <= loss_mean + Z * loss_se).all())
    # k samples in one call average k such estimates: the same expectation.
    many = funcvae.elbo(vamp, x, seed=5, k=r)["loss"]
    assert bool(((many - loss_mean).abs() <= Z * math.sqrt(2) * loss_se).all())


# Verdicts ------------------------------------------------------------------------------------------------


def record(epoch, loss, kl=20.0, val_loss=None, val_kl=None):
    recon = loss - kl
    val = {"val_recon": None, "val_kl": None, "val_loss": None}
    if val_loss is not None:
        val_kl = kl if val_kl is None else val_kl
        val = {"val_recon": val_loss - val_kl, "val_kl": val_kl, "val_loss": val_loss}
    return {"epoch": epoch, "recon": recon, "kl": kl, "loss": loss, **val, "beta": 1.0, "seconds": 1.0}


def healthy():
    """A converging run: both losses fall, fast then slowly, with a little noise."""
    train = [300 - 60 * (1 - math.exp(-e / 3)) + 0.2 * (-1) ** e for e in range(1, 13)]
    val = [t + 4 for t in train]
    return [record(e, t, val_loss=v) for e, (t, v) in enumerate(zip(train, val), start=1)]


def names(findings):
    return [f["name"] for f in findings]


def test_a_healthy_run_has_no_findings():
    history = healthy()
    assert G.diagnose(history) == []
    assert "No problems found" in G.format_report([], history)


def test_a_real_short_run_shows_no_collapse_and_no_overfitting(fashion):
    train, test = fashion
    params, history = funcvae.fit(funcvae.init(seed=0, hidden=(64,), latent=8), train[:1024], epochs=3,
                                  val_data=test[:500], seed=0, progress=False,
                                  compile=False)
    findings = G.diagnose(history, kl_per_dim=G.kl_per_dim(params, test[:500]),
                          active=G.active_units(params, test[:500]))
    assert not {"posterior collapse", "overfitting"} & set(names(findings))


def _raises_beta(advice):
    """Sentences that recommend a larger KL weight without a negation."""
    sentences = re.split(r"(?<=[.!?])\s+", advice)
    push = re.compile(r"\b(raise|raising|increase|increasing|larger|higher)\b.*\b(beta|kl weight)\b", re.I)
    return [s for s in sentences if push.search(s) and not re.search(r"\bnot\b", s, re.I)]


def test_collapse_is_found_from_a_vanishing_kl_and_never_advises_a_larger_beta():
    history = [record(e, 300 - e, kl=kl) for e, kl in enumerate([3.0, 0.5, 0.05, 0.02], start=1)]
    (finding,) = G.diagnose(history)
    assert finding["name"] == "posterior collapse" and finding["severity"] == "error"
    assert finding["evidence"]["kl"] == 0.02 and finding["evidence"]["epoch"] == 4
    advice = finding["advice"].lower()
    assert "warm-up" in advice and "free bits" in advice and "weaker decoder" in advice
    assert "do not raise the kl weight beta" in advice
    assert _raises_beta(finding["advice"]) == []
    assert _raises_beta("Increase beta to 4.") != []  # the check itself catches the bad advice


def test_collapse_advice_for_a_prior_without_a_per_dimension_kl_leaves_out_free_bits():
    # Free bits floor the KL of each latent dimension; a VampPrior has no such KL, and fit refuses them for it.
    history = [record(e, 300 - e, kl=kl) for e, kl in enumerate([3.0, 0.5, 0.05, 0.02], start=1)]
    (finding,) = G.diagnose(history, factorised_prior=False)
    advice = finding["advice"].lower()
    assert "free bits" not in advice and "warm-up" in advice and "weaker decoder" in advice
    assert _raises_beta(finding["advice"]) == []


def test_collapse_is_found_from_too_few_active_units_and_from_real_collapsed_params(fashion):
    _, test = fashion
    history = [record(e, 300 - e, kl=5.0) for e in range(1, 4)]
    few = G.ActiveUnits(1, torch.tensor([0.5] + [0.0] * 19))
    (finding,) = G.diagnose(history, active=few)
    assert finding["name"] == "posterior collapse"
    assert finding["evidence"]["active_units"] == 1 and finding["evidence"]["latent"] == 20
    # An encoder that outputs the prior for every input: KL exactly 0, no active unit.
    params = funcvae.init(seed=0, hidden=(16,), latent=6)
    enc = params.tree["encoder"]
    dead = {name: {k: torch.zeros_like(t) for k, t in enc[name].items()} for name in ("mean", "logvar")}
    params = funcvae.Params(params.model, {"encoder": {**enc, **dead}, "decoder": params.tree["decoder"]})
    kl, units = G.kl_per_dim(params, test[:100]), G.active_units(params, test[:100])
    assert torch.equal(kl, torch.zeros(6)) and units.count == 0
    assert "posterior collapse" in names(G.diagnose(healthy(), kl_per_dim=kl, active=units))
    assert "posterior collapse" not in names(G.diagnose(healthy(), active=G.ActiveUnits(2, torch.ones(20))))


def test_overfitting_reports_where_the_held_out_loss_turned():
    train = [300, 280, 270, 264, 260, 257, 255, 253]
    val = [305, 290, 284, 282, 283, 285, 288, 292]
    history = [record(e, t, val_loss=v) for e, (t, v) in enumerate(zip(train, val), start=1)]
    (finding,) = G.diagnose(history)
    assert finding["name"] == "overfitting"
    ev = finding["evidence"]
    assert (ev["best_epoch"], ev["best_val_loss"], ev["rise_began_epoch"]) == (4, 282, 5)
    assert ev["val_rise"] == 10 and ev["train_loss_drop"] == 11
    assert "epochs=4" in finding["advice"] and "early" in finding["advice"].lower()
    assert "282" in G.format_report([finding])


@pytest.mark.parametrize(
    "val, why",
    [([305, 290, 284, 282, 281, 283], "one epoch up is within the patience"),
     ([305, 290, 284, 282, 282.1, 282.2], "a rise below 0.1% of the loss"),
     ([305, 290, 284, 282, 281, 280], "still falling")],
)
def test_no_overfitting_without_a_lasting_rise(val, why):
    train = [300, 280, 270, 264, 260, 257]
    history = [record(e, t, val_loss=v) for e, (t, v) in enumerate(zip(train, val), start=1)]
    assert "overfitting" not in names(G.diagnose(history)), why


def test_non_finite_losses_and_spikes_are_an_unstable_run():
    history = healthy()
    history[6] = {**history[6], "loss": float("nan"), "recon": float("nan")}
    (finding,) = G.diagnose(history)
    assert finding["name"].startswith("unstable") and finding["evidence"]["epochs"] == [7]
    assert "learning rate" in finding["advice"] and "clip" in finding["advice"]

    history = healthy()
    history[7] = {**history[7], "loss": history[6]["loss"] + 15.0}
    (finding,) = G.diagnose(history)
    assert finding["name"] == "unstable run: loss spikes" and finding["evidence"]["epochs"] == [8]
    assert "learning rate" in finding["advice"] and "clip" in finding["advice"]
    report = G.format_report([finding], history)
    assert "loss spikes" in report and "epochs=[8]" in report


def test_diagnose_needs_a_history():
    with pytest.raises(ValueError, match="empty"):
        G.diagnose([])
    with pytest.raises(TypeError, match=r"diagnose\(histories\[i\]\)"):
        G.diagnose([healthy(), healthy()])  # fit's histories of a stack of models
