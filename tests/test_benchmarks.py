"""The speed benchmark's report machinery on a quick run of its cheapest section (its figures are for
benchmarks/results/, never asserted here)."""

import json
import sys
from pathlib import Path

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
