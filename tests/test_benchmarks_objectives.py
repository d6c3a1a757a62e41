"""The objectives benchmark's report on a quick run (tiny data, eager steps): every run has its row, finite
numbers and its paired comparison (the figures are for benchmarks/results/, never asserted here)."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import objectives  # noqa: E402

MODEL = objectives.DEFAULT_MODEL


@pytest.mark.skipif(not MODEL.is_file(), reason="needs the custom model example")
def test_a_quick_run_reports_every_objective_and_prior(tmp_path, capsys):
    report = objectives.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    rows = {(r["objective"], r["k"], r["prior"]): r for r in saved["rows"]}
    assert list(rows) == [tuple(run) for run in objectives.RUNS]
    quick = objectives.Settings(**objectives.QUICK)
    for r in rows.values():
        assert r["epochs"] == quick.epochs and len(r["history"]) == quick.epochs
        assert (r["nll_n"], r["neg_elbo_n"], r["latent"]) == (quick.iwae_n, quick.n_test, 50)
        assert all(math.isfinite(r[key]) and r[key] > 0 for key in ("nll", "nll_se", "neg_elbo", "neg_elbo_se"))
        assert 0 <= r["active_units"] <= r["latent"]
    pairs = [(d["run"], d["against"]) for d in saved["differences"]]
    assert pairs == [(a.name, b.name) for a, b in objectives.PAIRS]
    assert saved["machine"]["processor"] and saved["command"].startswith("python benchmarks/objectives.py --quick")
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "results.txt").read_text()
    lines = printed.splitlines()
    rule = next(i for i, line in enumerate(lines) if line and set(line) == {"-"})
    body = lines[rule + 1: rule + 1 + len(objectives.RUNS)]
    assert [line.split()[:4] for line in body] == [[r.objective, str(r.k), r.prior, "1"] for r in objectives.RUNS]
