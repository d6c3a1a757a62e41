"""Data bigger than memory: the peak resident memory and the epoch time of ``fit`` on a uint8 .npy file
memory-mapped (``np.load(path, mmap_mode="r")``, whose batches fit reads from the file) against the same file
loaded into memory (``np.load(path)``).

What it measures: N Fashion-MNIST-sized images (default 1.5 M, 1.18 GB: the 60k training images tiled) are
written as one uint8 .npy of shape (N, 1, 28, 28) into a temporary folder (so the file is in the page cache:
the disk's speed is not measured). Each variant then runs in a fresh child process: torch, funcvae and the
default MLP (``funcvae.init(seed=0)``) loaded, the step compiled (as fit does by default) by a fit on one
batch; then the baseline, the kernel's high-water mark of the process's resident memory reset to what it
holds (Linux); then the data opened and one epoch of fit (batch 128, ``scale=255``, seed 0). Reported per
variant: the peak resident memory above the baseline (the file's bytes count for the in-memory variant,
which reads them), the resident memory once the data are open, the epoch's seconds (``history``) and fit's
(the checks of the data included). Target: the memory map's peak above the baseline under 25% of the file's
size.

Run (the timings alone on the machine; memory does not depend on the load):

    python benchmarks/memmap.py --json benchmarks/results/memmap_cpu_<model>.json
    python benchmarks/memmap.py --memory-only --json ...   (no timings in the report)

Options: ``--n`` images, ``--rounds`` children per variant (their median timings; peaks: the largest),
``--eager`` (fit's eager step: a quick smoke run), ``--memory-only``, ``--json PATH``. ``python
benchmarks/memmap.py child VARIANT PATH`` is one child's run, printing one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import objectives  # noqa: E402  (benchmarks/: the machine's record)
from fit_speed import _reset_peak, _status_mb  # noqa: E402  (a process's peak resident memory)

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
VARIANTS = {"memmap": "np.load(path, mmap_mode='r')", "in memory": "np.load(path)"}
TARGET = 0.25  # the memory map's peak above the baseline, as a fraction of the file's size


def write_images(path: Path, n: int) -> int:
    """``n`` Fashion-MNIST training images, tiled in their order, as a uint8 .npy (n, 1, 28, 28) at ``path``,
    written a tile at a time; the file's size in bytes."""
    import funcvae

    images = funcvae.data.load("fashion-mnist", "train", pixels="uint8").numpy()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *images.shape[1:]))
    for start in range(0, n, len(images)):
        out[start:start + len(images)] = images[:n - start]
    out.flush()
    del out
    return path.stat().st_size


def child(variant: str, path: Path, compile: bool | None) -> dict:
    """One epoch of fit on ``path`` opened as ``variant`` says; resident memory in MiB, times in seconds."""
    import funcvae

    params = funcvae.init(seed=0)
    run = dict(batch_size=BATCH, seed=0, scale=255, progress=False, compile=compile)
    warm = np.random.default_rng(0).integers(0, 256, (BATCH, 784), dtype=np.uint8)
    funcvae.fit(params, warm, epochs=1, **run)  # the compiled step, kept by funcvae for the fit below
    baseline = _reset_peak()
    data = np.load(path, mmap_mode="r" if variant == "memmap" else None)
    opened = _status_mb("VmHWM")  # the mark, not VmRSS, whose counters the kernel may not have summed yet
    t0 = time.perf_counter()
    _, history = funcvae.fit(params, data, epochs=1, **run)
    fit_s = time.perf_counter() - t0
    return {"baseline_mb": baseline, "opened_mb": opened - baseline, "peak_mb": _status_mb("VmHWM") - baseline,
            "epoch_s": history[0]["seconds"], "fit_s": fit_s}


def run_child(variant: str, path: Path, eager: bool) -> dict:
    """One child run of this file; its JSON result."""
    args = [sys.executable, str(Path(__file__)), "child", variant, str(path)] + (["--eager"] if eager else [])
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"child {variant} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(n: int, rounds: int, eager: bool, memory_only: bool) -> dict:
    """The file written, each variant's children interleaved round by round, and their summary."""
    with tempfile.TemporaryDirectory(prefix="funcvae-memmap-") as folder:
        path = Path(folder) / "images.npy"
        size = write_images(path, n)
        runs = {v: [] for v in VARIANTS}
        for r in range(rounds):
            for variant in (VARIANTS if r % 2 == 0 else reversed(VARIANTS)):
                runs[variant].append(run_child(variant, path, eager))
    file_mb = size / 2**20
    variants = {}
    for variant, results in runs.items():
        peak = max(r["peak_mb"] for r in results)
        row = {"opened_as": VARIANTS[variant], "peak_above_baseline_mb": peak, "of_file": peak / file_mb,
               "opened_mb": max(r["opened_mb"] for r in results),
               "baseline_mb": statistics.median(r["baseline_mb"] for r in results)}
        if not memory_only:
            row.update({"epoch_s": [r["epoch_s"] for r in results], "fit_s": [r["fit_s"] for r in results],
                        "epoch_median_s": statistics.median(r["epoch_s"] for r in results),
                        "fit_median_s": statistics.median(r["fit_s"] for r in results)})
        variants[variant] = row
    mapped = variants["memmap"]["of_file"]
    targets = [{"target": f"memmap peak RSS above the baseline < {TARGET:.0%} of the file", "value": mapped,
                "pass": mapped < TARGET}]
    if not memory_only:
        ratio = variants["memmap"]["epoch_median_s"] / variants["in memory"]["epoch_median_s"]
        targets.append({"target": "memmap epoch against the in-memory epoch (ratio, reported)", "value": ratio})
    return {"file_mb": file_mb, "variants": variants, "targets": targets}


def machine() -> dict:
    """The benchmarks' record of the machine (``objectives.machine``) and numpy's version."""
    return {**objectives.machine(), "numpy": np.__version__}


def table(report: dict) -> str:
    """The report as text."""
    m, s = report["machine"], report["settings"]
    lines = [f"{m['processor']} ({m['cpu_count']} cores), torch {m['torch']}, {m['date']}",
             f"command: {report['command']}",
             f"{s['n']} images (N, 1, 28, 28) uint8, {report['file_mb']:.0f} MiB; one epoch, batch {BATCH}, "
             f"{'eager' if s['eager'] else 'compiled'} step, {s['rounds']} round(s)", ""]
    for name, row in report["variants"].items():
        timing = "" if "epoch_median_s" not in row else \
            f"  epoch {row['epoch_median_s']:.1f} s, fit {row['fit_median_s']:.1f} s"
        lines.append(f"{name:10s} peak RSS above baseline {row['peak_above_baseline_mb']:8.1f} MiB "
                     f"({row['of_file']:.1%} of the file), open {row['opened_mb']:7.1f} MiB{timing}")
    for t in report["targets"]:
        verdict = "" if "pass" not in t else f"  {'PASS' if t['pass'] else 'FAIL'}"
        lines.append(f"{t['target']}: {t['value']:.3f}{verdict}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["child"]:
        p = argparse.ArgumentParser(description="one child run of benchmarks/memmap.py")
        p.add_argument("what", choices=["child"])
        p.add_argument("variant", choices=list(VARIANTS))
        p.add_argument("path", type=Path)
        p.add_argument("--eager", action="store_true")
        args = p.parse_args(argv)
        print(json.dumps(child(args.variant, args.path, False if args.eager else None)))
        return None
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_500_000, help="images in the file (default 1.5 M, 1.18 GB)")
    p.add_argument("--rounds", type=int, default=1, help="children per variant, interleaved")
    p.add_argument("--eager", action="store_true", help="fit's eager step (a quick smoke run)")
    p.add_argument("--memory-only", action="store_true", help="leave the timings out of the report (a busy machine)")
    p.add_argument("--json", type=Path, help="write the JSON report here")
    args = p.parse_args(argv)
    report = {"command": shlex.join(["python", "benchmarks/memmap.py", *argv]), "machine": machine(),
              "settings": {"n": args.n, "rounds": args.rounds, "eager": args.eager, "batch_size": BATCH,
                           "memory_only": args.memory_only},
              **measure(args.n, args.rounds, args.eager, args.memory_only)}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report), end="")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's funcvae
    main()
