"""The speed benchmark's report machinery on a quick run of its cheapest section (its figures are for
benchmarks/results/, never asserted here)."""

import json
import os
import resource
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import elbo_speed  # noqa: E402


def test_the_gemm_section_reports_a_peak_per_product_dtype(tmp_path, capsys):
    out = tmp_path / "speed.json"
    elbo_speed.main(["--quick", "--only", "gemm", "--json", str(out)])
    report = json.loads(out.read_text())
    peaks = report["sections"]["gemm"]["peaks"]
    assert set(peaks) == {"fp32", "bf16"} and all(p["gflops"] > 0 for p in peaks.values())
    assert peaks["bf16"]["kernel"] == "torch.mm bf16"
    assert report["machine"]["processor"] and report["settings"]["device"] == "cpu"
    printed = capsys.readouterr().out
    assert "peak fp32 GEMM" in printed and "peak bf16 GEMM" in printed


def test_fit_speed_children_report_epochs_and_memory(capsys):
    import fit_speed
    fit_speed.main(["child", "epochs", "--n", "300", "--epochs", "2", "--eager"])
    epochs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(epochs["epoch_s"]) == 2 and all(s > 0 for s in epochs["epoch_s"])
    fit_speed.main(["child", "memory", "--n", "300", "--eager"])
    memory = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Linux keeps a process's RSS in per-CPU counters and /proc reads their approximate sum, off by up to a
    # counter batch (max(32, 2 x CPUs) pages) on each CPU: a peak read after the mark can sit that far below it.
    cpus = os.cpu_count()
    slack_mb = cpus * max(32, 2 * cpus) * resource.getpagesize() / 2**20
    assert memory["data_mb"] == 300 * 784 / 2**20 and memory["before_mb"] > 0
    assert memory["peak_rss_mb"] >= memory["before_mb"] - slack_mb, (memory, slack_mb)


def _rows(**named):
    return {"rows": [{"name": k, **v} for k, v in named.items()]}


def test_the_new_targets_read_their_sections(monkeypatch):
    results = {
        "step": _rows(**{"baseline nn.Module eager": {"median_s": 1.0}, "funcvae eager": {"median_s": 1.4},
                         "funcvae compiled": {"median_s": 0.7}, "funcvae compiled bf16 products": {"median_s": 0.4},
                         "jax jit": {"median_s": 0.66}}),
        "epoch": _rows(**{"fit epoch": {"ratio": 1.2}}),
        "contention": _rows(**{"shared cores": {"median_s": 2.0}, "shared cores, busy": {"median_s": 3.0},
                               "fixed threads": {"median_s": 2.0}}),
        "mkl-mode": _rows(**{"eager, strict MKL": {"median_s": 2.1}, "eager, MKL's default": {"median_s": 2.0},
                             "compiled, strict MKL": {"median_s": 1.0}, "compiled, MKL's default": {"median_s": 1.0}}),
        "cold-start": _rows(**{"first step, empty compile cache": {"median_s": 12.0},
                               "first step, warm compile cache": {"median_s": 1.5}}),
        "memory": _rows(**{"fit on float32 data": {"peak_rss_mb": 900.0, "data_mb": 180.0},
                           "fit on uint8 data": {"peak_rss_mb": 700.0, "data_mb": 45.0}}),
    }
    rows = elbo_speed.targets(results, elbo_speed.torch.device("cpu"), None)
    got = {t["target"]: (t["value"], t["pass"]) for t in rows}
    assert got["eager step <= 1.5x the eager nn.Module step (batch 128)"] == (1.4, True)
    assert got["fit's epoch <= 1.1x (steps x the compiled step's time)"] == (1.2, False)
    assert got["epoch beside one busy process <= 1.7x the epoch alone"] == (1.5, True)
    assert got["epoch alone, shared cores <= 1.05x fixed threads (the unloaded case not slowed)"] == (1.0, True)
    assert got["eager epoch, strict MKL <= 1.05x MKL's default mode"] == (1.05, True)
    assert got["compiled epoch, strict MKL <= 1.05x MKL's default mode"] == (1.0, True)
    assert got["first step within 8 s of fit starting, empty compile cache"] == (12.0, False)
    assert got["first step within 2 s of fit starting, warm compile cache"] == (1.5, True)
    assert got["uint8 data saves >= 3/4 of the float32 set's size in peak RSS"] == (200.0 / 180.0, True)
    # JAX's step: level on an Intel CPU, within 10% elsewhere; bf16 judged only where AMX makes it pay.
    for vendor, amx, goal in (("GenuineIntel", True, 1.0), ("AuthenticAMD", False, 1.1)):
        monkeypatch.setattr(elbo_speed.funcvae._runtime.gemm, "cpu_vendor", lambda: vendor)
        monkeypatch.setattr(elbo_speed.torch.cpu, "get_capabilities", lambda: {"amx_bf16": amx})
        got = {t["target"]: t for t in elbo_speed.targets(results, elbo_speed.torch.device("cpu"), None)}
        jax = got[f"compiled step <= {goal}x JAX jit (batch 128)"]
        assert jax["value"] == pytest.approx(0.7 / 0.66) and jax["pass"] is (goal == 1.1)
        bf16 = got["compiled step, bf16 products <= 0.6x fp32 (a CPU with AMX)"]
        assert (bf16["value"], bf16["pass"]) == ((pytest.approx(0.4 / 0.7), True) if amx else (None, None))
        assert amx or "no AMX" in bf16["why_not_measured"]
