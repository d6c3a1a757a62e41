"""The memory-map benchmark's machinery on a tiny file (its figures are for benchmarks/results/, never
asserted here)."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import memmap  # noqa: E402


def test_the_file_tiles_fashion_mnist_and_a_child_reports_its_memory(tmp_path, capsys):
    path = tmp_path / "images.npy"
    size = memmap.write_images(path, 300)
    x = np.load(path, mmap_mode="r")
    assert x.shape == (300, 1, 28, 28) and x.dtype == np.uint8 and size == path.stat().st_size > 300 * 784
    memmap.main(["child", "memmap", str(path), "--eager"])
    child = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert child["baseline_mb"] > 0 and child["peak_mb"] >= child["opened_mb"] >= 0 and child["epoch_s"] > 0


def test_the_report_has_both_variants_and_the_target(tmp_path, monkeypatch, capsys):
    # The children in this process (eager), as run_child would start them.
    monkeypatch.setattr(memmap, "run_child", lambda variant, path, eager: memmap.child(variant, path, False))
    out = tmp_path / "memmap.json"
    memmap.main(["--n", "200", "--eager", "--memory-only", "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"memmap", "in memory"} and report["machine"]["processor"]
    assert report["command"] == f"python benchmarks/memmap.py --n 200 --eager --memory-only --json {out}"
    assert all("epoch_s" not in row and row["peak_above_baseline_mb"] >= 0 for row in report["variants"].values())
    (target,) = report["targets"]
    assert target["pass"] == (target["value"] < memmap.TARGET)
    assert "memmap peak RSS above the baseline" in capsys.readouterr().out
