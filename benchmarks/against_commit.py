"""This checkout's training step against another commit's, side by side: the ``step`` section of
``elbo_speed.py`` run alternately in each tree, round after round, in one invocation, so that both sides see
the same machine state. The figure compared is each side's own ratio (its compiled step over its eager
``nn.Module`` baseline, measured in the same process), which is what a change to funcvae can make better or
worse; its absolute milliseconds are printed beside it.

    git worktree add ../before <commit>
    python benchmarks/against_commit.py ../before --rounds 3 --json benchmarks/results/against_commit.json

Each round runs ``python3 benchmarks/elbo_speed.py --only step`` once per side (the order alternates from round
to round), with a fresh process each time: a process compiles its own steps, so the first round also warms
the inductor cache. Reported: per side and variant, the median over rounds of the ratio and of ms/step, and
their range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
VARIANTS = ("baseline nn.Module eager", "funcvae compiled", "funcvae compiled, no guard", "funcvae eager")


def run_side(tree: Path, extra: list[str]) -> dict:
    """One ``elbo_speed.py --only step`` in ``tree``: {variant: (ratio, ms)} and the machine it ran on."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "step.json"
        subprocess.run([sys.executable, "benchmarks/elbo_speed.py", "--only", "step", "--json", str(out), *extra],
                       cwd=tree, check=True, stdout=subprocess.DEVNULL)
        report = json.loads(out.read_text())
    rows = {r["name"]: (r["ratio"], r["median_ms"]) for r in report["sections"]["step"]["rows"]}
    return {"rows": rows, "machine": report["machine"]}


def summarise(samples: list[dict]) -> dict:
    """Median and range over rounds of each variant's ratio and ms."""
    out = {}
    for name in VARIANTS:
        pairs = [s["rows"][name] for s in samples if name in s["rows"]]
        if not pairs:
            continue
        ratios, ms = [p[0] for p in pairs], [p[1] for p in pairs]
        out[name] = {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "ms_median": statistics.median(ms), "ms_min": min(ms), "ms_max": max(ms), "ratios": ratios}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="this checkout's training step against another commit's")
    p.add_argument("other", type=Path, help="a worktree of the other commit")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="pass --quick to elbo_speed.py (a smoke run)")
    args = p.parse_args(argv)
    extra = ["--quick"] if args.quick else []
    sides = {"this": HERE, "other": args.other.resolve()}
    samples = {name: [] for name in sides}
    began = time.time()
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            samples[name].append(run_side(sides[name], extra))
            print(f"round {r + 1}/{args.rounds} {name}: " + ", ".join(
                f"{k} {v[0]:.3f}x {v[1]:.2f} ms" for k, v in samples[name][-1]["rows"].items() if k in VARIANTS),
                flush=True)
    commits = {name: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,
                                    text=True).stdout.strip() for name, tree in sides.items()}
    summary = {name: summarise(samples[name]) for name in sides}
    print(f"\n{samples['this'][0]['machine']['processor']}, torch {samples['this'][0]['machine']['torch']}; "
          f"{args.rounds} rounds, medians (range); ratio = ms over the eager nn.Module baseline of the same process")
    print(f"{'variant':28} | {'this ratio':>20} | {'other ratio':>20} | {'this ms':>8} | {'other ms':>8}")
    for name in VARIANTS:
        if name not in summary["this"] or name not in summary["other"]:
            continue
        a, b = summary["this"][name], summary["other"][name]
        print(f"{name:28} | {a['ratio_median']:6.3f} ({a['ratio_min']:.3f}-{a['ratio_max']:.3f}) | "
              f"{b['ratio_median']:6.3f} ({b['ratio_min']:.3f}-{b['ratio_max']:.3f}) | {a['ms_median']:8.2f} | "
              f"{b['ms_median']:8.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "commits": commits, "rounds": args.rounds,
                                         "machine": samples["this"][0]["machine"], "summary": summary,
                                         "seconds": time.time() - began}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
