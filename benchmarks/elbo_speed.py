"""Speed of funcvae's training step, per-example gradients and model stacks, against the classic eager
``nn.Module`` VAE, JAX (when installed) and this machine's measured GEMM rate.

Run (about 10 minutes on 2 CPU cores: 3 for the step sections, the rest in child processes for the epoch,
contention, mkl-mode, cold-start and memory sections; ``--quick`` is a smoke run, one round of each child section,
whose time is mostly compilation):

    python benchmarks/elbo_speed.py --json benchmarks/results/elbo_speed_cpu.json

Options: ``--only step,per-example,stack,families,batch-sizes,gemm,epoch,contention,mkl-mode,cold-start,memory``
(any subset; batch-sizes brings gemm along for its percentages), ``--device cuda`` (everything on the GPU, data
included), ``--rounds``, ``--block-ms``, ``--warmup``, ``--child-rounds``, ``--quick``, ``--threads N`` (torch's and
JAX's CPU threads; default: each library's own), ``--json PATH`` (every figure and sample, the settings and the
machine).
JAX is optional (``pip install jax``); without it the JAX rows say "jax not installed".

Model: the MLP VAE 784-400-20, ReLU, Bernoulli decoder (logits l, log p = x l - softplus(l)), analytic KL,
fp32, one latent sample per example. Data: one fixed batch of uniform pixels and fixed noise (the speed does
not depend on the values). Every training step's outputs (params, optimiser state) feed the next one.

Sections (reference variant first; ratios are times over the reference's, < 1 is faster):
  step         one full training step (loss, gradients, Adam update, lr 1e-3) at batch 128:
               baseline   ``ClassicVAE`` of baseline_vae.py, ``torch.optim.Adam``, eager, summed loss (its noise
                          is passed in rather than drawn inside, so every side gets the same inputs);
               eager      ``funcvae.make_train_step(model, objectives.elbo(), optim.apply_if_finite(optim.adam(
                          1e-3), freeze=True))``, the step ``fit`` runs, over a ``TrainState``, as ``fit`` runs
                          it eagerly (``compile_step(step, device, False)``: on a CPU, glibc's malloc keeps freed
                          memory; ``funcvae._runtime.memory``);
               compiled   the same through ``funcvae._runtime.compiling.compile_step(step, device, True)`` (inductor,
                          fullgraph; CUDA graphs on a GPU);
               compiled bf16 products   the same with ``matmul_dtype=torch.bfloat16`` (the matrix products
                          in bfloat16, all else fp32; not one of the fp32 targets);
               compiled, no guard   the compiled step without its non-finite guard, as the baseline and
                          JAX steps are: what the guard costs (fit always runs the guarded step);
               jax jit    the same model, loss and Adam in jax.numpy under ``jax.jit`` (state donated).
               funcvae's step also does its non-finite guard (every gradient checked, the update selected on
               the device); the baseline and JAX steps have none.
  per-example  per-example gradients of the one-example loss at batch 32: a Python loop of single-example
               ``torch.func.grad`` calls (reference; the gradients stay a list), ``example_grads``
               (``vmap(grad)``) eager and under ``torch.compile`` (fullgraph), JAX ``jit(vmap(grad))``.
  stack        8 models: one compiled ``funcvae.step.stacked(step)`` (vmap of the step; per-model lrs in the
               stacked optimiser states) against
               8 calls of the compiled single-model step (reference), which is what 8 separate fits pay per
               step (one model's chain called 8 times: no two live states share a compiled graph, which
               CUDA graphs would not allow).
  families     one training step at batch 128 of two built-in families against their ``nn.Module`` twins
               (``twins.py``, the same initial weights and inputs): ``models.ladder()`` (hidden 512-256, latents
               64-32) and ``models.mlp(posterior="iaf")`` (784-400-20, 2 IAF steps, MADE width 400); per family
               the twin's eager step (reference: forward loss, backward, ``torch.optim.Adam``), the same with the
               twin's forward and backward through ``torch.compile``, and funcvae's step
               (``make_train_step(model, objectives.elbo(), optim.adam(1e-3))``, no guard) eager and compiled as in
               step. Ratios only, no target.
  batch-sizes  the compiled step (fp32 and with bf16 products) and the baseline at batch 32, 128, 512, 1024,
               4096; ratios per batch size, examples/s, GFLOP/s and GFLOP/s as a percentage of the peak GEMM
               rate of the row's product dtype.
  epoch        what fit adds around its step: the seconds fit records for an epoch of 30,000 8-bit examples
               (235 steps of 128, uint8 data) against 235 calls of the compiled step it runs, on a uint8
               batch, one of each per round (fit skips dynamo's guard checks from an epoch's third step on, and
               so do the timed blocks here);
  contention   fit epochs in child processes (``fit_speed.py``), alone and beside one busy Python process
               (``while True: pass``), with fit's default of sharing the cores (``funcvae._runtime.threads``) and with
               ``share_cores=False``, all four interleaved; each child's median epoch after its first;
  mkl-mode     fit epochs in child processes as in contention, alone, eager and compiled, with MKL in its strict
               reproducible mode (``MKL_CBWR=AUTO,STRICT``, funcvae's) and in its default (``MKL_CBWR=AUTO``),
               all four interleaved: what same bits on any thread count cost;
  cold-start   a fresh process with an empty compile cache (its own TORCHINDUCTOR_CACHE_DIR) calls fit on one
               batch of 128: seconds from the call to its first (and only) step done; then the same with
               that cache warm;
  memory       a child makes 60,000 random 8-bit images (784 pixels), hands them to fit as float32 / 255 or
               as uint8 with scale=255 and trains one epoch of the eager step (the compiler's own memory would
               hide the data's); its peak resident memory from making the data on, above what it held before
               (the kernel's high-water mark, reset through /proc/self/clear_refs);
  gemm         the peaks: a 1024^3 fp32 product by ``torch.mm`` and, on CPU, by oneDNN
               (``torch.ops.mkldnn._linear_pointwise(X, W, None, "none", [], "")``, i.e. X W^T); the best of
               them is the physical limit the fp32 step figures are compared with; the same product in bf16
               by ``torch.mm`` is the limit for the bf16 rows.

Figures: ms per call (median over rounds, interquartile range), ratio and speed-up (its inverse) against
the reference, GFLOP/s = matmul FLOPs / median time, compile s = the first call's time minus the median
("reused": the graph came from an earlier variant), recompiles = graphs compiled after a variant's first
call (must be 0), and a check that no graph is compiled while timing.

FLOPs of one step, matmuls only (elementwise work and Adam not counted), B = batch size:
    forward   F = 2 B (784*400 + 400*40 + 20*400 + 400*784)      (400*40: the mean and logvar heads)
    backward  2 F - 2 B 784*400   (weight and input gradients of every layer, except the input gradient of
                                   the first layer, which nothing needs)
    step      3 F - 2 B 784*400   = 419.8 MFLOP at B = 128
Per-example gradients count the same (per-example weight gradients are the same products, unsummed); a stack
of N counts N steps.

Method: one process; the variants of a section are timed interleaved, round-robin for ``--rounds`` rounds
(the first variant of a round rotates), each turn timing a block of consecutive calls lasting about
``--block-ms`` (block length fixed per variant after warm-up). The first call (compilation) and ``--warmup``
more calls come before. On CUDA the device is synchronised before each clock reading.

Targets (pass / miss): compiled step <= 0.5x the baseline and <= 1.0x JAX jit at batch 128; at batch >= 1024
the compiled step reaches >= 60% of the peak GEMM rate; per-example gradients (compiled) at batch 32 no
slower than JAX jit(vmap(grad)) and >= 2x faster than the loop; eager step <= 1.5x the eager baseline; fit's
epoch <= 1.1x its steps' time; an epoch beside one busy process <= 1.7x the epoch alone, and sharing the
cores <= 1.05x fixed threads alone (it must not slow the unloaded case); the first step within 10 s of
fit starting with an empty compile cache; uint8 data saving >= 3/4 of the float32 set's bytes in peak RSS;
8 stacked models >= 1.5x faster than 8 sequential compiled steps on CPU (>= 4x on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout's funcvae
sys.path.insert(0, str(Path(__file__).resolve().parent))
import optree  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

import fit_speed  # noqa: E402
import funcvae  # noqa: E402
from baseline_vae import ClassicVAE, machine  # noqa: E402
from funcvae import objectives  # noqa: E402
from funcvae._runtime.compiling import compile_backend, compile_mode, compile_step  # noqa: E402
from funcvae.config import steps_per_epoch  # noqa: E402
from funcvae.optim import adam, apply_if_finite  # noqa: E402
from funcvae.per_example import example_grads  # noqa: E402
from funcvae.step import Batch, init_state, make_train_step, stacked  # noqa: E402
from twins import IAFTwin, LadderTwin, load_tree  # noqa: E402

SECTIONS = ("step", "per-example", "stack", "families", "batch-sizes", "gemm", "epoch", "contention", "mkl-mode",
            "cold-start", "memory")
BATCH_SIZES = (32, 128, 512, 1024, 4096)
LR, B1, B2, ADAM_EPS = 1e-3, 0.9, 0.999, 1e-8
N_MODELS = 8
LATENT = 20
EPOCH_EXAMPLES = 30000  # the epoch: 235 steps of 128
NOISY = 0.2  # an interquartile range above this fraction of the median flags a disturbed measurement


def step_flops(batch: int) -> int:
    """Matmul FLOPs of one training step (forward + backward) of the 784-400-20 VAE; see the docstring."""
    forward = 2 * batch * (784 * 400 + 400 * 40 + 20 * 400 + 400 * 784)
    return 3 * forward - 2 * batch * 784 * 400


@dataclass(frozen=True)
class Settings:
    device: torch.device
    rounds: int
    block_s: float
    warmup: int
    batch_sizes: tuple[int, ...]
    child_rounds: int = 3  # rounds of the child-process sections (contention; cold start runs one fewer)


@dataclass
class Variant:
    """One timed thing: ``call`` runs one step (its state kept inside); ``ref`` names its reference."""

    name: str
    call: Callable[[], object]
    sync: Callable[[], None]
    settle: Callable[[], None] = lambda: None  # after each block, off the clock
    flops: float | None = None
    examples: int | None = None
    ref: str | None = None
    compiled: bool = False
    batch: int | None = None
    products: str = "fp32"  # the dtype of its matrix products: which peak its GFLOP/s compare with
    stats: dict = field(default_factory=dict)


class Chain:
    """A training loop reduced to its step: ``fn(*state, *args)`` returns the next state first."""

    def __init__(self, fn: Callable, state: tuple, args: tuple, keep: int):
        self.fn, self.state, self.args, self.keep = fn, tuple(state), tuple(args), keep

    def __call__(self):
        self.state = tuple(self.fn(*self.state, *self.args)[:self.keep])

    def own_memory(self):
        """Copy the state out of a CUDA graph's output buffers, which another variant's replay may reuse."""
        self.state = optree.tree_map(torch.clone, self.state)


# ---------------------------------------------------------------- timing


def graph_count() -> int:
    return counters["stats"]["unique_graphs"]


def measure(variants: list[Variant], cfg: Settings) -> None:
    """Warm up each variant, then time them interleaved; fills each ``variant.stats``."""
    for v in variants:
        v.stats = warm_up(v, cfg)
    before = graph_count()
    samples = {v.name: [] for v in variants}
    for r in range(cfg.rounds):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            samples[v.name].append(time_block(v, v.stats["calls_per_block"]))
    compiled_while_timing = graph_count() - before
    for v in variants:
        v.stats.update(summarise(samples[v.name], v))
        v.stats["graphs_compiled_while_timing"] = compiled_while_timing
        first = v.stats["first_call_s"] - v.stats["median_s"]
        v.stats["compile_s"] = max(first, 0.0) if v.compiled else None


def warm_up(v: Variant, cfg: Settings) -> dict:
    """The first call (timed: compilation), ``cfg.warmup`` more, then the block length for ``cfg.block_s``."""
    g0 = graph_count()
    v.sync()
    t0 = time.perf_counter()
    v.call()
    v.sync()
    first = time.perf_counter() - t0
    g1 = graph_count()
    for _ in range(cfg.warmup):
        v.call()
    v.sync()
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < cfg.block_s / 4:
        v.call()
        v.sync()
        n += 1
    per_call = (time.perf_counter() - t0) / n
    v.settle()
    return {"first_call_s": first, "graphs": g1 - g0, "recompiles": graph_count() - g1,
            "calls_per_block": max(1, round(cfg.block_s / per_call))}


def time_block(v: Variant, n: int) -> float:
    """Seconds per call over ``n`` consecutive calls."""
    v.sync()
    t0 = time.perf_counter()
    for _ in range(n):
        v.call()
    v.sync()
    seconds = (time.perf_counter() - t0) / n
    v.settle()
    return seconds


def summarise(samples: list[float], v: Variant) -> dict:
    q1, _, q3 = statistics.quantiles(samples, n=4)
    median = statistics.median(samples)
    out = {"median_s": median, "median_ms": median * 1e3, "iqr_ms": (q3 - q1) * 1e3,
           "samples_ms": [s * 1e3 for s in samples], "gflops": None, "examples_per_s": None}
    if v.flops is not None:
        out["gflops"] = v.flops / median / 1e9
    if v.examples is not None:
        out["examples_per_s"] = v.examples / median
    return out


# ---------------------------------------------------------------- the torch side


def syncer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def batch_data(batch: int, device: torch.device, models: int | None = None, seed: int = 0, noise: int = LATENT):
    """A fixed batch: x uniform in [0, 1], eps standard normal (K = 1, ``noise`` numbers), beta 1, weights 1 (no
    padding)."""
    g = torch.Generator().manual_seed(seed)
    lead = (batch,) if models is None else (models, batch)
    x = torch.rand(*lead, 784, generator=g).to(device)
    eps = torch.randn(*lead, 1, noise, generator=g).to(device)
    beta = torch.ones(() if models is None else (models,), device=device)
    return x, eps, beta, torch.ones(batch, device=device)


def baseline_variant(batch: int, device: torch.device, name: str) -> Variant:
    """The classic eager nn.Module step: summed BCE + KL, backward, torch.optim.Adam."""
    torch.manual_seed(0)
    model = ClassicVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    x, eps, _, _ = batch_data(batch, device)
    eps = eps[:, 0]

    def call():
        mu, logvar = model.encode(x)
        logits = model.decode(mu + torch.exp(0.5 * logvar) * eps)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
        opt.zero_grad()
        (recon.sum() + kl.sum()).backward()
        opt.step()
    return Variant(name, call, syncer(device), flops=step_flops(batch), examples=batch, batch=batch)


def funcvae_step(params: funcvae.Params, lr: float = LR, bf16: bool = False, guarded: bool = True,
                 scale: int | None = None):
    """The step ``fit`` runs (guarded) or the same without its non-finite guard (what the baseline and JAX
    steps do: for scale only), and its starting state; ``scale``: its batches are uint8 pixel levels."""
    objective = objectives.elbo()
    optimizer = apply_if_finite(adam(lr), freeze=True) if guarded else adam(lr)
    step = make_train_step(params.model, objective, optimizer, matmul_dtype=torch.bfloat16 if bf16 else None,
                           scale=scale)
    return step, init_state(params, objective, optimizer)


def funcvae_variant(batch: int, device: torch.device, compiled: bool, name: str, calls: int = 1,
                    bf16: bool = False, guarded: bool = True, scale: int | None = None) -> Variant:
    """funcvae's training step on one model, eager or through ``compile_step``; ``calls`` steps per call; ``bf16``:
    matrix products in bfloat16 (``matmul_dtype``), all else in fp32; ``guarded=False``: without the guard;
    ``scale``: the batch as uint8 pixel levels that the step divides by it (how fit holds 8-bit data)."""
    step, state = funcvae_step(funcvae.init(seed=0, device=device), bf16=bf16, guarded=guarded, scale=scale)
    run = compile_step(step, device, compiled, key=step.key)
    x, eps, _, weights = batch_data(batch, device)
    if scale is not None:
        x = fit_speed.pixels(batch).to(device)
    chain = Chain(run, (state,), (Batch(x, eps, weights),), keep=1)

    def call():
        for _ in range(calls):
            chain()
    settle = chain.own_memory if compiled and device.type == "cuda" else (lambda: None)
    return Variant(name, call, syncer(device), settle, flops=calls * step_flops(batch), examples=calls * batch,
                   compiled=compiled, batch=batch, products="bf16" if bf16 else "fp32")


def stacked_variant(device: torch.device) -> Variant:
    """N_MODELS models in one compiled ``stacked(step)``, lrs spread over 3e-4 .. 3e-3."""
    lrs = [3e-4 * 10 ** (i / (N_MODELS - 1)) for i in range(N_MODELS)]
    pairs = [funcvae_step(funcvae.init(seed=i, device=device), lr=lr) for i, lr in enumerate(lrs)]
    step = pairs[0][0]
    states = optree.tree_map(lambda *t: torch.stack(t), *[state for _, state in pairs])
    run = compile_step(stacked(step), device, True, key=(step.key, "stack"))
    x, eps, _, weights = batch_data(128, device, N_MODELS)
    chain = Chain(run, (states,), (Batch(x, eps, weights.expand(N_MODELS, -1)),), keep=1)
    settle = chain.own_memory if device.type == "cuda" else (lambda: None)
    return Variant(f"stacked compiled step, {N_MODELS} models", chain, syncer(device), settle,
                   flops=N_MODELS * step_flops(128), examples=N_MODELS * 128, compiled=True, batch=128)


def families() -> list[tuple[str, funcvae.Model, Callable[[], torch.nn.Module]]]:
    """The built-in families timed against their ``nn.Module`` twins: (label, model, a maker of its twin of the
    same sizes)."""
    return [("ladder", funcvae.models.ladder(hidden=(512, 256), latents=(64, 32)),
             partial(LadderTwin, hidden=(512, 256), latents=(64, 32))),
            ("IAF", funcvae.models.mlp(posterior="iaf", hidden=(400,), latent=20, flow_steps=2),
             partial(IAFTwin, width=400, latent=20, steps=2, made_hidden=400))]  # funcvae's MADE width: hidden[-1]


def twin_variant(model: funcvae.Model, make_twin: Callable, batch: int, device: torch.device, compiled: bool,
                 name: str) -> Variant:
    """A twin's step from ``model``'s initial params: its forward loss (mean over the batch), backward,
    ``torch.optim.Adam``; ``compiled``: the forward, and with it the backward, through ``torch.compile``."""
    twin = load_tree(make_twin().to(device), model.init(0, device=device).tree)
    opt = torch.optim.Adam(twin.parameters(), lr=LR)
    x, eps, _, _ = batch_data(batch, device, noise=model.noise_size)
    eps = model.split(eps[:, 0])
    backend = compile_backend(True, device) if compiled else None
    loss = twin if backend is None else torch.compile(twin, backend=backend, mode=compile_mode(backend, device),
                                                      fullgraph=True, dynamic=False)

    def call():
        opt.zero_grad()
        loss(x, eps).backward()
        opt.step()
    return Variant(name, call, syncer(device), examples=batch, compiled=backend is not None, batch=batch)


def family_variant(model: funcvae.Model, batch: int, device: torch.device, compiled: bool, name: str) -> Variant:
    """funcvae's step of ``model`` (ELBO, plain Adam), eager or through ``compile_step`` as in funcvae_variant."""
    objective, optimizer = objectives.elbo(), adam(LR)
    step = make_train_step(model, objective, optimizer)
    run = compile_step(step, device, compiled, key=step.key)
    x, eps, _, weights = batch_data(batch, device, noise=model.noise_size)
    chain = Chain(run, (init_state(model.init(0, device=device), objective, optimizer),), (Batch(x, eps, weights),),
                  keep=1)
    settle = chain.own_memory if compiled and device.type == "cuda" else (lambda: None)
    return Variant(name, chain, syncer(device), settle, examples=batch, compiled=compiled, batch=batch)


def _one_loss(params: funcvae.Params, x: Tensor, eps: Tensor, beta: Tensor):
    terms = objectives.elbo().terms(params, x, eps, {"beta": beta})
    return terms["loss"], terms


def per_example_variants(device: torch.device, batch: int = 32) -> list[Variant]:
    """Loop of single-example grads (the reference), vmap(grad) eager and compiled."""
    params = funcvae.init(seed=0, device=device)
    x, eps, beta, _ = batch_data(batch, device)
    one = torch.func.grad(_one_loss, has_aux=True)
    backend = compile_backend(True, device)
    compiled = example_grads if backend is None else torch.compile(example_grads, backend=backend,
                                                                   fullgraph=True, dynamic=False)
    loop = "loop of torch.func.grad (eager)"
    sync, flops = syncer(device), step_flops(batch)
    return [Variant(loop, lambda: [one(params, x[i], eps[i], beta) for i in range(batch)], sync,
                    flops=flops, examples=batch, batch=batch),
            Variant("vmap(grad) eager", lambda: example_grads(params, x, eps, beta), sync, flops=flops,
                    examples=batch, ref=loop, batch=batch),
            Variant("vmap(grad) compiled", lambda: compiled(params, x, eps, beta), sync, flops=flops,
                    examples=batch, ref=loop, compiled=backend is not None, batch=batch)]


def gemm_variants(device: torch.device, size: int = 1024) -> list[Variant]:
    """A size^3 fp32 product by torch.mm and, on CPU, by oneDNN's linear (X W^T); the same bf16 product by
    torch.mm (the peak of the bf16 rows)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(device) for _ in range(2))
    a16, b16 = a.bfloat16(), b.bfloat16()
    flops = 2 * size**3
    out = [Variant("torch.mm", lambda: torch.mm(a, b), syncer(device), flops=flops)]
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        linear = torch.ops.mkldnn._linear_pointwise.default  # (X, W, B, attr, scalars, algorithm) -> X W^T + B
        out.append(Variant("mkldnn._linear_pointwise", lambda: linear(a, b, None, "none", [], ""),
                           syncer(device), flops=flops, ref="torch.mm"))
    out.append(Variant("torch.mm bf16", lambda: torch.mm(a16, b16), syncer(device), flops=flops, ref="torch.mm",
                       products="bf16"))
    return out


# ---------------------------------------------------------------- JAX (optional)


def jax_or_reason(device: torch.device):
    """(jax module, None) when JAX is importable and has a backend for ``device``, else (None, reason)."""
    try:
        import jax
    except ImportError:
        return None, "jax not installed"
    platform = "gpu" if device.type == "cuda" else "cpu"
    try:
        jax.devices(platform)
    except RuntimeError:
        return None, f"jax {jax.__version__} has no {platform} backend here"
    return jax, None


def _jax_loss(jax, p: dict, x, eps, beta):
    """Per-example loss (recon + beta * kl) in nats; x (..., 784), eps (..., 20); the same maths as funcvae."""
    jnp = jax.numpy

    def dense(q, h):
        return h @ q["kernel"].T + q["bias"]
    enc, dec = p["encoder"], p["decoder"]
    h = jax.nn.relu(dense(enc["hidden_0"], x))
    mean, logvar = dense(enc["mean"], h), dense(enc["logvar"], h)
    logits = dense(dec["out"], jax.nn.relu(dense(dec["hidden_0"], mean + jnp.exp(0.5 * logvar) * eps)))
    recon = -(x * logits - jax.nn.softplus(logits)).sum(-1)
    kl = -0.5 * (1.0 + logvar - mean**2 - jnp.exp(logvar)).sum(-1)
    return recon + beta * kl


def _jax_step(jax, p, state, x, eps, beta, weights):
    """One step: weighted mean loss, its gradient, Adam with torch.optim.Adam's arithmetic."""
    jnp, tree_map = jax.numpy, jax.tree_util.tree_map

    def objective(q):
        return (_jax_loss(jax, q, x, eps, beta) * weights).sum() / weights.sum()
    loss, g = jax.value_and_grad(objective)(p)
    count, mu, nu = state
    count = count + 1.0
    mu = tree_map(lambda m, d: B1 * m + (1.0 - B1) * d, mu, g)
    nu = tree_map(lambda v, d: B2 * v + (1.0 - B2) * d * d, nu, g)
    step, root = LR / (1.0 - B1**count), jnp.sqrt(1.0 - B2**count)
    p = tree_map(lambda w, m, v: w - step * m / (jnp.sqrt(v) / root + ADAM_EPS), p, mu, nu)
    return p, (count, mu, nu), loss


def _to_jax(jax, device: torch.device, *tensors):
    target = jax.devices("gpu" if device.type == "cuda" else "cpu")[0]
    return jax.device_put(optree.tree_map(lambda t: t.detach().cpu().numpy(), tensors), target)


def jax_step_variant(jax, device: torch.device, batch: int = 128) -> Variant:
    """``jax.jit`` of the whole step, params and optimiser state donated, from funcvae's initial params."""
    params = funcvae.init(seed=0).tree
    p, x, eps, beta, weights = _to_jax(jax, device, params, *batch_data(batch, torch.device("cpu")))
    zeros = jax.tree_util.tree_map(jax.numpy.zeros_like, p)
    state = (jax.numpy.zeros((), jax.numpy.float32), zeros, jax.tree_util.tree_map(jax.numpy.zeros_like, p))
    chain = Chain(jax.jit(partial(_jax_step, jax), donate_argnums=(0, 1)), (p, state),
                  (x, eps[:, 0], beta, weights), keep=2)
    return Variant("jax jit", chain, lambda: jax.block_until_ready(chain.state), flops=step_flops(batch),
                   examples=batch, compiled=True, batch=batch)


def jax_per_example_variant(jax, device: torch.device, ref: str, batch: int = 32) -> Variant:
    """``jit(vmap(grad))`` of the one-example loss."""
    p, x, eps, beta, _ = _to_jax(jax, device, funcvae.init(seed=0).tree, *batch_data(batch, torch.device("cpu")))
    fn = jax.jit(jax.vmap(jax.grad(partial(_jax_loss, jax)), in_axes=(None, 0, 0, None)))
    last = []

    def call():
        last[:] = [fn(p, x, eps[:, 0], beta)]
    return Variant("jax jit(vmap(grad))", call, lambda: jax.block_until_ready(last), flops=step_flops(batch),
                   examples=batch, ref=ref, compiled=True, batch=batch)


# ---------------------------------------------------------------- sections


def run_step(cfg: Settings, jax, why_no_jax: str | None) -> dict:
    dev = cfg.device
    variants = [baseline_variant(128, dev, "baseline nn.Module eager"),
                funcvae_variant(128, dev, False, "funcvae eager"), funcvae_variant(128, dev, True, "funcvae compiled"),
                funcvae_variant(128, dev, True, "funcvae compiled bf16 products", bf16=True),
                funcvae_variant(128, dev, True, "funcvae compiled, no guard", guarded=False)]
    if jax is not None:
        variants.append(jax_step_variant(jax, dev))
    for v in variants[1:]:
        v.ref = variants[0].name
    measure(variants, cfg)
    return section("step: MLP 784-400-20, batch 128, fp32 (bf16 products where named), loss + gradients + Adam; "
                   "ratio vs the baseline",
                   variants, [f"jax jit: {why_no_jax}"] if jax is None else [])


def run_per_example(cfg: Settings, jax, why_no_jax: str | None) -> dict:
    variants = per_example_variants(cfg.device)
    if jax is not None:
        variants.append(jax_per_example_variant(jax, cfg.device, ref=variants[0].name))
    measure(variants, cfg)
    return section("per-example: gradient of each example's loss, batch 32; ratio vs the loop", variants,
                   [f"jax jit(vmap(grad)): {why_no_jax}"] if jax is None else [])


def run_stack(cfg: Settings, jax, why_no_jax: str | None) -> dict:
    sequential = funcvae_variant(128, cfg.device, True, f"{N_MODELS} sequential compiled steps", calls=N_MODELS)
    stacked = stacked_variant(cfg.device)
    stacked.ref = sequential.name
    variants = [sequential, stacked]
    measure(variants, cfg)
    return section(f"stack: {N_MODELS} models, batch 128 each, one step of all; ratio vs sequential steps", variants,
                   [f"sequential: the compiled single-model step called {N_MODELS} times (8 separate fits)"])


def run_families(cfg: Settings, jax, why_no_jax: str | None) -> dict:
    variants = []
    for label, model, make_twin in families():
        ref = twin_variant(model, make_twin, 128, cfg.device, False, f"{label} nn.Module eager")
        others = [twin_variant(model, make_twin, 128, cfg.device, True, f"{label} nn.Module compiled"),
                  family_variant(model, 128, cfg.device, False, f"{label} funcvae eager"),
                  family_variant(model, 128, cfg.device, True, f"{label} funcvae compiled")]
        for v in others:
            v.ref = ref.name
        variants += [ref, *others]
    measure(variants, cfg)
    return section("families: Ladder VAE (512-256, 64-32) and IAF MLP (784-400-20, 2 steps), batch 128, fp32, "
                   "loss + gradients + Adam; ratio vs its nn.Module twin, eager", variants,
                   ["nn.Module compiled: the twin's forward and backward through torch.compile, Adam eager; "
                    "funcvae: plain Adam, no non-finite guard"])


def run_batch_sizes(cfg: Settings, jax, why_no_jax: str | None) -> dict:
    variants = []
    for b in cfg.batch_sizes:
        base = baseline_variant(b, cfg.device, f"baseline nn.Module eager B={b}")
        comp = funcvae_variant(b, cfg.device, True, f"funcvae compiled B={b}")
        bf16 = funcvae_variant(b, cfg.device, True, f"funcvae compiled bf16 B={b}", bf16=True)
        comp.ref = bf16.ref = base.name
        variants += [base, comp, bf16]
    measure(variants, cfg)
    return section("batch-sizes: one training step; ratio vs the baseline at the same batch size", variants, [])


def run_gemm(cfg: Settings, jax, why_no_jax: str | None) -> dict:
    variants = gemm_variants(cfg.device)
    measure(variants, cfg)
    out = section("gemm: 1024 x 1024 x 1024 product; the peak of each dtype is the best of its rows", variants, [])
    out["peaks"] = {}
    for products in ("fp32", "bf16"):
        best = max((r for r in out["rows"] if r["products"] == products), key=lambda r: r["gflops"])
        out["peaks"][products] = {"gflops": best["gflops"], "kernel": best["name"]}
    out["peak"] = out["peaks"]["fp32"]
    return out


def run_epoch(cfg: Settings, jax, why_no_jax: str | None) -> dict:
    """fit's epoch (its own record of the epoch's seconds) against the same number of calls of the compiled
    step it runs, one of each per round, interleaved."""
    n = EPOCH_EXAMPLES
    steps = steps_per_epoch(n, 128)
    x = fit_speed.pixels(n).to(cfg.device)
    params = funcvae.init(seed=0, device=cfg.device)
    run_fit = lambda: funcvae.fit(params, x, epochs=1, batch_size=128, seed=0, scale=255,  # noqa: E731
                                  progress=False)[1][0]["seconds"]
    step = funcvae_variant(128, cfg.device, True, f"compiled step x {steps}", calls=steps, scale=255)
    run_fit()
    warm_up(step, cfg)
    fits, blocks = [], []

    def block():
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):  # as fit runs its step after the second
            blocks.append(time_block(step, 1))
    for r in range(cfg.rounds):
        pair = [lambda: fits.append(run_fit()), block]
        for go in pair if r % 2 == 0 else reversed(pair):
            go()
    rows = [{"name": name, **summarise(samples, step), "ref": step.name}
            for name, samples in ((f"fit epoch, {n} examples ({steps} steps)", fits), (step.name, blocks))]
    for r in rows:
        r["ratio"] = r["median_s"] / rows[1]["median_s"]
    return {"title": f"epoch: fit's epoch (seconds it records) vs {steps} compiled steps; uint8 data, batch 128",
            "rows": rows, "notes": [], "kind": "plain"}


def run_contention(cfg: Settings, jax, why_no_jax: str | None) -> dict:
    """fit epochs in child processes, alone and beside one busy process, sharing the cores (fit's default) and
    with torch's thread count fixed."""
    variants = {"shared cores": [], "fixed threads": ["--fixed-threads"]}
    result = fit_speed.contention(cfg.child_rounds, EPOCH_EXAMPLES, 3, variants)
    base = result["shared cores"]["median_s"]
    rows = [{"name": name, "median_s": r["median_s"], "median_ms": r["median_s"] * 1e3,
             "samples_ms": [v * 1e3 for v in r["epoch_s"]], "ratio": r["median_s"] / base, "ref": "shared cores"}
            for name, r in result.items()]
    return {"title": f"contention: a fit epoch ({EPOCH_EXAMPLES} examples) in a child process, alone or beside one "
                     "busy Python process; ratio vs shared cores alone",
            "rows": rows, "notes": ["shared cores: fit's default (funcvae._runtime.threads); fixed threads: "
                                    "fit(share_cores=False)"], "kind": "plain"}


def run_mkl_mode(cfg: Settings, jax, why_no_jax: str | None) -> dict:
    """fit epochs in child processes with MKL in its strict reproducible mode (funcvae's) and in its default."""
    result = fit_speed.mkl_modes(cfg.child_rounds, EPOCH_EXAMPLES, 3)
    rows = []
    for name, r in result.items():
        ref = name.split(",")[0] + ", MKL's default"
        rows.append({"name": name, "median_s": r["median_s"], "median_ms": r["median_s"] * 1e3,
                     "samples_ms": [v * 1e3 for v in r["epoch_s"]], "ratio": r["median_s"] / result[ref]["median_s"],
                     "ref": ref})
    return {"title": f"mkl-mode: a fit epoch ({EPOCH_EXAMPLES} examples) in a child process, MKL in its strict "
                     "reproducible mode (funcvae's) or its default; ratio vs the default",
            "rows": rows, "notes": ["the compiled step multiplies with MKL on Intel CPUs, with oneDNN on others"],
            "kind": "plain"}


def run_cold_start(cfg: Settings, jax, why_no_jax: str | None) -> dict:
    """Seconds from calling fit to the end of its first step in a fresh process, empty compile cache and warm."""
    result = fit_speed.cold_start(max(1, cfg.child_rounds - 1))
    rows = [{"name": "first step, empty compile cache", "median_s": result["cold_median_s"],
             "samples_ms": [v * 1e3 for v in result["cold_s"]]},
            {"name": "first step, warm compile cache", "median_s": result["warm_median_s"],
             "samples_ms": [v * 1e3 for v in result["warm_s"]]}]
    for r in rows:
        r["median_ms"], r["ratio"], r["ref"] = r["median_s"] * 1e3, None, None
    return {"title": "cold-start: a fresh process, fit on one batch; seconds from the call to its first step done",
            "rows": rows, "notes": [], "kind": "plain"}


def run_memory(cfg: Settings, jax, why_no_jax: str | None) -> dict:
    """Peak RSS that making 60,000 8-bit images and fitting one epoch on them adds, given as float32 / 255 and
    as uint8."""
    result = fit_speed.memory(60000)
    rows = [{"name": f"fit on {kind} data", "peak_rss_mb": r["peak_rss_mb"] - r["before_mb"],
             "data_mb": r["data_mb"], "before_mb": r["before_mb"]} for kind, r in result.items()]
    return {"title": "memory: a child makes 60,000 random 8-bit images (784 pixels) and fits one epoch (eager "
                     "step); peak RSS above the process's before",
            "rows": rows, "notes": [f"before (torch loaded, model made): {rows[0]['before_mb']:.0f} MB"],
            "kind": "memory"}


RUNNERS = {"step": run_step, "per-example": run_per_example, "stack": run_stack, "families": run_families,
           "gemm": run_gemm, "batch-sizes": run_batch_sizes,  # gemm before batch-sizes: its percentages need the peak
           "epoch": run_epoch, "contention": run_contention, "mkl-mode": run_mkl_mode, "cold-start": run_cold_start,
           "memory": run_memory}


def section(title: str, variants: list[Variant], notes: list[str]) -> dict:
    """A section's rows: each variant's stats, its ratio to its reference and how compile time is shown."""
    by_name = {v.name: v for v in variants}
    rows = []
    for v in variants:
        ref = by_name[v.ref] if v.ref else v
        ratio = v.stats["median_s"] / ref.stats["median_s"]
        reused = v.compiled and v.stats["graphs"] == 0 and not v.name.startswith("jax")
        rows.append({"name": v.name, "batch": v.batch, "products": v.products, "ref": ref.name, "ratio": ratio,
                     "speedup": 1.0 / ratio,
                     "compile_reused": reused, **v.stats})
    timing = max(v.stats["graphs_compiled_while_timing"] for v in variants)
    if timing:
        notes = notes + [f"WARNING: {timing} graph(s) compiled while timing (a recompile): figures are suspect"]
    for r in rows:
        if r["recompiles"]:
            notes = notes + [f"WARNING: {r['name']} compiled {r['recompiles']} graph(s) after its first call"]
    noisy = [r["name"] for r in rows if r["iqr_ms"] > NOISY * r["median_ms"]]
    if noisy:
        notes = notes + [f"noisy (IQR > {NOISY:.0%} of the median; a busy machine?): {', '.join(noisy)}"]
    return {"title": title, "rows": rows, "notes": notes}


def attach_peak(results: dict) -> None:
    """GFLOP/s as a percentage of the measured peak of the row's product dtype, on every row of batch-sizes."""
    if "gemm" in results and "batch-sizes" in results:
        peaks = results["gemm"]["peaks"]
        for r in results["batch-sizes"]["rows"]:
            r["pct_peak"] = 100.0 * r["gflops"] / peaks[r["products"]]["gflops"]


# ---------------------------------------------------------------- report


def _cell(value, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


def print_plain(result: dict) -> None:
    """A section of times (or, kind "memory", of peak memory) without FLOP rates."""
    print(f"\n{result['title']}")
    if result["kind"] == "memory":
        head = f"{'variant':<46}{'peak RSS MB':>12}{'data MB':>10}"  # peak: above the process's before
        print(f"{head}\n{'-' * len(head)}")
        for r in result["rows"]:
            print(f"{r['name']:<46}{r['peak_rss_mb']:>12.0f}{r['data_mb']:>10.0f}")
    else:
        head = f"{'variant':<46}{'median s':>10}{'range s':>16}{'ratio':>8}"
        print(f"{head}\n{'-' * len(head)}")
        for r in result["rows"]:
            lo, hi = min(r["samples_ms"]) / 1e3, max(r["samples_ms"]) / 1e3
            ratio = "" if r["ratio"] is None else f"{r['ratio']:>7.2f}x"
            print(f"{r['name']:<46}{r['median_s']:>10.3f}{f'{lo:.3f}-{hi:.3f}':>16}{ratio:>8}")
    for note in result["notes"]:
        print(f"  note: {note}")


def print_section(result: dict) -> None:
    if "kind" in result:
        print_plain(result)
        return
    rows = result["rows"]
    extra = "pct_peak" in rows[0]
    head = (f"{'variant':<38}{'ms/call':>10}{'IQR ms':>9}{'ratio':>8}{'speed-up':>9}{'GFLOP/s':>9}"
            + (f"{'ex/s':>10}{'% peak':>8}" if extra else "") + f"{'compile s':>11}")
    print(f"\n{result['title']}\n{head}\n{'-' * len(head)}")
    for r in rows:
        compile_s = "reused" if r["compile_reused"] else ("-" if r["compile_s"] is None else f"{r['compile_s']:.1f}")
        line = (f"{r['name']:<38}{r['median_ms']:>10.3f}{r['iqr_ms']:>9.3f}{r['ratio']:>7.2f}x{r['speedup']:>8.2f}x"
                + _cell(r["gflops"], ".1f", 9))
        if extra:
            line += _cell(r["examples_per_s"], ".0f", 10) + _cell(r.get("pct_peak"), ".1f", 8)
        print(line + f"{compile_s:>11}")
    for note in result["notes"]:
        print(f"  note: {note}")
    for products, peak in result.get("peaks", {}).items():
        print(f"  peak {products} GEMM: {peak['gflops']:.1f} GFLOP/s ({peak['kernel']})")


def _row(results: dict, section_name: str, name: str) -> dict | None:
    rows = results.get(section_name, {}).get("rows", [])
    return next((r for r in rows if r["name"] == name), None)


def _target(text: str, value: float | None, goal: float, at_most: bool, unit: str, why: str) -> dict:
    ok = None if value is None else (value <= goal if at_most else value >= goal)
    return {"target": text, "value": value, "goal": goal, "at_most": at_most, "unit": unit, "pass": ok,
            "why_not_measured": None if value is not None else why}


def _time_ratio(results: dict, section_name: str, name: str, ref: str) -> float | None:
    a, b = _row(results, section_name, name), _row(results, section_name, ref)
    return None if a is None or b is None else a["median_s"] / b["median_s"]


def targets(results: dict, device: torch.device, why_no_jax: str | None) -> list[dict]:
    """The speed targets of the issue, each with its measured value (None where it was not measured)."""
    jax_why = why_no_jax or "section not run"
    # JAX's step: level on an Intel CPU or a GPU, within 10% on other CPUs (inductor's C++ against XLA's).
    intel = funcvae._runtime.gemm.cpu_vendor() == "GenuineIntel" or device.type != "cpu"
    out = [_target("compiled step <= 0.5x the baseline (batch 128)",
                   _time_ratio(results, "step", "funcvae compiled", "baseline nn.Module eager"), 0.5, True, "x",
                   "section step not run"),
           _target(f"compiled step <= {1.0 if intel else 1.1}x JAX jit (batch 128)",
                   _time_ratio(results, "step", "funcvae compiled", "jax jit"), 1.0 if intel else 1.1, True, "x",
                   jax_why)]
    bf16 = _time_ratio(results, "step", "funcvae compiled bf16 products", "funcvae compiled")
    amx = device.type == "cpu" and torch.cpu.get_capabilities().get("amx_bf16", False)
    out.append(_target("compiled step, bf16 products <= 0.6x fp32 (a CPU with AMX)", bf16 if amx else None, 0.6,
                       True, "x", "section step not run" if bf16 is None else
                       f"this CPU has no AMX; bf16 products give {bf16:.2f}x fp32 here"))
    for b in (b for b in BATCH_SIZES if b >= 1024):
        row = _row(results, "batch-sizes", f"funcvae compiled B={b}")
        out.append(_target(f"compiled step >= 60% of peak GEMM (batch {b})", row and row.get("pct_peak"),
                           60.0, False, "%", "sections batch-sizes and gemm not run at this batch size"))
    out.append(_target("per-example grads (compiled) <= 1.0x JAX jit(vmap(grad)) (batch 32)",
                       _time_ratio(results, "per-example", "vmap(grad) compiled", "jax jit(vmap(grad))"),
                       1.0, True, "x", jax_why))
    loop = _time_ratio(results, "per-example", "loop of torch.func.grad (eager)", "vmap(grad) compiled")
    out.append(_target("per-example grads (compiled) >= 2x faster than the loop (batch 32)", loop, 2.0, False, "x",
                       "section per-example not run"))
    out.append(_target("eager step <= 1.5x the eager nn.Module step (batch 128)",
                       _time_ratio(results, "step", "funcvae eager", "baseline nn.Module eager"), 1.5, True, "x",
                       "section step not run"))
    epoch = next(iter(results.get("epoch", {}).get("rows", [])), None)
    out.append(_target("fit's epoch <= 1.1x (steps x the compiled step's time)", epoch and epoch["ratio"], 1.1, True,
                       "x", "section epoch not run"))
    out.append(_target("epoch beside one busy process <= 1.7x the epoch alone",
                       _time_ratio(results, "contention", "shared cores, busy", "shared cores"), 1.7, True, "x",
                       "section contention not run"))
    out.append(_target("epoch alone, shared cores <= 1.05x fixed threads (the unloaded case not slowed)",
                       _time_ratio(results, "contention", "shared cores", "fixed threads"), 1.05, True, "x",
                       "section contention not run"))
    for kind in ("eager", "compiled"):
        out.append(_target(f"{kind} epoch, strict MKL <= 1.05x MKL's default mode",
                           _time_ratio(results, "mkl-mode", f"{kind}, strict MKL", f"{kind}, MKL's default"), 1.05,
                           True, "x", "section mkl-mode not run"))
    cold = _row(results, "cold-start", "first step, empty compile cache")
    out.append(_target("first step within 8 s of fit starting, empty compile cache", cold and cold["median_s"],
                       8.0, True, "s", "section cold-start not run"))
    warm = _row(results, "cold-start", "first step, warm compile cache")
    out.append(_target("first step within 2 s of fit starting, warm compile cache", warm and warm["median_s"],
                       2.0, True, "s", "section cold-start not run"))
    wide, narrow = _row(results, "memory", "fit on float32 data"), _row(results, "memory", "fit on uint8 data")
    saved = None if wide is None or narrow is None else (wide["peak_rss_mb"] - narrow["peak_rss_mb"]) / wide["data_mb"]
    out.append(_target("uint8 data saves >= 3/4 of the float32 set's size in peak RSS", saved, 0.75, False, "of",
                       "section memory not run"))
    goal = 4.0 if device.type == "cuda" else 1.5
    seq = _time_ratio(results, "stack", f"{N_MODELS} sequential compiled steps",
                      f"stacked compiled step, {N_MODELS} models")
    out.append(_target(f"{N_MODELS} stacked models >= {goal}x faster than {N_MODELS} sequential compiled steps",
                       seq, goal, False, "x", "section stack not run"))
    return out


def print_targets(rows: list[dict]) -> None:
    print("\ntargets")
    for t in rows:
        if t["value"] is None:
            print(f"  {t['target']:<72} {'':>9}  n/a ({t['why_not_measured']})")
        else:
            value = {"%": f"{t['value']:.1f}%", "s": f"{t['value']:.1f} s", "of": f"{t['value']:.2f}"}.get(
                t["unit"], f"{t['value']:.2f}x")
            print(f"  {t['target']:<72} {value:>9}  {'pass' if t['pass'] else 'MISS'}")


def describe_machine(device: torch.device, jax) -> dict:
    """baseline_vae.py's machine() plus the device, the CPU kernels torch uses and JAX's version."""
    info = machine()
    info.update({"device": str(device), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                 "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                 "jax": None if jax is None else jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS"),
                 "inductor_cpp_compiler": funcvae._runtime.compiling.has_cpp_compiler(),
                 "cpu_vendor": funcvae._runtime.gemm.cpu_vendor()})
    return info


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="smoke run: 3 rounds of 20 ms blocks, batch size 128 only")
    p.add_argument("--rounds", type=int, default=None, help="timed blocks per variant (default 15, quick 3)")
    p.add_argument("--block-ms", type=float, default=None, help="length of a timed block (default 200, quick 20)")
    p.add_argument("--warmup", type=int, default=None, help="calls after the first, untimed (default 5, quick 1)")
    p.add_argument("--child-rounds", type=int, default=None,
                   help="rounds of the contention section, cold-start one fewer (default 3, quick 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and JAX (default: torch's default, JAX's own pool)")
    p.add_argument("--json", type=Path, default=None, help="write every figure and the machine here")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.child_rounds is not None and args.child_rounds < 1:
        p.error("--child-rounds must be at least 1")
    if args.rounds is not None and args.rounds < 3:
        p.error("--rounds must be at least 3 (medians and quartiles)")
    return args


def set_threads(n: int) -> None:
    """torch's intra-op threads, and JAX's (through XLA_FLAGS, read when JAX is first imported)."""
    torch.set_num_threads(n)
    eigen = "false" if n == 1 else "true"
    flags = f"--xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={n}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()


def settings(args: argparse.Namespace) -> Settings:
    quick = args.quick
    pick = lambda value, full, short: value if value is not None else (short if quick else full)  # noqa: E731
    return Settings(device=torch.device(args.device), rounds=pick(args.rounds, 15, 3),
                    block_s=pick(args.block_ms, 200.0, 20.0) / 1e3, warmup=pick(args.warmup, 5, 1),
                    batch_sizes=(128,) if quick else BATCH_SIZES,
                    child_rounds=pick(args.child_rounds, 3, 1))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = settings(args)
    if args.threads is not None:
        set_threads(args.threads)
    wanted = set(args.only) | ({"gemm"} if "batch-sizes" in args.only else set())
    jax, why_no_jax = jax_or_reason(cfg.device)
    info = describe_machine(cfg.device, jax)
    print(f"{info['processor']} ({info['cpu_count']} cores, {info['torch_threads']} torch threads), "
          f"torch {info['torch']}, device {cfg.device}, jax {info['jax'] or '-'}; rounds {cfg.rounds}, "
          f"blocks of {cfg.block_s * 1e3:.0f} ms")
    start, results = time.perf_counter(), {}
    for name, runner in RUNNERS.items():
        if name in wanted:
            results[name] = runner(cfg, jax, why_no_jax)
            attach_peak(results)
            print_section(results[name])
    goals = targets(results, cfg.device, why_no_jax)
    print_targets(goals)
    print(f"\n{time.perf_counter() - start:.0f} s in all")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"command": " ".join(["python", "benchmarks/elbo_speed.py"] + (argv or sys.argv[1:])),
                  "settings": {**vars(cfg), "device": str(cfg.device)}, "machine": info,
                  "sections": results, "targets": goals, "seconds": time.perf_counter() - start}
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
