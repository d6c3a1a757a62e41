"""The README's examples, timed as a newcomer runs them: each python block in a fresh interpreter, each shell
command of funcvae's command line in turn, in a scratch folder, compiled as by default. The README promises each
under a minute on 2 cores; this prints and records each one's seconds beside that minute.

``blocks`` and ``commands`` are how tests/test_readme.py finds the same code, so what is timed is what is tested.

  python benchmarks/readme.py [--json benchmarks/results/readme_cpu_<machine>.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The README's promise for each example, in seconds on 2 cores.
MINUTE = 60.0
#: Shell steps that install rather than run funcvae: named in the README, never run here.
INSTALL = ("git clone", "cd ", "python3 -m venv", ". .venv/bin/activate", "pip install", "sudo apt-get", "apt-get",
           "python3 -m pytest")
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block of the README: its language ("python", "sh"), first line's number and text."""

    language: str
    line: int
    text: str


def blocks(path: Path = README) -> list[Block]:
    """The README's fenced python and sh blocks, in order."""
    found, language, start, lines = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = _FENCE.match(line)
        if fence and language is None:
            language, start, lines = fence.group(1), number + 1, []
        elif line.startswith("```") and language is not None:
            if language in ("python", "sh"):
                found.append(Block(language, start, "\n".join(lines) + "\n"))
            language = None
        elif language is not None:
            lines.append(line)
    return found


def commands(block: Block) -> list[tuple[int, list[str] | None, str]]:
    """A sh block's steps: ``(line number, funcvae's arguments, the step)`` for each ``python3 -m funcvae ...`` step
    and ``(line number, None, the step)`` for an install step (``INSTALL``); comments dropped, ``&&`` chains split.
    ValueError for any other step: the README runs nothing unchecked."""
    out = []
    for offset, line in enumerate(block.text.splitlines()):
        code = line.split(" #", 1)[0].strip()
        for step in filter(None, (part.strip() for part in code.split("&&"))):
            number = block.line + offset
            if step.startswith("python3 -m funcvae"):
                out.append((number, shlex.split(step)[3:], step))
            elif step.startswith(INSTALL):
                out.append((number, None, step))
            else:
                raise ValueError(f"README.md:{number}: {step!r} is neither an install step nor a funcvae command")
    return out


def expanded(words: list[str], cwd: Path) -> list[str]:
    """``words`` with each glob (a run folder's ``runs/*-mlp-seed0``) replaced by its matches in ``cwd``, as the
    shell would, once the commands before it have made them."""
    out = []
    for word in words:
        matches = sorted(str(Path(m).relative_to(cwd)) for m in glob.glob(str(cwd / word))) if "*" in word else []
        out.extend(matches or [word])
    return out


def _timed(argv: list[str], cwd: Path) -> tuple[float, int, str]:
    began = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - began, proc.returncode, proc.stderr[-2000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        os.symlink(ROOT / "examples", cwd / "examples")
        for block in blocks():
            if block.language == "python":
                steps = [(block.line, lambda text=block.text: [sys.executable, "-c", text],
                          f"python block at line {block.line}")]
            else:
                steps = [(n, lambda a=a: [sys.executable, "-m", "funcvae", *expanded(a, cwd)], s)
                         for n, a, s in commands(block) if a is not None]
            for number, command, what in steps:
                seconds, code, err = _timed(command(), cwd)
                rows.append({"line": number, "what": what, "seconds": round(seconds, 1), "exit": code})
                flag = "" if seconds <= MINUTE else "  OVER A MINUTE"
                print(f"README.md:{number:<4} {seconds:6.1f} s  exit {code}  {what[:70]}{flag}", flush=True)
                if code:
                    print(err, file=sys.stderr)
    import objectives  # the benchmarks' record of the machine (it loads torch, which only the report needs)

    report = {"machine": objectives.machine(),
              "promise_s": MINUTE, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
