"""What ``fit`` costs around its step, measured in child processes: an epoch against its steps, an epoch with
another busy process on the machine, the first step of a cold start, and the peak memory that the data and an epoch add.

Used by ``elbo_speed.py`` (sections epoch, contention, mkl-mode, cold-start, memory); ``python benchmarks/fit_speed.py
child KIND ...`` is one child's run, printing one JSON line. Data: random 8-bit pixels (N, 784), as uint8
with ``scale=255`` (how fit holds 8-bit image sets) unless a child is told ``--float`` (the same pixels as
float32 / 255); the speed does not depend on the values. The model is funcvae's default MLP VAE 784-400-20,
batch 128, ``optim.adam(1e-3)``, the compiled step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BATCH = 128


def pixels(n: int, seed: int = 0):
    """(n, 784) random 8-bit pixels, uint8."""
    import torch
    return torch.randint(0, 256, (n, 784), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def child_epochs(n: int, epochs: int, as_float: bool, compile: bool | None = None, share_cores: bool = True) -> dict:
    """Fit ``epochs`` epochs on ``n`` examples; each epoch's seconds as fit records them (the first compiles)."""
    import funcvae
    x = pixels(n)
    data, scale = (x.float() / 255.0, None) if as_float else (x, 255)
    params = funcvae.init(seed=0)
    _, history = funcvae.fit(params, data, epochs=epochs, batch_size=BATCH, seed=0, scale=scale, progress=False,
                             compile=compile, share_cores=share_cores)
    return {"epoch_s": [h["seconds"] for h in history]}


def child_first_step() -> dict:
    """Seconds from calling fit to the end of its first step: one epoch of one batch, no held-out data (so the
    epoch ends with that step), in a process that has compiled nothing."""
    import funcvae  # torch is loaded before the clock starts, as in a user's script
    x = pixels(BATCH)
    params = funcvae.init(seed=0)
    t0 = time.perf_counter()
    _, history = funcvae.fit(params, x, epochs=1, batch_size=BATCH, seed=0, scale=255, progress=False)
    return {"first_step_s": time.perf_counter() - t0, "epoch_s": history[0]["seconds"]}


def child_memory(n: int, as_float: bool, compile: bool | None = False) -> dict:
    """Peak resident memory from making ``n`` 8-bit examples to the end of one epoch of fit on them (float32 /
    255 with ``as_float``, else uint8 with scale=255), above what the process held before (torch loaded, the
    model made); the eager step by default, so that the compiler's own memory does not hide the data's."""
    import funcvae
    params = funcvae.init(seed=0)
    before = _reset_peak()
    x = pixels(n)
    data, scale = (x.float().div_(255.0), None) if as_float else (x, 255)
    del x
    funcvae.fit(params, data, epochs=1, batch_size=BATCH, seed=0, scale=scale, progress=False, compile=compile)
    return {"peak_rss_mb": _status_mb("VmHWM"), "before_mb": before,
            "data_mb": data.numel() * data.element_size() / 2**20}


def _status_mb(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> float:
    """Reset the kernel's high-water mark of this process's resident memory to what it holds now (Linux:
    "5" to /proc/self/clear_refs), and return that mark, in MiB (the mark, not VmRSS: the two come from
    counters the kernel syncs at different times, and only the mark is sure to grow from here)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmHWM")


# ---------------------------------------------------------------- the parent's side


def run_child(args: list[str], env: dict | None = None, timeout: float = 600) -> dict:
    """One child run of this file; its JSON result."""
    out = subprocess.run([sys.executable, str(Path(__file__)), "child", *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Busy:
    """Another process on the machine while the block runs: a pure Python loop, as the issue measured."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)  # let it start spinning
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def fresh_cache_env() -> tuple[dict, str]:
    """The environment of a child with an empty compile cache, and the folder to remove after it. Inductor keeps
    its precompiled headers in the temporary folder's own cache, not in TORCHINDUCTOR_CACHE_DIR, so the child
    gets a temporary folder of its own too: a new user's first run builds them."""
    folder = tempfile.mkdtemp(prefix="funcvae-cold-")
    os.mkdir(os.path.join(folder, "tmp"))
    return {"TORCHINDUCTOR_CACHE_DIR": os.path.join(folder, "inductor"),
            "TRITON_CACHE_DIR": os.path.join(folder, "triton"), "TMPDIR": os.path.join(folder, "tmp")}, folder


def cold_start(rounds: int) -> dict:
    """Seconds to fit's first step with an empty compile cache, and again with that cache warm, per round."""
    cold, warm = [], []
    for _ in range(rounds):
        env, folder = fresh_cache_env()
        try:
            cold.append(run_child(["first-step"], env)["first_step_s"])
            warm.append(run_child(["first-step"], env)["first_step_s"])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return {"cold_s": cold, "warm_s": warm, "cold_median_s": statistics.median(cold),
            "warm_median_s": statistics.median(warm)}


def contention(rounds: int, n: int, epochs: int, variants: dict[str, list[str]]) -> dict:
    """Each variant's epoch time (``variants``: name -> extra child arguments) alone and beside one busy process,
    interleaved round by round (``interleaved``)."""
    return interleaved(rounds, n, epochs, {name: (args, {}) for name, args in variants.items()}, loads=(False, True))


def mkl_modes(rounds: int, n: int, epochs: int) -> dict:
    """The epoch in MKL's strict reproducible mode (what funcvae sets) and in MKL's default mode (the
    environment's ``MKL_CBWR=AUTO``, which funcvae leaves as it is), eager and compiled, alone."""
    strict, default = {"MKL_CBWR": "AUTO,STRICT"}, {"MKL_CBWR": "AUTO"}
    return interleaved(rounds, n, epochs, {"eager, strict MKL": (["--eager"], strict),
                                           "eager, MKL's default": (["--eager"], default),
                                           "compiled, strict MKL": ([], strict),
                                           "compiled, MKL's default": ([], default)}, loads=(False,))


def interleaved(rounds: int, n: int, epochs: int, variants: dict[str, tuple[list[str], dict]],
                loads: tuple[bool, ...]) -> dict:
    """Each variant's epoch time (``variants``: name -> (extra child arguments, environment)), alone and/or
    beside one busy process as ``loads`` says, interleaved round by round: the median over rounds of each
    child's median epoch after its first (which compiles)."""
    times = {(name, busy): [] for name in variants for busy in loads}
    for r in range(rounds):
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for name, busy in order:
            args, env = variants[name]
            args = ["epochs", "--n", str(n), "--epochs", str(epochs), *args]
            if busy:
                with Busy():
                    result = run_child(args, env)
            else:
                result = run_child(args, env)
            times[(name, busy)].append(statistics.median(result["epoch_s"][1:]))
    return {f"{name}{', busy' if busy else ''}": {"epoch_s": v, "median_s": statistics.median(v)}
            for (name, busy), v in times.items()}


def memory(n: int) -> dict:
    """Peak RSS of fit on the same 8-bit set given as float32 / 255 and as uint8 with scale=255."""
    return {"float32": run_child(["memory", "--n", str(n), "--float"]),
            "uint8": run_child(["memory", "--n", str(n)])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="one child run of fit_speed (used by elbo_speed.py)")
    sub = p.add_subparsers(dest="what", required=True)
    child = sub.add_parser("child")
    child.add_argument("kind", choices=("epochs", "first-step", "memory"))
    child.add_argument("--n", type=int, default=30000)
    child.add_argument("--epochs", type=int, default=3)
    child.add_argument("--float", action="store_true", dest="as_float")
    child.add_argument("--eager", action="store_const", const=False, default=None, dest="compile",
                       help="fit's eager step (a cheap smoke run of the machinery; memory children always are)")
    child.add_argument("--fixed-threads", action="store_false", dest="share_cores",
                       help="fit(share_cores=False): torch's thread count throughout")
    args = p.parse_args(argv)
    if args.kind == "epochs":
        result = child_epochs(args.n, args.epochs, args.as_float, args.compile, args.share_cores)
    elif args.kind == "first-step":
        result = child_first_step()
    else:
        result = child_memory(args.n, args.as_float)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's funcvae
    main()
