"""The disentanglement benchmark's table: each setting's mean of each score over its seeds, with the spread
(min to max), in the order of its settings (the figures are for benchmarks/results/, never asserted here)."""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import disentanglement as bench  # noqa: E402


def test_the_table_gives_each_settings_mean_and_spread_over_its_seeds():
    rows = [{"setting": name, "seed": seed, "mig": 0.1 * i + 0.01 * seed, "dci_disentanglement": 0.2 + 0.03 * seed,
             "factor_vae": 0.5 + 0.1 * i, "loss": 40.0 + i + seed}
            for i, (name, _) in reversed(list(enumerate(bench.SETTINGS))) for seed in (2, 0, 1)]
    lines = bench.table(rows).splitlines()
    assert lines[0].startswith("| setting | seeds | MIG |") and len(lines) == 2 + len(bench.SETTINGS)
    for line, (i, (name, _)) in zip(lines[2:], enumerate(bench.SETTINGS)):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:2] == [name, "3"]
        mig = [0.1 * i + 0.01 * s for s in range(3)]
        assert cells[2] == f"{statistics.mean(mig):.3f} ({min(mig):.3f} to {max(mig):.3f})"
        assert cells[3] == "0.230 (0.200 to 0.260)"
        assert cells[5] == f"{41 + i:.1f} ({40 + i:.1f} to {42 + i:.1f})"
