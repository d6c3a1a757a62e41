"""``fit``: minibatch training of a VAE's params (one model or a stack) with Adam on the (beta-weighted)
negative ELBO through one compiled, guarded step; checkpoints, exact resume, signals, data parallelism."""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import optree
import torch
from torch import Tensor
from tqdm.auto import tqdm

from funcvae import distributed
from funcvae.batches import model_batches
from funcvae.checkpoint import Checkpoint, load, save
from funcvae.compiling import make_step
from funcvae.distributions import check_support
from funcvae.elbo import evaluate
from funcvae.interrupt import Interrupted, deferred_signals
from funcvae.model import MATMUL_DTYPES, Params, stack_size
from funcvae.optim import adam
from funcvae.rng import generator
from funcvae.step import STATS, batch_grads, dp_train_step, guarded_update, stacked_train_step, train_step
from funcvae.validate import as_examples, check_int, check_nonnegative, check_positive

BINARIZE = (None, "dynamic")
ON_NONFINITE = ("raise", "skip")
CHECKPOINT_FILE = "checkpoint.safetensors"


class NonFiniteError(FloatingPointError):
    """A step met a non-finite loss term or gradient; the params were not updated by it."""


def fit(params: Params, data, *, epochs: int, batch_size: int = 128, lr: float | Sequence[float] = 1e-3,
        seed: int | Sequence[int] = 0, val_data=None, beta: float | Sequence[float] = 1.0, kl_warmup: float = 0,
        binarize: str | None = None, scale: float | None = None, clip_norm: float | None = None,
        noise_multiplier: float = 0.0, free_bits: float = 0.0, matmul_dtype: torch.dtype | str | None = None,
        compile: bool | str | Callable | None = None,
        checkpoint_dir: str | Path | None = None, resume: bool = False, checkpoint_every: int | None = None,
        on_nonfinite: str = "raise", progress: bool | None = None, callback: Callable[[dict], None] | None = None):
    """Train ``params`` on ``data``; returns new params and the per-epoch history (inputs are not modified).

    Args:
      params: from ``funcvae.init`` (any architecture), or a stack of N models from ``funcvae.stack``,
        trained together in one vmapped step; training runs on their device. Under ``torchrun`` (WORLD_SIZE
        > 1) each process takes its block of every batch, gradients are summed across processes as one
        flat buffer (gloo on CPU, NCCL on GPU), and only rank 0 writes checkpoints, prints and calls back;
        ``batch_size`` is the global batch and must divide by the number of processes.
      data: training examples: tensor, numpy array, Dataset or DataLoader (read once; fit batches the
        examples itself in a seeded order), shaped (N, F), (N, H, W) or (N, C, H, W).
      epochs: passes over the data.
      batch_size: examples per step; the last batch of an epoch may be smaller (no example is dropped).
      lr: Adam's learning rate.
      seed: names every random draw of the run (order, noise, binarisation): same seed, same data and
        same params give the same result, bit for bit on CPU. For a stack, ``seed``, ``lr`` and ``beta``
        may each be one value for all models or a sequence with one per model; model i of a stack
        trains exactly as ``fit`` of that model alone with its own seed, lr and beta would.
      val_data: held-out examples, evaluated after each epoch with the same noise every epoch.
      beta: KL weight of the objective ``recon + beta * kl``.
      kl_warmup: epochs over which the KL weight rises linearly from 0 to ``beta`` (step by step).
      binarize: "dynamic" draws binary pixels ~ Bernoulli(data) afresh for every batch (val data get one
        fixed draw), making the Bernoulli likelihood a true likelihood on grey-level images.
      scale: divide integer pixel data by this (e.g. 255).
      clip_norm: DP-SGD style: clip each example's gradient to this L2 norm (over all params) before
        averaging (per-example gradients by ``vmap(grad)``); None trains on the plain batch gradient.
      noise_multiplier: with ``clip_norm``, add Gaussian noise of std ``noise_multiplier * clip_norm`` to
        the summed clipped gradients (drawn from the run's seeded stream).
      free_bits: a floor, in nats, on each latent dimension's batch-mean KL in the objective (Kingma et
        al. 2016): a dimension below it feels no pull to the prior, a cure for posterior collapse. The
        reported ``kl`` and ``loss`` stay the true ones. Not with ``clip_norm`` or data parallelism.
      matmul_dtype: ``torch.bfloat16`` (or "bfloat16") runs the layers' matrix products in bfloat16 (mixed
        precision: the params, gradients, Adam state, loss terms and everything between the products stay
        in the params' dtype). Steps 1.2x faster at batch 128 and 2.2x at batch 1024 on a 2-core CPU with AMX
        (benchmarks/elbo_speed.py); on a GPU it uses the tensor cores; a CPU without AMX or AVX512-BF16
        emulates bfloat16 products and gets slower, not faster. The training terms then carry
        bfloat16 rounding (about 3 significant digits per product), the held-out evaluation does not.
        None (default): products in the params' dtype.
      compile: compile the whole step (loss, gradients, Adam) into one graph with ``torch.compile``.
        None (default): where a GPU or a C++ compiler is present, else a warning and the eager step;
        False: eager; a backend name or callable: that ``torch.compile`` backend. Compiling costs seconds
        once per run (about 10 s on 2 CPU cores cold, about 1 s with a warm cache) and is traced once.
      checkpoint_dir: keep ``checkpoint.safetensors`` here (params, Adam state, settings, history, epoch and
        step; written atomically): after every epoch, every ``checkpoint_every`` steps if set, and when
        SIGINT or SIGTERM arrives, which then ends ``fit`` at the next step boundary by raising
        ``Interrupted``. With a checkpoint_dir, signals never interrupt a step half-way.
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one (its settings and data
        must be those of this call, ``epochs`` may grow); the result is bit-identical (CPU) to a run that
        was never interrupted. ``params`` then only has to match the checkpoint's spec.
      checkpoint_every: also checkpoint every this many steps inside an epoch.
      on_nonfinite: what a step with a non-finite loss term or gradient does; the params and optimiser
        state are never touched by it. "raise" (default): stop with ``NonFiniteError`` naming the epoch,
        batch and term (recon, kl or gradient), the last checkpoint left as it was. The device is not read
        every step for this (a GPU would wait for the host): the run freezes on the device at its first bad
        step and raises at its next read, at the epoch's end or before the next checkpoint. "skip": go
        on without that step, counted in the history's ``skipped``.
      progress: show a progress bar; default: only when stderr is a terminal.
      callback: called with each epoch's history record as soon as it is complete.

    Returns:
      ``(params, history)``. ``history`` has one dict per epoch with ``epoch``, ``recon``, ``kl``, ``loss``
      (training averages over the epoch, nats per example), ``val_recon``, ``val_kl``, ``val_loss``
      (over the whole held-out set; None without ``val_data``), ``beta`` (KL weight at the epoch's end),
      ``skipped`` (steps skipped for non-finite values; their examples are left out of the averages)
      and ``seconds``. ``loss`` is always ``recon + beta * kl`` with the target ``beta``, so epochs stay
      comparable during warm-up (= -ELBO at beta = 1). For a stack: the stacked params and a list of
      N such histories.
    """
    n_models = stack_size(params)
    seeds, lrs, betas = _per_model(n_models, seed=seed, lr=lr, beta=beta)
    matmul_dtype = as_matmul_dtype(matmul_dtype)
    check_settings(epochs=epochs, batch_size=batch_size, lr=lrs, beta=betas, kl_warmup=kl_warmup, binarize=binarize,
                   clip_norm=clip_norm, noise_multiplier=noise_multiplier, stacked=n_models is not None,
                   checkpoint_every=checkpoint_every, on_nonfinite=on_nonfinite, seeds=seeds, free_bits=free_bits)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from")
    like = optree.tree_leaves(params.tree)[0]
    x = _examples(data, params, scale, like, binarize, "data")
    x_vals = None if val_data is None else held_out_sets(
        _examples(val_data, params, scale, like, binarize, "val_data"), seeds, binarize)
    if batch_size > x.shape[0]:
        raise ValueError(f"batch_size {batch_size} is larger than the data ({x.shape[0]} examples)")
    world = distributed.join(x.device)
    try:
        run = _Run(spec=params.spec, n_models=n_models, x=x, x_vals=x_vals, seeds=seeds, lrs=lrs, betas=betas,
                   batch_size=batch_size, epochs=epochs, kl_warmup=kl_warmup, binarize=binarize, clip_norm=clip_norm,
                   noise_std=noise_multiplier * (clip_norm or 0.0), free_bits=free_bits, matmul_dtype=matmul_dtype,
                   world=world, step=None,
                   checkpoint_every=checkpoint_every, on_nonfinite=on_nonfinite,
                   checkpoint=None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_FILE,
                   callback=callback, show=(sys.stderr.isatty() if progress is None else progress) and world.is_main)
        run = replace(run, step=_make_runner(run, compile))
        state = _start(run, params, resume)
        with deferred_signals(checkpoint_dir is not None) as received:
            while state.epoch < epochs:
                state = _run_epoch(run, state, received)
    finally:
        distributed.leave(world)
    # On a GPU the compiled step's outputs live in its CUDA graph's memory, which the next replay of that
    # graph (a later fit of the same model) overwrites: the caller gets params of its own.
    params = Params(state.params.spec, optree.tree_map(torch.clone, state.params.tree))
    return params, state.history[0] if n_models is None else state.history


@dataclass(frozen=True)
class _Run:
    """What stays fixed through a run."""

    spec: object
    n_models: int | None
    x: Tensor
    x_vals: list | None
    seeds: list
    lrs: list
    betas: list
    batch_size: int
    epochs: int
    kl_warmup: float
    binarize: str | None
    clip_norm: float | None
    noise_std: float
    free_bits: float
    matmul_dtype: torch.dtype | None
    world: distributed.World
    step: Callable | None
    checkpoint_every: int | None
    on_nonfinite: str
    checkpoint: Path | None
    callback: Callable | None
    show: bool

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.x.shape[0] / self.batch_size)

    def config(self) -> dict:
        """The settings a resumed run must share, with fingerprints of the data (JSON values)."""
        config = {"spec": self.spec.to_dict(), "stack": self.n_models, "seed": self.seeds, "lr": self.lrs,
                  "beta": self.betas, "batch_size": self.batch_size, "kl_warmup": self.kl_warmup,
                  "binarize": self.binarize, "clip_norm": self.clip_norm, "noise_std": self.noise_std,
                  "free_bits": self.free_bits,
                  "matmul_dtype": None if self.matmul_dtype is None else str(self.matmul_dtype).removeprefix("torch."),
                  "data": _fingerprint(self.x),
                  "val_data": None if self.x_vals is None else _fingerprint(self.x_vals[0])}
        return json.loads(json.dumps(config))  # as it reads back from a checkpoint (tuples become lists)


def _start(run: _Run, params: Params, resume: bool) -> Checkpoint:
    """The state training starts from: fresh, or the checkpoint's when resuming and one exists."""
    if run.checkpoint is not None and run.world.is_main:
        for stale in run.checkpoint.parent.glob(f".{run.checkpoint.name}.*.tmp"):
            stale.unlink()  # a write cut short by a kill; the checkpoint beside it is whole
    if resume and run.checkpoint.is_file():
        state = load(run.checkpoint, device=run.x.device)
        mismatch = {k: (v, state.config.get(k)) for k, v in run.config().items() if state.config.get(k) != v}
        if mismatch:
            diffs = "; ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (new, old) in mismatch.items())
            raise ValueError(f"cannot resume from {run.checkpoint}: it was made with other settings or data ({diffs})")
        return state
    return Checkpoint(params, adam(run.lrs[0]).init(params.tree), 0, 0, run.config(), [[] for _ in run.seeds])


def _run_epoch(run: _Run, state: Checkpoint, received: list) -> Checkpoint:
    """Train epoch ``state.epoch + 1`` (from step ``state.step`` when resuming mid-epoch)."""
    epoch, start, began = state.epoch + 1, state.step, time.perf_counter()
    device = run.x.device
    gens = [generator(s, "train", epoch, device=device) for s in run.seeds]
    acc = state.sums.to(device) if start else torch.zeros(len(run.seeds), len(STATS), dtype=run.x.dtype, device=device)
    rng_states = list(state.rng) if start else None
    batches = model_batches(run.x, run.batch_size, gens, run.spec.latent, run.binarize, run.n_models is not None,
                            start=start, rng_states=rng_states, shard=(run.world.rank, run.world.size))
    tree, opt_state, stop = state.params.tree, state.opt_state, False
    betas, watch = _betas(run, epoch), _watch_start(acc)
    for b, (xb, eps, weights) in enumerate(tqdm(batches, total=run.steps_per_epoch - start, leave=False,
                                                  desc=f"epoch {epoch}/{run.epochs}", disable=not run.show,
                                                  file=sys.stderr), start=start):
        tree, opt_state, stats, stop = run.step(tree, opt_state, xb, eps, betas[b], weights, b, gens[0], received,
                                                 watch.live)
        acc = _accumulate(acc, stats.view_as(acc))
        if run.on_nonfinite == "raise":
            watch = _watched(watch, stats, b)
        done = b + 1
        every = run.checkpoint_every and ((epoch - 1) * run.steps_per_epoch + done) % run.checkpoint_every == 0
        if (stop or every) and done < run.steps_per_epoch:
            _raise_if_frozen(run, watch, epoch)
            mid = replace(state, params=Params(run.spec, tree), opt_state=opt_state, step=done,
                          rng=torch.stack([g.get_state() for g in gens]), sums=acc)
            _save(run, mid)
        if stop:
            if done == run.steps_per_epoch:
                break  # the epoch is complete: finish it and save it as an epoch boundary below
            # A process that got no signal itself stops because another one did (they agree through the
            # all-reduce); torchrun forwards SIGTERM, so that is what it reports.
            raise Interrupted(received[0] if received else signal.SIGTERM, str(run.checkpoint))
    _raise_if_frozen(run, watch, epoch)
    history = _close_epoch(run, epoch, acc, tree, began)
    state = Checkpoint(Params(run.spec, tree), opt_state, epoch, 0, state.config,
                       [h + [r] for h, r in zip(state.history, history)])
    _save(run, state)
    if stop:
        raise Interrupted(received[0] if received else signal.SIGTERM, str(run.checkpoint))
    return state


def _make_runner(run: _Run, compile) -> Callable:
    """The step as fit calls it: ``(tree, opt_state, x, eps, beta, weights, b, gen, received, live) ->
    (tree, opt_state, stats, stop)`` for batch ``b``, compiled; ``stop`` says a signal asks to stop (agreed by
    all processes, which reads the all-reduced flag from the device every step)."""
    device, spec = run.x.device, run.spec
    if run.world.size > 1:
        if run.n_models is not None or run.clip_norm is not None or run.free_bits:
            raise ValueError("data-parallel fit trains one model on the plain batch objective (no stack, clip_norm "
                             "or free_bits)")
        if run.batch_size % run.world.size:
            raise ValueError(f"batch_size {run.batch_size} must divide by the {run.world.size} processes")
        grads_of = make_step(partial(batch_grads, spec, matmul_dtype=run.matmul_dtype), device, compile)
        update = make_step(partial(guarded_update, adam(run.lrs[0])), device, compile)
        counts = _counts(run)

        def parallel(tree, opt_state, xb, eps, beta, weights, b, gen, received, live):
            grads, stats = grads_of(tree, xb, eps, beta, weights, counts[b])
            grads, stats, flag = distributed.all_reduce_sum(grads, stats, float(bool(received)))
            return (*update(tree, opt_state, grads, stats, None, live), flag > 0)
        return parallel
    precision = {"matmul_dtype": run.matmul_dtype}
    if run.n_models is not None:
        step = make_step(partial(stacked_train_step, spec, adam(1.0), tuple(run.lrs), free_bits=run.free_bits,
                                 **precision), device, compile)
    elif run.clip_norm is not None:
        step = make_step(partial(dp_train_step, spec, adam(run.lrs[0]), run.clip_norm, **precision), device, compile)
    else:
        step = make_step(partial(train_step, spec, adam(run.lrs[0]), free_bits=run.free_bits, **precision), device,
                         compile)

    def local(tree, opt_state, xb, eps, beta, weights, b, gen, received, live):
        noise = () if run.clip_norm is None else (_noise(tree, gen, run.noise_std),)
        return (*step(tree, opt_state, xb, eps, beta, weights, *noise, live), bool(received))
    return local


def _noise(tree: dict, gen: torch.Generator, std: float) -> dict:
    """DP-SGD's noise, drawn at the boundary from the run's stream (after the batch's own draws)."""
    return optree.tree_map(lambda t: std * torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype), tree)


def _betas(run: _Run, epoch: int) -> Tensor:
    """The KL weight(s) of every batch of ``epoch``, (steps,) or (steps, N), made on the device once per
    epoch: linear warm-up over ``kl_warmup`` epochs, step by step."""
    steps = torch.arange((epoch - 1) * run.steps_per_epoch + 1, epoch * run.steps_per_epoch + 1,
                         dtype=torch.float64)
    warm = (steps / (run.kl_warmup * run.steps_per_epoch)).clamp(max=1.0) if run.kl_warmup else torch.ones_like(steps)
    betas = (warm.unsqueeze(-1) * torch.tensor(run.betas, dtype=torch.float64)).to(run.x.dtype).to(run.x.device)
    return betas if run.n_models is not None else betas[:, 0]


def _counts(run: _Run) -> Tensor:
    """Real rows in each batch of the whole (not sharded) batch, (steps,) on the device."""
    rows = [min(run.batch_size, run.x.shape[0] - b * run.batch_size) for b in range(run.steps_per_epoch)]
    return torch.tensor(rows, dtype=run.x.dtype, device=run.x.device)


def _accumulate(acc: Tensor, stats: Tensor) -> Tensor:
    """The epoch's sums after a step: its stats if it was applied, else only a count of 1 skipped."""
    applied = stats[..., -1:]
    return acc + torch.cat([torch.where(applied > 0, stats[..., :-1], 0.0), 1.0 - applied], -1)


class _Watch(NamedTuple):
    """How "raise" finds a run's first bad step without reading the device every step: ``live`` (0-d bool)
    is True until a step is not applied, and from then on keeps every later step from being applied;
    ``stats`` and ``batch`` are those of the last step taken while live, the bad one once ``live`` is False."""

    live: Tensor
    stats: Tensor
    batch: Tensor


def _watch_start(like: Tensor) -> _Watch:
    return _Watch(torch.ones((), dtype=torch.bool, device=like.device),
                  torch.zeros(like.numel(), dtype=like.dtype, device=like.device),
                  torch.zeros((), dtype=torch.int64, device=like.device))


def _watched(watch: _Watch, stats: Tensor, b: int) -> _Watch:
    """``watch`` after batch ``b``'s step reported ``stats``; device work only."""
    return _Watch(watch.live & (stats[..., -1] > 0).all(), torch.where(watch.live, stats.reshape(-1), watch.stats),
                  torch.where(watch.live, b, watch.batch))


def _raise_if_frozen(run: _Run, watch: _Watch, epoch: int) -> None:
    """NonFiniteError naming the first bad step if the run froze (one device read)."""
    if bool(watch.live):
        return
    rows = watch.stats.view(-1, len(STATS))
    m = int((rows[:, -1] == 0).nonzero()[0])
    term = "recon" if not torch.isfinite(rows[m, 0]) else "kl" if not torch.isfinite(rows[m, 1]) else "gradient"
    model = f" of model {m}" if run.n_models is not None else ""
    kept = f"; the last checkpoint, {run.checkpoint}, is untouched" if run.checkpoint else ""
    raise NonFiniteError(f"non-finite {term}{model} at epoch {epoch}, batch {int(watch.batch) + 1} of "
                         f"{run.steps_per_epoch}: the step was not applied{kept}. on_nonfinite='skip' goes on "
                         f"without such steps; a lower lr or a check of the data usually removes them")


def _close_epoch(run: _Run, epoch: int, acc: Tensor, tree: dict, began: float) -> list[dict]:
    """Each model's history record for the epoch; evaluation on held-out data; callbacks on rank 0."""
    sums = acc.tolist()  # one device read per epoch
    warm_beta = _betas(run, epoch)[-1].reshape(-1).tolist()
    records = []
    for m, (recon, kl, _, rows, skipped) in enumerate(sums):
        recon, kl = (recon / rows, kl / rows) if rows else (math.nan, math.nan)
        record = {"epoch": epoch, "recon": recon, "kl": kl, "loss": recon + run.betas[m] * kl,
                  "val_recon": None, "val_kl": None, "val_loss": None, "beta": warm_beta[m], "skipped": int(skipped)}
        if run.x_vals is not None:
            one = tree if run.n_models is None else optree.tree_map(lambda t: t[m], tree)
            val = evaluate(run.spec, one, run.x_vals[m], generator(run.seeds[m], "val", device=run.x.device),
                           beta=run.betas[m])
            record.update({f"val_{k}": float(v.mean()) for k, v in val.items()})
        record["seconds"] = time.perf_counter() - began
        records.append(record)
        if run.callback is not None and run.world.is_main:
            run.callback(record if run.n_models is None else {**record, "model": m})
    return records


def _save(run: _Run, state: Checkpoint) -> None:
    if run.checkpoint is not None and run.world.is_main:
        run.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save(run.checkpoint, state)


def _examples(data, params: Params, scale, like: Tensor, binarize, name: str) -> Tensor:
    x = as_examples(data, params.spec, scale=scale, like=like, name=name)
    if binarize == "dynamic":  # pixels become Bernoulli probabilities, whatever the likelihood
        check_support("bernoulli", x, name=name)
    return x


def held_out_sets(x_val: Tensor, seeds: list[int], binarize) -> list[Tensor]:
    """The held-out set each model is scored on: one fixed binary draw per seed under dynamic binarisation."""
    if binarize != "dynamic":
        return [x_val] * len(seeds)
    return [torch.bernoulli(x_val, generator=generator(s, "val-binarize", device=x_val.device)) for s in seeds]


def _fingerprint(x: Tensor) -> list:
    """Size, sum and a row-order-sensitive weighted sum: enough to tell that resumed data are not the same."""
    rows = x.sum(1, dtype=torch.float64)
    order = torch.arange(1, x.shape[0] + 1, dtype=torch.float64, device=x.device)
    return [list(x.shape), round(float(rows.sum()), 6), round(float((rows * order).sum()), 3)]


def _per_model(n_models: int | None, **values) -> list[list]:
    """Each of ``values`` as a list with one entry per model (one entry without a stack)."""
    out = []
    for name, value in values.items():
        if isinstance(value, (list, tuple)):
            if n_models is None or len(value) != n_models:
                where = "a stack of that many models" if n_models is None else f"the stack's {n_models} models"
                raise ValueError(f"{name} has {len(value)} values; a sequence needs {where}")
            out.append(list(value))
        else:
            out.append([value] * (n_models or 1))
    return out


def as_matmul_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """``fit``'s ``matmul_dtype`` as a dtype (a name such as "bfloat16" is looked up in torch); ValueError
    for one that is not allowed."""
    dtype = getattr(torch, value, None) if isinstance(value, str) else value
    if value is not None and dtype not in MATMUL_DTYPES:
        names = [str(d).removeprefix("torch.") for d in MATMUL_DTYPES]
        raise ValueError(f"matmul_dtype must be None or one of {names} (float16 would need loss scaling), got {value!r}")
    return dtype


def check_settings(*, epochs, batch_size, lr, beta, kl_warmup, binarize, clip_norm=None, noise_multiplier=0.0,
                   stacked=False, checkpoint_every=None, on_nonfinite="raise", seeds=(0,), free_bits=0.0) -> None:
    """Raise ValueError naming the first of ``fit``'s settings that is out of range (``lr``, ``beta`` and
    ``seeds`` may be lists, one value per model)."""
    check_int("epochs", epochs)
    check_int("batch_size", batch_size)
    for s in seeds:
        check_int("seed", s, minimum=0)
    for value in lr if isinstance(lr, (list, tuple)) else [lr]:
        check_positive("lr", value)
    for value in beta if isinstance(beta, (list, tuple)) else [beta]:
        check_nonnegative("beta", value)
    check_nonnegative("kl_warmup", kl_warmup)
    if binarize not in BINARIZE:
        raise ValueError(f"binarize must be one of {BINARIZE} (static binarisation is a data.load option), "
                         f"got {binarize!r}")
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
    if checkpoint_every is not None:
        check_int("checkpoint_every", checkpoint_every)
    check_nonnegative("noise_multiplier", noise_multiplier)
    check_nonnegative("free_bits", free_bits)
    if clip_norm is not None and free_bits:
        raise ValueError("free_bits floors the batch's KL per dimension, which per-example clipping cannot split")
    if clip_norm is not None:
        check_positive("clip_norm", clip_norm)
        if stacked:
            raise ValueError("clip_norm (per-example clipping) trains one model at a time, not a stack")
    elif noise_multiplier:
        raise ValueError("noise_multiplier needs clip_norm: the noise is scaled to the clipping norm")
