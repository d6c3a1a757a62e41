"""fp32 GEMM throughput (GFLOP/s) on this machine for the products of funcvae's MLP VAE step
(784-400-20) at batch 128 and 1024, and a square 1024^3 product, for every CPU kernel PyTorch reaches.

Run (about two minutes on 2 cores; ``--no-compile`` skips the inductor columns):

    python benchmarks/gemm.py --json gemm.json

Products (rows; the operands laid out as the step holds them):
  fwd    Y = X W^T    X (m, k), W (n, k): torch's (out, in) weight                 fc1: (B,784)(784,400)^T
  dX     dX = dY W    dY (m, k), W (k, n) (out, in): gradient of the layer input    fc4: (B,784)(784,400)
  dW     dW = dY^T X  dY (k, m), X (k, n), both (batch, features): weight gradient  fc1: (400,B)(B,784)

Kernels (columns):
  aten          the default: ``F.linear`` / ``torch.mm`` as autograd calls them (MKL ``sgemm``).
  aten alt      the same with the weight (and its gradient) stored (in, out) instead of (out, in).
  onednn        ``torch.ops.mkldnn._linear_pointwise(X, W, None, "none", [], "")`` (schema:
                ``(Tensor X, Tensor W, Tensor? B, str attr, Scalar?[] scalars, str? algorithm)``) with the
                plain weight; dX passes ``W.t()`` (oneDNN reads it in place), dW passes ``dY.t()`` (copied
                to row-major by the op) and ``X.t()``.
  onednn alt    the same with the weight stored (in, out).
  onednn pk     fwd: the weight pre-packed by ``torch.ops.mkldnn._reorder_linear_weight(W, m)``, packing not
                timed (valid for inference; training changes W every step: see ``onednn pk+run``).
  mkl pk        fwd: MKL's packed GEMM ``torch.ops.mkl._mkl_linear`` on a weight packed once by
                ``torch.ops.mkl._mkl_reorder_linear_weight``; ``mkl pk+run`` packs on every call.
  inductor      ``torch.compile``, ``max_autotune=True, max_autotune_gemm_backends="CPP,ATEN"``, weights as
                graph inputs (as in training); 2 threads.
  ind frozen    fwd: the same on an ``nn.Linear`` with ``freezing=True`` under ``no_grad`` (inference).
  openblas      reference: ``numpy.matmul`` (numpy's bundled OpenBLAS, SkylakeX kernels).
  x             aten time / onednn time: above 1 where oneDNN is faster.

Method: the kernels of a product are timed interleaved (random order each round; threads set and one
warm-up call before each sample of ~``--sample-ms``). The machine is shared: while another job holds a
core, a 2-thread GEMM stalls at every OpenMP barrier for its descheduled worker and every kernel drops
to a fraction of its rate (medians of 13-20 GFLOP/s at batch 128 were recorded), so medians over all
samples measure the other jobs. The table therefore shows, at 2 threads, the best of ``--rounds``
samples (the undisturbed rate; every sample is itself a mean over many calls), and at 1 thread the
median of the undisturbed samples (the process had the CPU for >= 90% of the sample's wall time). The
JSON keeps every statistic (``all_median_gflops``, ``best_gflops``, ``spread``), the generated kernel
inductor chose (``inductor_chose``) and the MKL/oneDNN verbose lines of each entry point (``dispatch``).

Findings (torch 2.15.0+cu132, MKL 2024.2, oneDNN 3.13.3; a 2-vCPU KVM guest, "Intel(R) Xeon(R)
Processor", family 6 model 167, AVX-512 and AMX flags):

* Peak: ~446 GFLOP/s at 1024^3 on 2 threads (MKL packed, best sample), ~220 on 1 thread: one core
  gives half, and 2 threads scale fully when undisturbed. The default path reaches 405-416 on 2 threads
  (~93% of the peak) and 200-210 on 1 thread; oneDNN 376-410 and 194-204.
* At the step's shapes oneDNN is slower than the default path on nearly every product. Over four runs
  at 1 thread, x = 0.44-0.61 at K=20 (fc3), 0.42-0.85 on dW (the op first copies dY^T to row-major),
  0.55-0.99 on dX and 0.88-1.10 on the other forwards; at 2 threads, in the rows not disturbed,
  x = 0.54-1.06. MKL packed is the fastest forward at 2 threads (7-17% over sgemm, up to 1.6x at K=20)
  but only with a weight packed once; packing on every call (``pk+run``) loses that, and training
  changes the weight every step.
* inductor with max-autotune does not use its C++ GEMM template for training: ``use_cpp_gemm_template``
  (torch/_inductor/utils.py) requires a constant weight (``require_constant_mat2``: a frozen module
  buffer), so the product compiles to ``extern_kernels.mm``, the same MKL sgemm. With freezing
  (inference) the autotuner picks MKL packed or the template, whichever timed faster.
* Weight layout: storing it (in, out) speeds MKL's batch-128 forwards by 5-15% at 1 thread but slows
  the dX product about as much, so a layer used both ways gains nothing; 1 vs 2 threads: see Method.

Why the default path looked ~2x slower (~210 against ~450 GFLOP/s): it is not slower when both are
timed side by side.
1. Where ``F.linear`` goes. ``aten::mm`` / ``aten::addmm`` on an x86 CPU in fp32 call BLAS = MKL sgemm:
   ``MKL_VERBOSE=1`` prints ``SGEMM(T,N,400,128,784,...)`` for ``F.linear`` and ``ONEDNN_VERBOSE=1``
   nothing, while ``_linear_pointwise`` prints ``inner_product,brg_matmul:avx512_core``. In
   ``addmm_impl_cpu_`` (aten/src/ATen/native/LinearAlgebra.cpp) the only oneDNN branch sits under
   ``#if defined(__aarch64__) && AT_MKLDNN_ACL_ENABLED()``; all else goes to ``at::native::cpublas::gemm``
   -> ``sgemm_``. oneDNN takes an fp32 mm on x86 only at reduced precision: with
   ``torch.backends.mkldnn.matmul.fp32_precision = "bf16"`` the same ``F.linear`` prints
   ``matmul,brg_matmul:avx10_1_512_amx ... attr-fpmath:bf16`` (bf16 products: far outside 1e-5);
   "tf32" stays on MKL here. ``TORCH_MKLDNN_MATMUL_MIN_DIM`` / ``_MIN_SIZE`` only gate those
   reduced-precision and AArch64 paths (``TORCH_MKLDNN_MATMUL_MIN_DIM=1`` changes nothing). No setting
   sends a full-precision fp32 mm to oneDNN on x86, and the measurements give no reason to want one.
2. MKL runs its AVX-512 code here (``MKL_VERBOSE``: "Intel(R) AVX-512 ... AMX"; forcing
   ``MKL_ENABLE_INSTRUCTIONS=AVX2`` drops the 1-thread 1024^3 rate from 210 to 121 GFLOP/s).
3. ~210 GFLOP/s is one core's rate: what every library gives at 1 thread (MKL 200-210, oneDNN 194-204,
   OpenBLAS 181-189), and what a 2-thread GEMM gets (or less) while another job holds the other core.
   Figures taken at different times on this shared machine compare the load, not the libraries.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

LINEAR_POINTWISE = torch.ops.mkldnn._linear_pointwise.default  # (X, W, B, attr, scalars, algorithm)
ONEDNN_PACK = torch.ops.mkldnn._reorder_linear_weight.default  # (W, batch_size) -> oneDNN-blocked W
MKL_LINEAR = torch.ops.mkl._mkl_linear.default  # (X, packed W, W, B, batch_size)
MKL_PACK = torch.ops.mkl._mkl_reorder_linear_weight.default  # (W, batch_size) -> MKL-packed W
THREADS = (1, 2)


@dataclass(frozen=True)
class Case:
    """One product: out (m, n) = A (m, k) . B (k, n), with operands laid out as ``role`` says."""

    name: str
    role: str
    m: int
    n: int
    k: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k


def step_cases(batches: tuple[int, ...]) -> list[Case]:
    """The GEMMs of the 784-400-20 VAE step at each batch size, then the square reference."""
    out = []
    for b in batches:
        out += [Case(f"B{b} fc1 fwd", "fwd", b, 400, 784), Case(f"B{b} fc4 fwd", "fwd", b, 784, 400),
                Case(f"B{b} fc3 fwd", "fwd", b, 400, 20), Case(f"B{b} fc4 dX", "dgrad", b, 400, 784),
                Case(f"B{b} fc1 dW", "wgrad", 400, 784, b), Case(f"B{b} fc4 dW", "wgrad", 784, 400, b)]
    return out + [Case("square 1024^3", "fwd", 1024, 1024, 1024)]


def _lp(x, w):
    return LINEAR_POINTWISE(x, w, None, "none", [], "")


def kernels(case: Case) -> dict[str, Callable[[], object]]:
    """Zero-argument calls computing ``case`` with each kernel (those that apply to its role)."""
    g = torch.Generator().manual_seed(0)
    m, n, k = case.m, case.n, case.k
    if case.role == "fwd":  # Y = X W^T, W (n, k) = (out, in)
        x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        w_io = w.t().contiguous()
        wp, mkl_wp = ONEDNN_PACK(w, m), MKL_PACK(w, m)
        xn, wn, out = x.numpy(), w.numpy(), np.empty((m, n), np.float32)
        return {"aten": lambda: F.linear(x, w), "aten alt": lambda: torch.mm(x, w_io),
                "onednn": lambda: _lp(x, w), "onednn alt": lambda: _lp(x, w_io.t()),
                "onednn pk": lambda: _lp(x, wp), "onednn pk+run": lambda: _lp(x, ONEDNN_PACK(w, m)),
                "mkl pk": lambda: MKL_LINEAR(x, mkl_wp, w, None, m),
                "mkl pk+run": lambda: MKL_LINEAR(x, MKL_PACK(w, m), w, None, m),
                "openblas": lambda: np.matmul(xn, wn.T, out=out)}
    if case.role == "dgrad":  # dX = dY W, W (k, n) = (out, in)
        dy, w = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        w_io = w.t().contiguous()
        dyn, wn, out = dy.numpy(), w.numpy(), np.empty((m, n), np.float32)
        return {"aten": lambda: torch.mm(dy, w), "aten alt": lambda: torch.mm(dy, w_io.t()),
                "onednn": lambda: _lp(dy, w.t()), "onednn alt": lambda: _lp(dy, w_io),
                "openblas": lambda: np.matmul(dyn, wn, out=out)}
    # wgrad: dW (m, n) = dY^T X with dY (k, m), X (k, n); "alt" produces dW^T (n, m) = X^T dY
    dy, x = torch.randn(k, m, generator=g), torch.randn(k, n, generator=g)
    dyn, xn, out = dy.numpy(), x.numpy(), np.empty((m, n), np.float32)
    return {"aten": lambda: torch.mm(dy.t(), x), "aten alt": lambda: torch.mm(x.t(), dy),
            "onednn": lambda: _lp(dy.t(), x.t()), "onednn alt": lambda: _lp(x.t(), dy.t()),
            "openblas": lambda: np.matmul(dyn.T, xn, out=out)}


def inductor_kernels(case: Case) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """Compiled variants (``ind frozen`` is compiled once per thread count), and the GEMM kernel that
    inductor's autotuner put into each one's generated code."""
    import torch._inductor.config as inductor_config
    from torch._inductor.utils import run_and_get_code

    g = torch.Generator().manual_seed(0)
    m, n, k = case.m, case.n, case.k
    a = torch.randn(k, m, generator=g) if case.role == "wgrad" else torch.randn(m, k, generator=g)
    b = torch.randn(n, k, generator=g) if case.role == "fwd" else torch.randn(k, n, generator=g)
    expr = {"fwd": "F.linear(a, b)", "dgrad": "torch.mm(a, b)", "wgrad": "torch.mm(a.t(), b)"}[case.role]
    fn = _fresh_function(f"lambda a, b: {expr}")  # a new code object: compiled on its own
    opts = dict(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN")
    compiled = torch.compile(fn, dynamic=False, options=opts)
    with inductor_config.patch(opts):
        _, code = run_and_get_code(compiled, a, b)
    calls, chosen = {"inductor@2": lambda: compiled(a, b)}, {"inductor@2": _gemm_in(code)}
    if case.role == "fwd":
        for t in THREADS:
            torch.set_num_threads(t)
            lin = torch.nn.Linear(k, n, bias=False).eval()
            lin.weight.data.copy_(b)
            frozen = torch.compile(lin, dynamic=False, options={**opts, "freezing": True})
            with torch.no_grad(), inductor_config.patch(freezing=True, **opts):
                _, code = run_and_get_code(frozen, a)

            def call(frozen=frozen):
                with torch.no_grad():
                    return frozen(a)
            calls[f"ind frozen@{t}"], chosen[f"ind frozen@{t}"] = call, _gemm_in(code)
        torch.set_num_threads(max(THREADS))
    return calls, chosen


def _gemm_in(code: list[str]) -> str:
    """Which GEMM an inductor output calls."""
    src = "\n".join(code)
    marks = {"micro_gemm": "inductor C++ GEMM template", "_mkl_linear": "MKL packed (mkl._mkl_linear)",
             "_linear_pointwise": "oneDNN (mkldnn._linear_pointwise)", "extern_kernels.mm": "aten mm (MKL sgemm)",
             "extern_kernels.addmm": "aten addmm (MKL sgemm)", "extern_kernels.bmm": "aten bmm"}
    return ", ".join(name for mark, name in marks.items() if mark in src) or "unknown"


def _fresh_function(src: str):
    return eval(src, {"F": F, "torch": torch})  # noqa: S307 - a literal written above


def _openblas() -> ctypes.CDLL | None:
    """numpy's bundled OpenBLAS (scipy-openblas), to set its threads and read its kernel family."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
    return ctypes.CDLL(libs[0]) if libs else None


def _openblas_set_threads() -> Callable[[int], None]:
    lib = _openblas()
    fn = getattr(lib, "scipy_openblas_set_num_threads64_", None) or getattr(lib, "openblas_set_num_threads", None)
    return (lambda t: fn(ctypes.c_int(t))) if fn is not None else (lambda t: None)


def _openblas_core() -> str | None:
    fn = getattr(_openblas(), "scipy_openblas_get_corename64_", None)
    if fn is None:
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def measure(calls: dict[str, tuple[Callable[[], object], int]], *, rounds: int, sample_s: float,
            seed: int = 0) -> dict[str, dict]:
    """Time ``calls`` ({label: (call, threads)}) interleaved: ``rounds`` samples each, in a new random
    order every round; returns ``summarize`` of each label's samples."""
    set_blas = _openblas_set_threads()

    def prepare(threads):
        torch.set_num_threads(threads)
        set_blas(threads)

    reps = {}
    for label, (call, threads) in calls.items():  # warm up and size each sample
        prepare(threads)
        for _ in range(3):
            call()
        t0 = time.perf_counter()
        call()
        reps[label] = max(1, int(sample_s / max(time.perf_counter() - t0, 1e-7)))
    samples = {label: [] for label in calls}  # (wall, process CPU) seconds per call
    order = list(calls)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for label in order:
            call, threads = calls[label]
            prepare(threads)
            call()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(reps[label]):
                call()
            samples[label].append(((time.perf_counter() - t0) / reps[label], (time.process_time() - c0) / reps[label]))
    prepare(max(THREADS))
    return {label: summarize(s, calls[label][1]) for label, s in samples.items()}


def summarize(samples: list[tuple[float, float]], threads: int) -> dict:
    """Seconds per call: at 1 thread the median of the undisturbed samples (the process had the CPU for at
    least 90% of the sample's wall time: time on a busy machine spent descheduled is excluded); at more
    threads the best sample (a GEMM may use fewer threads than allowed, so missing CPU time does not
    prove a disturbance there, and the best of many samples is the undisturbed figure); the plain
    median of every sample is kept beside them."""
    wall = [w for w, _ in samples]
    clean = [w for w, c in samples if c >= 0.9 * w]
    if threads == 1 and clean:
        seconds = statistics.median(clean)
    else:
        seconds = min(wall)
    q = statistics.quantiles(wall, n=4)
    return {"seconds": seconds, "all_median_seconds": statistics.median(wall), "best_seconds": min(wall),
            "clean_samples": len(clean) if threads == 1 else None, "samples": len(wall),
            "spread": (q[2] - q[0]) / statistics.median(wall)}


def run(cases: list[Case], *, rounds: int, sample_s: float, compile_: bool) -> list[dict]:
    results = []
    for case in cases:
        calls = {f"{name}@{t}": (call, t) for name, call in kernels(case).items() for t in THREADS}
        chosen = {}
        if compile_:
            compiled, chosen = inductor_kernels(case)
            for label, call in compiled.items():
                calls[label] = (call, int(label.rsplit("@", 1)[1]))
        timed = measure(calls, rounds=rounds, sample_s=sample_s)
        for v in timed.values():
            for key in ("", "best_", "all_median_"):
                v[f"{key}gflops"] = case.flops / v[f"{key}seconds"] / 1e9
        results.append({"case": case.name, "role": case.role, "m": case.m, "n": case.n, "k": case.k,
                        "inductor_chose": chosen,
                        "flops": case.flops, "kernels": timed})
        print(f"  measured {case.name}", file=sys.stderr, flush=True)
    return results


COLUMNS = ("aten", "aten alt", "onednn", "onednn alt", "onednn pk", "onednn pk+run", "mkl pk", "mkl pk+run", "inductor",
           "ind frozen", "openblas")


#: (title, threads, metric): what each block of the printed table shows.
BLOCKS = (("2 threads: best sample", 2, ""), ("1 thread: median of undisturbed samples", 1, ""))


def table(results: list[dict]) -> str:
    """GFLOP/s per product and kernel, one block per ``BLOCKS`` entry; ``x`` = aten time / onednn time."""
    lines = []
    for title, t, key in BLOCKS:
        cols = [c for c in COLUMNS if any(f"{c}@{t}" in r["kernels"] for r in results)]
        lines += ["", title, f"{'':<14}{'m x n x k':>15}" + "".join(f"{c:>14}" for c in cols) + f"{'x':>7}"]
        for r in results:
            k = r["kernels"]
            cells = "".join(f"{k[f'{c}@{t}'][key + 'gflops']:>14.0f}" if f"{c}@{t}" in k else f"{'-':>14}"
                            for c in cols)
            ratio = k[f"aten@{t}"][key + "seconds"] / k[f"onednn@{t}"][key + "seconds"]
            lines.append(f"{r['case']:<14}{r['m']:>5}x{r['n']:>4}x{r['k']:>4}{cells}{ratio:>7.2f}")
    fewest = min(v["clean_samples"] for r in results for k, v in r["kernels"].items() if k.endswith("@1"))
    worst = max(v["spread"] for r in results for v in r["kernels"].values())
    lines.append(f"GFLOP/s. 2 threads: best of {results[0]['kernels']['aten@2']['samples']} samples; 1 thread: "
                 f"median of the undisturbed samples (at least {fewest} per figure). Largest interquartile "
                 f"spread over all samples: {worst:.0%} of the median (the machine is shared).")
    return "\n".join(lines)


def peak(results: list[dict]) -> dict:
    """This machine's highest measured fp32 GEMM rate: the best sample of any kernel on the square
    product, beside the default path's best sample and its median over all samples."""
    k = next(r for r in results if r["case"].startswith("square"))["kernels"]
    best = max(k, key=lambda lab: k[lab]["best_gflops"])
    return {"kernel": best, "gflops": k[best]["best_gflops"], "aten@2_best_gflops": k["aten@2"]["best_gflops"],
            "aten@2_all_median_gflops": k["aten@2"]["all_median_gflops"]}


DISPATCH_PROBE = """
import torch, torch.nn.functional as F
x, w = torch.randn(128, 784), torch.randn(400, 784)
print('--- F.linear', flush=True); F.linear(x, w)
print('--- torch.mm', flush=True); torch.mm(x, w.t())
print('--- _linear_pointwise', flush=True)
torch.ops.mkldnn._linear_pointwise(x, w, None, 'none', [], '')
print('--- mkl packed', flush=True)
torch.ops.mkl._mkl_linear(x, torch.ops.mkl._mkl_reorder_linear_weight(w, 128), w, None, 128)
"""


def dispatch_evidence() -> list[str]:
    """Which library each entry point reaches: MKL_VERBOSE / ONEDNN_VERBOSE lines of a probe process."""
    env = {**os.environ, "MKL_VERBOSE": "1", "ONEDNN_VERBOSE": "1"}
    proc = subprocess.run([sys.executable, "-c", DISPATCH_PROBE], env=env, capture_output=True, text=True,
                          timeout=120)
    keep = ("---", "MKL_VERBOSE", "onednn_verbose,v1,primitive,exec")
    return [line for line in proc.stdout.splitlines() if line.startswith(keep)]


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    cpuid = {key: next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                        if line.startswith(key)), None) for key in ("cpu family", "model\t", "stepping")}
    config = torch.__config__.show()
    return {"platform": platform.platform(), "cpu": model, "cpuid": {k.strip(): v for k, v in cpuid.items()},
            "cores": os.cpu_count(), "torch": torch.__version__, "numpy": np.__version__,
            "torch_threads_default": torch.get_num_threads(), "threads_measured": list(THREADS),
            "blas": next((line.strip(" -") for line in config.splitlines() if "Math Kernel Library" in line), None),
            "onednn": next((line.strip(" -") for line in config.splitlines() if "MKL-DNN" in line), None),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn_matmul_fp32_precision": torch.backends.mkldnn.matmul.fp32_precision,
            "openblas_core": _openblas_core()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write every figure and the machine description here")
    p.add_argument("--batches", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--rounds", type=int, default=21, help="samples per kernel")
    p.add_argument("--sample-ms", type=float, default=8.0, help="wall time of one sample")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile (inductor) kernels")
    args = p.parse_args(argv)
    torch._dynamo.config.recompile_limit = 64
    info = machine()
    results = run(step_cases(tuple(args.batches)), rounds=args.rounds, sample_s=args.sample_ms / 1e3,
                  compile_=not args.no_compile)
    best = peak(results)
    print(f"{info['cpu']} ({info['cores']} cores), torch {info['torch']}, {info['blas']}")
    print(table(results))
    print(f"peak fp32 GEMM measured (1024^3): {best['gflops']:.0f} GFLOP/s ({best['kernel']}, best sample); "
          f"default path aten@2: {best['aten@2_best_gflops']:.0f} best sample, "
          f"{best['aten@2_all_median_gflops']:.0f} median of all samples")
    if args.json:
        record = {"machine": info, "peak": best, "results": results, "dispatch": dispatch_evidence(),
                  "command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:]))}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
