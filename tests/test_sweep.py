"""Rate-distortion sweeps: the stacked sweep trains like separate fits, a larger beta buys a lower rate with a
higher distortion on real data, the scores are funcvae.elbo's, bad betas are refused before any work."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

import funcvae
from funcvae import sweep


def test_rate_falls_and_distortion_rises_as_beta_grows(fashion):
    train, test = fashion
    betas = [0.1, 1.0, 10.0]  # spread widely: the order is then far outside the noise of a 2-epoch run
    params = funcvae.init(seed=0, hidden=(32,), latent=4)
    rows = sweep.rate_distortion(params, train[:2000], betas=betas, epochs=2, val_data=test[:500], seed=0,
                                 compile=False, progress=False)
    assert [r["beta"] for r in rows] == betas
    rate, distortion = [r["rate"] for r in rows], [r["distortion"] for r in rows]
    assert rate == sorted(rate, reverse=True) and len(set(rate)) == 3, rate
    assert distortion == sorted(distortion) and len(set(distortion)) == 3, distortion
    for r in rows:
        assert all(math.isfinite(r[k]) and r[k] >= 0 for k in ("rate", "rate_se", "distortion", "distortion_se",
                                                                "loss", "loss_se"))
        assert r["loss"] == pytest.approx(r["rate"] + r["distortion"], rel=1e-6)  # scored at beta = 1
        assert r["elbo"] == -r["loss"]
        assert isinstance(r["active_units"], int) and 0 <= r["active_units"] <= r["latent"] == 4
        assert [h["epoch"] for h in r["history"]] == [1, 2] and r["history"][-1]["beta"] == pytest.approx(r["beta"])
    # The largest beta pushes q(z|x) towards the prior: it keeps no more active units than the smallest.
    assert rows[-1]["active_units"] <= rows[0]["active_units"]


def test_a_stacked_sweep_equals_separate_fits_per_beta(fashion):
    train, test = fashion
    params = funcvae.init(seed=1, hidden=(16,), latent=3)
    settings = dict(epochs=1, batch_size=100, seed=2, lr=2e-3, compile=False, progress=False)
    rows = sweep.rate_distortion(params, train[:300], betas=[0.5, 2.0], val_data=test[:100], **settings)
    for row in rows:
        model, history = funcvae.fit(params, train[:300], beta=row["beta"], val_data=test[:100], **settings)
        want = sweep.score(model, test[:100], seed=2)
        for key in ("rate", "distortion", "loss", "rate_se", "distortion_se", "loss_se"):
            assert row[key] == pytest.approx(want[key], rel=1e-4), key
        assert row["active_units"] == want["active_units"]
        for a, b in zip(row["history"], history, strict=True):
            for key in ("recon", "kl", "loss", "val_recon", "val_kl", "val_loss", "beta"):
                assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_a_sweep_with_an_optimizer_and_free_bits_equals_separate_fits(fashion):
    train, test = fashion
    params = funcvae.init(seed=1, hidden=(16,), latent=3)
    settings = dict(epochs=1, batch_size=100, seed=2, compile=False, progress=False)
    rows = sweep.rate_distortion(params, train[:300], betas=[0.5, 2.0], val_data=test[:100],
                                 optimizer=funcvae.optim.sgd(0.05, momentum=0.9), free_bits=1.0, **settings)
    for row in rows:
        objective = funcvae.objectives.free_bits(funcvae.objectives.elbo(row["beta"]), 1.0)
        model, history = funcvae.fit(params, train[:300], objective=objective, optimizer=funcvae.optim.sgd(0.05, 0.9),
                                     val_data=test[:100], **settings)
        want = sweep.score(model, test[:100], seed=2)
        for key in ("rate", "distortion", "loss", "rate_se", "distortion_se", "loss_se"):
            assert row[key] == pytest.approx(want[key], rel=1e-4), key
        for a, b in zip(row["history"], history, strict=True):
            for key in ("recon", "kl", "loss", "val_recon", "val_kl", "val_loss", "beta"):
                assert a[key] == pytest.approx(b[key], rel=1e-4), key
    # The floor binds (early in training each dimension carries less than 1 nat): without it, training differs.
    _, plain = funcvae.fit(params, train[:300], beta=0.5, optimizer=funcvae.optim.sgd(0.05, 0.9), val_data=test[:100],
                           **settings)
    assert rows[0]["history"][0]["kl"] > plain[0]["kl"] * 1.01


def test_a_sweep_takes_lr_or_an_optimizer_not_both(monkeypatch):
    monkeypatch.setattr(sweep, "fit", lambda *a, **k: pytest.fail("fit was called"))
    with pytest.raises(ValueError, match="either lr .* or optimizer=, not both"):
        sweep.rate_distortion(funcvae.init(seed=0, hidden=(8,), latent=2), torch.rand(8, 784), betas=[0, 1],
                              epochs=1, val_data=torch.rand(4, 784), lr=1e-3, optimizer=funcvae.optim.adam(1e-3))


def test_score_is_the_elbo_at_beta_1_with_its_standard_errors(fashion):
    params = funcvae.init(seed=0, hidden=(16,), latent=3)
    x = fashion[1][:50]
    got = sweep.score(params, x, seed=7)
    terms = funcvae.elbo(params, x, seed=7, beta=1.0)
    for key, term in (("rate", "kl"), ("distortion", "recon"), ("loss", "loss")):
        values = terms[term].double()
        assert got[key] == pytest.approx(float(values.mean()), rel=1e-9)
        assert got[f"{key}_se"] == pytest.approx(float(values.std() / math.sqrt(50)), rel=1e-9)
    assert got["active_units"] == funcvae.diagnostics.active_units(params, x).count


def test_mean_se():
    assert sweep.mean_se(torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx((2.5, np.std([1, 2, 3, 4], ddof=1) / 2))
    assert sweep.mean_se(torch.tensor([3.0])) == (3.0, 0.0)


@pytest.mark.parametrize("betas, match", [
    ([], "at least 2 betas"),
    ([1.0], "at least 2 betas"),
    ([1.0, 0.5, 1.0], r"distinct, got \[1.0\] more than once"),
    ([1, 1.0], "distinct"),
    ([-0.5, 1.0], "beta must be a finite number >= 0, got -0.5"),
    ([float("nan"), 1.0], "beta must be a finite number >= 0, got nan"),
    ([float("inf"), 1.0], "beta must be a finite number >= 0"),
    ([True, 2.0], "beta must be a finite number >= 0, got True"),
    (["1", 2.0], "beta must be a finite number >= 0"),
    ("12", "betas must be a sequence"),
    (1.0, "betas must be a sequence"),
])
def test_bad_betas_are_refused_before_any_work(monkeypatch, betas, match):
    monkeypatch.setattr(sweep, "fit", lambda *a, **k: pytest.fail("fit was called"))
    with pytest.raises(ValueError, match=match):
        sweep.rate_distortion(funcvae.init(seed=0, hidden=(8,), latent=2), torch.rand(8, 784), betas=betas,
                              epochs=1, val_data=torch.rand(4, 784))


def test_a_sweep_needs_held_out_data(monkeypatch):
    monkeypatch.setattr(sweep, "fit", lambda *a, **k: pytest.fail("fit was called"))
    with pytest.raises(ValueError, match="val_data is required"):
        sweep.rate_distortion(funcvae.init(seed=0, hidden=(8,), latent=2), torch.rand(8, 784), betas=[0, 1],
                              epochs=1, val_data=None)


def test_check_betas_accepts_numpy_and_returns_floats():
    assert sweep.check_betas(np.array([0, 0.5, 2])) == [0.0, 0.5, 2.0]
    assert sweep.check_betas((0, 1)) == [0.0, 1.0]


ROWS = [{"beta": b, "rate": r, "distortion": d, "loss": r + d, "active_units": a, "latent": 4}
        for b, r, d, a in ((0.1, 17.88, 473.02, 4), (1.0, 7.69, 480.06, 4), (10.0, 0.27, 505.59, 2))]


def test_the_plot_has_its_size_and_is_drawn_for_any_order(tmp_path):
    path = sweep.rate_distortion_plot(ROWS[::-1], tmp_path / "sub" / "rd.png")
    with Image.open(path) as image:
        assert image.size == (600, 450)
    with Image.open(sweep.rate_distortion_plot(ROWS, tmp_path / "small.png", dpi=50)) as image:
        assert image.size == (300, 225)
    with pytest.raises(ValueError, match="nothing to plot"):
        sweep.rate_distortion_plot([], tmp_path / "none.png")


def test_the_table_shows_each_row_aligned():
    lines = sweep.format_table(ROWS).splitlines()
    assert lines[0].split(" | ") == [c.rjust(max(len(c), 8)) for c in sweep.COLUMNS[:-1]]  # no FID without it
    for line, row in zip(lines[1:], ROWS, strict=True):
        cells = [c.strip() for c in line.split(" | ")]
        assert len(line) == len(lines[0])
        assert float(cells[0]) == row["beta"]
        assert [float(c) for c in cells[1:4]] == pytest.approx([row["rate"], row["distortion"], row["loss"]], abs=5e-3)
        assert cells[4] == f"{row['active_units']}/4"
    with_fid = sweep.format_table([{**r, "fid": 100.0 + i} for i, r in enumerate(ROWS)]).splitlines()
    assert with_fid[0].split(" | ")[-1] == "FID samples"
    assert [line.split(" | ")[-1].strip() for line in with_fid[1:]] == [f"{100.0 + i:.2f}" for i in range(len(ROWS))]
