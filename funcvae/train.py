"""``fit``: minibatch training of a VAE's params (one model or a stack) through one compiled, guarded step
built from the model, an objective and an optimiser; checkpoints, exact resume, signals, data parallelism."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import optree
import torch
from torch import Tensor
from tqdm.auto import tqdm

from funcvae import distributed, lock, optim, shorthand
from funcvae.batches import model_batches
from funcvae.checkpoint import Checkpoint, describe, load, restore, save
from funcvae.compiling import make_step
from funcvae.config import FitConfig, per_model, steps_per_epoch
from funcvae.data import held_out
from funcvae.distributions import check_support
from funcvae.elbo import evaluate
from funcvae.interrupt import Interrupted, deferred_signals
from funcvae.model import Params, some_leaf, stack_size
from funcvae.objectives import mean_loss
from funcvae.rng import generator
from funcvae.step import STATS, Batch, TrainState, init_state, make_train_step, stacked
from funcvae.threads import shared_cores
from funcvae.validate import as_examples, as_levels, check_values, level_values, pixel_values

CHECKPOINT_FILE = "checkpoint.safetensors"
#: Rows of the data converted and hashed at a time by the data's fingerprint.
FINGERPRINT_ROWS = 4096


class NonFiniteError(FloatingPointError):
    """A step met a non-finite loss term or gradient; the params were not updated by it."""


def fit(params: Params, data, *, objective=None, optimizer=None, config: FitConfig | None = None, val_data=None,
        callbacks: Sequence[Callable[[dict], None]] = (), **settings):
    """Train ``params`` on ``data``; returns new params and the per-epoch history (inputs are not modified).

    Args:
      params: from ``model.init`` or ``funcvae.init``, or a stack of N models from ``funcvae.stack``, trained
        together as ``vmap`` of the one step; training runs on their device. Under ``torchrun``
        (WORLD_SIZE > 1) each process takes its block of every batch, gradients are summed across processes
        as one flat buffer between the step's two halves (gloo on CPU, NCCL on GPU), and only rank 0 writes
        checkpoints, prints and calls back; ``batch_size`` is the global batch and must divide by the
        number of processes.
      data: training examples: tensor, numpy array, Dataset (map-style or iterable), or DataLoader, whose items
        may be tensors, arrays or PIL images, alone or with a label (read once; fit batches the examples
        itself in a seeded order), shaped (N, F), (N, H, W) or (N, C, H, W). Integer or bool data with
        values in [0, 255] (8-bit pixels) are held as uint8, a quarter of float32's memory, and divided by
        ``scale`` inside the step: the model sees exactly the values ``(x.to(float64) / scale)`` in the
        params' dtype that it would see in data given as floats. Other data are held in the params' dtype.
      val_data: held-out examples, scored after each epoch by the ELBO (one sample, the same noise every
        epoch) at the objective's KL weight; converted to the params' dtype (``scale`` applies as to ``data``)
        and held so: a held-out set is small.
      objective: from ``funcvae.objectives`` (``elbo``, ``iwae``, ``free_bits``); for a stack, one for all
        or one per model, differing only in their numbers. Default: the beta-ELBO of the shorthand below.
      optimizer: from ``funcvae.optim`` (``adam``, ``adamw``, ``sgd``, ``chain(...)``); for a stack, one for
        all or one per model (e.g. ``[optim.adam(lr) for lr in lrs]``). Default: Adam of the shorthand below.
        fit wraps it in ``optim.apply_if_finite``: a step with a non-finite loss term or gradient is never
        applied (see ``on_nonfinite``).
      config: a ``FitConfig`` (``epochs``, ``batch_size``, ``seed``, checkpointing, ...).
      callbacks: each called with each epoch's history record as soon as it is complete (``callback=``, one
        function, is the old spelling, kept for one release).
      **settings: ``FitConfig``'s fields as keywords instead of ``config`` (``fit(params, x, epochs=10)``),
        and the shorthand ``lr``, ``beta``, ``kl_warmup``, ``free_bits``, ``clip_norm``,
        ``noise_multiplier`` for the default objective and optimiser, built by ``funcvae.shorthand.build``
        (Adam at ``lr``; the beta-ELBO with warm-up over ``kl_warmup`` epochs; a list of ``lr`` or ``beta``
        gives each model of a stack its own).

    The run: the same seed, data and params give the same result, bit for bit on CPU; model i of a stack
    trains exactly as ``fit`` of that model alone with its own seed, objective and optimiser would. With a
    ``checkpoint_dir``, ``checkpoint.safetensors`` (params, optimiser and objective state, settings,
    history, epoch and step; written atomically) is kept there after every epoch, every
    ``checkpoint_every`` steps if set, and when SIGINT or SIGTERM arrives, which then ends ``fit`` at the
    next step boundary (or, during an epoch's evaluation or write, once that epoch is saved) by raising
    ``Interrupted``; ``resume=True`` continues from it (its settings, objective, optimiser and data must be
    this call's, ``epochs`` at least the epochs it holds) bit-identically. The folder is checked and locked
    before any work (``FolderLocked`` if another run holds it), and a checkpoint already there is replaced
    only under ``overwrite=True``. ``on_nonfinite="raise"``
    stops with ``NonFiniteError`` naming the epoch, batch and term at the next read of the device (the run
    freezes on the device at its first bad step, the last checkpoint untouched); "skip" goes on without
    such steps, counted in the history's ``skipped``.

    Returns:
      ``(params, history)``. ``history`` has one dict per epoch with ``epoch``, ``recon``, ``kl``, ``loss``
      (training averages over the epoch, nats per example), ``val_recon``, ``val_kl``, ``val_loss`` (over the
      whole held-out set; None without ``val_data``), ``beta`` (the KL weight in force at the epoch's end;
      None for an objective without one), ``skipped`` and ``seconds``. For a beta-ELBO ``loss`` is
      ``recon + beta * kl`` with the target ``beta`` (comparable during warm-up; -ELBO at beta = 1); for
      IWAE training it is -IWAE_k and ``recon + kl`` is the k-sample ELBO. For a stack: the stacked params
      and a list of N such histories.
    """
    brief = {k: settings.pop(k) for k in shorthand.FIT_KEYS if k in settings}
    callbacks = _callbacks(callbacks, settings.pop("callback", None))
    if config is None:
        config = FitConfig(**{"epochs": None, **settings})
    elif settings:
        raise ValueError("pass either config= or its settings as keywords, not both")
    n_models = stack_size(params)
    seeds = per_model(n_models, "seed", config.seed)
    like = some_leaf(params)
    x, divisor = _training_set(data, params, config, like)
    x_val = None if val_data is None else _examples(val_data, params, config, like, "val_data")
    x_vals = None if x_val is None else [held_out(x_val, s, config.binarize) for s in seeds]
    if config.batch_size > x.shape[0]:
        raise ValueError(f"batch_size {config.batch_size} is larger than the data ({x.shape[0]} examples)")
    spe = steps_per_epoch(x.shape[0], config.batch_size)
    objs, opts = shorthand.build(brief, spe, n_models, objective=objective, optimizer=optimizer)
    opts = [optim.apply_if_finite(o, freeze=config.on_nonfinite == "raise") for o in opts]
    if n_models is not None and opts[0].per_example:
        raise ValueError(f"{opts[0].name} (per-example gradients) trains one model at a time, not a stack")
    steps = [make_train_step(params.model, o, t, matmul_dtype=config.matmul_dtype, scale=divisor)
             for o, t in zip(objs, opts)]
    if len(set(steps)) > 1:
        raise ValueError("the models of a stack must share one objective and one optimiser, up to their numbers "
                         f"(got {sorted({o.name for o in objs})} and {sorted({t.name for t in opts})})")
    world = distributed.join(x.device)
    try:
        with _folder(config, world) as ckpt:
            run = _Run(config=config, model=params.model, n_models=n_models, x=x, divisor=divisor, dtype=like.dtype,
                       x_val=x_val, x_vals=x_vals, seeds=seeds, objective=objs[0], per_example=opts[0].per_example,
                       world=world, step=None,
                       description={"objective": [o.name for o in objs], "optimizer": [t.name for t in opts]},
                       checkpoint=ckpt, callbacks=callbacks,
                       show=(sys.stderr.isatty() if config.progress is None else config.progress) and world.is_main)
            runner, compiled = _make_runner(run, steps[0])
            run = replace(run, step=runner, compiled=compiled)
            state = _start(run, params, objs, opts)
            # A data-parallel step joins a collective, so it cannot be run again alone to check a thread count.
            adapt = config.share_cores and world.size == 1
            with deferred_signals(ckpt is not None) as received, shared_cores(x.device, adapt) as look:
                run = replace(run, look=look)
                while state.epoch < config.epochs:
                    state = _run_epoch(run, state, received)
                if received:  # during the last epoch's evaluation or its write: the run is whole on disk
                    raise Interrupted(received[0], str(ckpt))
    finally:
        distributed.leave(world)
    # On a GPU the compiled step's outputs live in its CUDA graph's memory, which the next replay of that
    # graph (a later fit of the same model) overwrites: the caller gets params of its own.
    params = Params(params.model, optree.tree_map(torch.clone, state.params.tree))
    return params, state.history[0] if n_models is None else state.history


def _callbacks(callbacks, callback) -> tuple:
    """``callbacks`` as a tuple, with the old ``callback=`` (one function) after them and a DeprecationWarning."""
    if callback is None:
        return tuple(callbacks)
    warnings.warn("fit(callback=f) is now fit(callbacks=[f]); callback= goes in the next release",
                  DeprecationWarning, stacklevel=3)
    return (*callbacks, callback)


@dataclass(frozen=True)
class _Run:
    """What stays fixed through a run. ``x``: the training set, (N, features) in ``dtype`` (the params'), or
    uint8 levels whose values are ``pixel_values(x, level_values(divisor, dtype))`` (``divisor`` None
    otherwise)."""

    config: FitConfig
    model: object
    n_models: int | None
    x: Tensor
    divisor: int | float | None
    dtype: torch.dtype
    x_val: Tensor | None
    x_vals: list | None
    seeds: list
    objective: object
    per_example: bool
    world: distributed.World
    step: Callable | None
    description: dict
    checkpoint: Path | None
    callbacks: tuple
    show: bool
    compiled: bool = False  # whether ``step`` runs a compiled graph
    look: Callable[[Callable], bool] = lambda same: False  # called after each step: threads.shared_cores's

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.x.shape[0], self.config.batch_size)

    @cached_property
    def fingerprint(self) -> dict:
        """The settings a resumed run must share, with digests of its data as fit sees it (JSON values);
        computed once per run, and only for a run that checkpoints."""
        c = self.config
        out = {"model": describe(self.model), "stack": self.n_models, "seed": self.seeds,
               "batch_size": c.batch_size, "binarize": c.binarize, **self.description,
               "matmul_dtype": None if c.matmul_dtype is None else str(c.matmul_dtype).removeprefix("torch."),
               "data": _fingerprint(self.x, self.divisor, self.dtype),
               "val_data": None if self.x_val is None else _fingerprint(self.x_val, None, self.dtype)}
        return json.loads(json.dumps(out))  # as it reads back from a checkpoint (tuples become lists)


@contextmanager
def _folder(config: FitConfig, world: distributed.World):
    """The checkpoint's path (None without a ``checkpoint_dir``) while this process holds its folder: checked
    before any work (a folder that cannot be made or written, a checkpoint path that is not a file, a
    checkpoint that the call neither resumes nor overwrites), locked against a second run, and cleared of
    temporary files a killed run left. Only the main process writes, so only it takes the folder."""
    if config.checkpoint_dir is None:
        yield None
        return
    folder = Path(config.checkpoint_dir)
    ckpt = folder / CHECKPOINT_FILE
    if not world.is_main:
        yield ckpt
        return
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"checkpoint_dir {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{CHECKPOINT_FILE}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"checkpoint_dir {folder} cannot be written: {e.strerror or e}") from e
    if ckpt.exists() and not ckpt.is_file():
        raise ValueError(f"{ckpt} is not a file: the checkpoint cannot be written there")
    with lock.hold(folder):
        if ckpt.exists() and not (config.resume or config.overwrite):
            raise ValueError(f"{folder} already holds a checkpoint: pass resume=True to continue it, or "
                             "overwrite=True to start afresh and replace it")
        for stale in folder.glob(f".{CHECKPOINT_FILE}.*"):
            stale.unlink()  # a write or probe cut short by a kill; the checkpoint beside it is whole
        yield ckpt


def _start(run: _Run, params: Params, objs: list, opts: list) -> Checkpoint:
    """The state training starts from: fresh, or the checkpoint's when resuming and one exists."""
    fresh = _fresh_state(params, run.n_models, objs, opts)
    if run.config.resume and run.checkpoint.is_file():
        state = load(run.checkpoint, device=run.x.device, model=run.model)
        mismatch = {k: (v, state.config.get(k)) for k, v in run.fingerprint.items() if state.config.get(k) != v}
        if mismatch:
            diffs = "; ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (new, old) in mismatch.items())
            raise ValueError(f"cannot resume from {run.checkpoint}: it was made with other settings or data ({diffs})")
        _check_resumable(run, state)
        return replace(state, opt_state=restore(fresh.opt_state, state.opt_state, run.checkpoint))
    return Checkpoint(params, fresh.opt_state, fresh.hyper, fresh.count, 0, 0,
                      {} if run.checkpoint is None else run.fingerprint, [[] for _ in run.seeds])


def _check_resumable(run: _Run, state: Checkpoint) -> None:
    """What a checkpoint of this run's settings must also hold to continue it: no more epochs than asked for,
    and mid-epoch, a step inside the epoch with this device's generator states and the epoch's sums."""
    where = f"cannot resume from {run.checkpoint}"
    if state.epoch > run.config.epochs or (state.epoch == run.config.epochs and state.step):
        raise ValueError(f"{where}: it holds {state.epoch} epoch(s){f' and {state.step} step(s)' if state.step else ''}"
                         f", more than epochs={run.config.epochs}; ask for epochs >= {state.epoch + bool(state.step)}"
                         " (as many as it holds returns its params as they are)")
    if not state.step:
        return
    if state.step >= run.steps_per_epoch:
        raise ValueError(f"{where}: field 'step' is {state.step}, not inside an epoch of {run.steps_per_epoch} steps")
    rng = torch.stack([g.get_state() for g in _generators(run, state.epoch + 1)])
    if state.rng.shape != rng.shape:
        raise ValueError(f"{where}: field 'rng' has shape {tuple(state.rng.shape)}; this run's generators need "
                         f"{tuple(rng.shape)}")
    if state.sums.shape != (len(run.seeds), len(STATS)):
        raise ValueError(f"{where}: field 'sums' has shape {tuple(state.sums.shape)}, not "
                         f"{(len(run.seeds), len(STATS))}")


def _generators(run: _Run, epoch: int) -> list[torch.Generator]:
    """Each model's generator of epoch ``epoch``'s training draws."""
    return [generator(s, "train", epoch, device=run.x.device) for s in run.seeds]


def _fresh_state(params: Params, n_models: int | None, objs: list, opts: list) -> TrainState:
    """Each model's fresh TrainState, stacked along a leading model dimension for a stack."""
    if n_models is None:
        return init_state(params, objs[0], opts[0])
    trees = [optree.tree_map(lambda t, i=i: t[i], params.tree) for i in range(n_models)]
    states = [init_state(Params(params.model, t), o, p) for t, o, p in zip(trees, objs, opts)]
    return optree.tree_map(lambda *leaves: torch.stack(leaves), *states, namespace="funcvae")


def _run_epoch(run: _Run, state: Checkpoint, received: list) -> Checkpoint:
    """Train epoch ``state.epoch + 1`` (from step ``state.step`` when resuming mid-epoch)."""
    epoch, start, began = state.epoch + 1, state.step, time.perf_counter()
    device = run.x.device
    gens = _generators(run, epoch)
    # float64: an epoch's sums of finite float32 step sums cannot overflow.
    acc = state.sums.to(device, torch.float64) if start else torch.zeros(len(run.seeds), len(STATS),
                                                                          dtype=torch.float64, device=device)
    rng_states = list(state.rng) if start else None
    batches = model_batches(run.x, run.config.batch_size, gens, run.model.latent, run.config.binarize,
                            run.n_models is not None, samples=run.objective.samples, start=start, rng_states=rng_states,
                            shard=(run.world.rank, run.world.size), divisor=run.divisor, dtype=run.dtype)
    train = TrainState(state.params.tree, state.opt_state, state.hyper, state.count)
    stop, watch, trusted = False, _watch_start(acc, start), False
    with ExitStack() as trust:
        for b, (xb, eps, weights) in enumerate(tqdm(batches, total=run.steps_per_epoch - start, leave=False,
                                                      desc=f"epoch {epoch}/{run.config.epochs}", disable=not run.show,
                                                      file=sys.stderr), start=start):
            noise = _noise(train.tree, gens[0]) if run.per_example else None
            inputs = (train, Batch(xb, eps, weights, None, noise), acc, watch)
            train, acc, watch, stop = run.step(*inputs, b, received)
            if run.compiled and not trusted and b > start:
                # From an epoch's second step on, the step's inputs are its own outputs and batches alike in
                # every property its guards check (shapes, strides, dtypes, devices, structure); the first
                # step's state may come from elsewhere (a checkpoint). So the guards, 0.4-0.5 ms a step, are
                # checked on two steps and then skipped.
                trust.enter_context(torch.compiler.set_stance(skip_guard_eval_unsafe=True))
                trusted = True
            def same() -> bool:  # the step just taken, again on a new thread count: the same bits?
                nonlocal trusted
                trust.close()  # the guards pick (or compile) the graph for the new count
                trusted = False
                return _same_bits(run.step(*inputs, b, received)[:3], (train, acc, watch))
            if run.look(same) and trusted:  # another thread count: the next step's guards pick its graph
                trust.close()
                trusted = False
            done = b + 1
            every = run.config.checkpoint_every and (
                (epoch - 1) * run.steps_per_epoch + done) % run.config.checkpoint_every == 0
            if (stop or every) and done < run.steps_per_epoch:
                _raise_if_frozen(run, watch, epoch)
                mid = _with(state, train, step=done, rng=torch.stack([g.get_state() for g in gens]), sums=acc)
                _save(run, mid)
            if stop:
                if done == run.steps_per_epoch:
                    break  # the epoch is complete: finish it and save it as an epoch boundary below
                # A process that got no signal itself stops because another one did (they agree through the
                # all-reduce); torchrun forwards SIGTERM, so that is what it reports.
                raise Interrupted(received[0] if received else signal.SIGTERM, str(run.checkpoint))
    _raise_if_frozen(run, watch, epoch)
    history = _close_epoch(run, epoch, acc, train, began)
    state = _with(state, train, epoch=epoch, step=0, rng=None, sums=None,
                  history=[h + [r] for h, r in zip(state.history, history)])
    _save(run, state)
    # A signal that came during the evaluation or the write stops the run here, its epoch whole on disk;
    # processes of a data-parallel run agree on stopping at the next step instead.
    if stop or (received and run.world.size == 1):
        raise Interrupted(received[0] if received else signal.SIGTERM, str(run.checkpoint))
    return state


def _same_bits(a, b) -> bool:
    """Whether two trees of tensors hold the same bits (NaN payloads included) in the same structure."""
    left, right = (optree.tree_leaves(t, namespace="funcvae") for t in (a, b))
    return len(left) == len(right) and all(_bits(p).equal(_bits(q)) for p, q in zip(left, right))


def _bits(t: Tensor) -> Tensor:
    return t.view(_INTS[t.element_size()]) if t.is_floating_point() else t


_INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _with(state: Checkpoint, train: TrainState, **changes) -> Checkpoint:
    """``state`` holding ``train``'s params, optimiser, objective state and count, and ``changes``."""
    return replace(state, params=Params(state.params.model, train.tree), opt_state=train.opt_state,
                   hyper=train.hyper, count=train.count, **changes)


def _make_runner(run: _Run, step) -> tuple[Callable, bool]:
    """The step as fit calls it: ``(state, batch, acc, watch, b, received) -> (state, acc, watch, stop)`` for
    batch ``b``, compiled with the epoch's sums and watch (``_counted``: no eager work between steps); ``stop``
    says a signal asks to stop (agreed by all processes, which reads the all-reduced flag from the device
    every step). And whether it is compiled (not the eager fallback)."""
    device, compile, watching = run.x.device, run.config.compile, run.config.on_nonfinite == "raise"
    if run.world.size > 1:
        if run.n_models is not None or run.per_example:
            raise ValueError("data-parallel fit trains one model on the batch gradient (no stack or per-example "
                             "clipping)")
        if step.objective.reduce is not mean_loss:
            raise ValueError("data-parallel fit needs a batch loss that is a mean over examples; "
                             f"{step.objective.name} is not")
        if run.config.batch_size % run.world.size:
            raise ValueError(f"batch_size {run.config.batch_size} must divide by the {run.world.size} processes")
        gradients = make_step(step.gradients, device, compile, key=(step.key, "gradients"))
        apply = make_step(step.apply, device, compile, key=(step.key, "apply"))
        counts = _counts(run)

        def parallel(state, batch, acc, watch, b, received):
            batch = batch._replace(total=counts[b])
            grads, stats = gradients(state, batch)
            grads, stats, flag = distributed.all_reduce_sum(grads, stats, float(bool(received)))
            state, stats = apply(state, grads, stats, batch)
            return (state, *_sums(acc, watch, stats, watching), flag > 0)
        return parallel, apply != step.apply
    one, key = (stacked(step), (step.key, "stack")) if run.n_models is not None else (step, step.key)
    counted = partial(_counted, one, watching)
    compiled = make_step(counted, device, compile, key=(key, "counted", watching))

    def local(state, batch, acc, watch, b, received):
        return (*compiled(state, batch, acc, watch), bool(received))
    return local, compiled is not counted


def _counted(step, watching: bool, state: TrainState, batch: Batch, acc: Tensor, watch: _Watch):
    """One step, then the epoch's sums and watch after it: ``(state, acc, watch)``."""
    state, stats = step(state, batch)
    return (state, *_sums(acc, watch, stats, watching))


def _sums(acc: Tensor, watch: _Watch, stats: Tensor, watching: bool) -> tuple[Tensor, _Watch]:
    """The epoch's sums (``_accumulate``) after a step that reported ``stats``, and its watch (``_watched``;
    kept as it is unless ``watching``, as under on_nonfinite="skip")."""
    return _accumulate(acc, stats.view_as(acc)), _watched(watch, stats) if watching else watch


def _noise(tree: dict, gen: torch.Generator) -> dict:
    """Standard normal draws shaped like the params for a noisy optimiser (DP-SGD), drawn at the boundary
    from the run's stream (after the batch's own draws)."""
    return optree.tree_map(lambda t: torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype), tree)


def _counts(run: _Run) -> Tensor:
    """Real rows in each batch of the whole (not sharded) batch, (steps,) on the device."""
    size = run.config.batch_size
    rows = [min(size, run.x.shape[0] - b * size) for b in range(run.steps_per_epoch)]
    return torch.tensor(rows, dtype=run.dtype, device=run.x.device)


def _accumulate(acc: Tensor, stats: Tensor) -> Tensor:
    """The epoch's sums after a step: its stats if it was applied, else only a count of 1 skipped."""
    applied = stats[..., -1:]
    return acc + torch.cat([torch.where(applied > 0, stats[..., :-1], 0.0), 1.0 - applied], -1)


class _Watch(NamedTuple):
    """How "raise" finds a run's first bad step without reading the device every step: ``live`` (0-d bool)
    is True until a step is not applied, and from then on keeps every later step from being applied;
    ``stats`` and ``batch`` are those of the last step taken while live, the bad one once ``live`` is False;
    ``next`` is the index of the next batch (a tensor, so that the compiled step is the same for every batch)."""

    live: Tensor
    stats: Tensor
    batch: Tensor
    next: Tensor


def _watch_start(like: Tensor, start: int) -> _Watch:
    """The watch of an epoch that begins at batch ``start``."""
    return _Watch(torch.ones((), dtype=torch.bool, device=like.device),
                  torch.zeros(like.numel(), dtype=like.dtype, device=like.device),
                  torch.zeros((), dtype=torch.int64, device=like.device),
                  torch.full((), start, dtype=torch.int64, device=like.device))


def _watched(watch: _Watch, stats: Tensor) -> _Watch:
    """``watch`` after the step of batch ``watch.next`` reported ``stats``; device work only."""
    return _Watch(watch.live & (stats[..., -1] > 0).all(), torch.where(watch.live, stats.reshape(-1), watch.stats),
                  torch.where(watch.live, watch.next, watch.batch), watch.next + 1)


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


def _close_epoch(run: _Run, epoch: int, acc: Tensor, train: TrainState, began: float) -> list[dict]:
    """Each model's history record for the epoch; evaluation on held-out data; callbacks on rank 0."""
    sums = acc.tolist()  # one device read per epoch
    stacked = run.n_models is not None
    records = []
    for m, (recon, kl, loss, rows, skipped) in enumerate(sums):
        hyper = train.hyper if not stacked else {k: v[m] for k, v in train.hyper.items()}
        target = float(hyper["beta"]) if "beta" in hyper else None
        recon, kl, loss = (recon / rows, kl / rows, loss / rows) if rows else (math.nan, math.nan, math.nan)
        record = {"epoch": epoch, "recon": recon, "kl": kl, "loss": loss if target is None else recon + target * kl,
                  "val_recon": None, "val_kl": None, "val_loss": None, "beta": _beta_in_force(run, hyper, train, m),
                  "skipped": int(skipped)}
        if run.x_vals is not None:
            one = train.tree if not stacked else optree.tree_map(lambda t: t[m], train.tree)
            val = evaluate(Params(run.model, one), run.x_vals[m],
                           generator(run.seeds[m], "val", device=run.x.device), beta=1.0 if target is None else target)
            record.update({f"val_{k}": float(v.mean()) for k, v in val.items()})
        record["seconds"] = time.perf_counter() - began
        _warn_if_nonfinite(record, m if stacked else None, run.steps_per_epoch)
        records.append(record)
        if run.world.is_main:
            for callback in run.callbacks:
                callback(record if not stacked else {**record, "model": m})
    return records


def _warn_if_nonfinite(record: dict, model: int | None, steps: int) -> None:
    """A RuntimeWarning naming an epoch's non-finite metrics (kept in the history as NaN or inf, and written
    to checkpoints as "NaN" or "Infinity"), and why when every step of it was skipped."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        why = f": every one of its {steps} steps was skipped as non-finite" if record["skipped"] == steps else ""
        of = "" if model is None else f" of model {model}"
        warnings.warn(f"epoch {record['epoch']}{of}: {', '.join(bad)} not finite{why}", RuntimeWarning, stacklevel=4)


def _beta_in_force(run: _Run, hyper: dict, train: TrainState, m: int) -> float | None:
    """The KL weight the epoch's last step used (after any warm-up), or None for an objective without one."""
    if "beta" not in hyper:
        return None
    count = train.count if run.n_models is None else train.count[m]
    return float(run.objective.schedule(hyper, count - 1, run.dtype)["beta"])


def _save(run: _Run, state: Checkpoint) -> None:
    if run.checkpoint is not None and run.world.is_main:
        run.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save(run.checkpoint, state)


def _training_set(data, params: Params, config: FitConfig, like: Tensor) -> tuple[Tensor, int | float | None]:
    """The training set as fit holds it and its divisor (``validate.as_levels``), checked as ``_examples``."""
    x, divisor = as_levels(data, params.model, scale=config.scale, like=like, name="data")
    if config.binarize == "dynamic":
        check_values(x, divisor, like.dtype, "data", _probabilities)
    return x, divisor


def _examples(data, params: Params, config: FitConfig, like: Tensor, name: str) -> Tensor:
    x = as_examples(data, params.model, scale=config.scale, like=like, name=name)
    if config.binarize == "dynamic":
        _probabilities(x, name)
    return x


def _probabilities(x: Tensor, name: str) -> None:
    """Under dynamic binarisation pixels become Bernoulli probabilities, whatever the likelihood."""
    check_support("bernoulli", x, name=name)


def _fingerprint(x: Tensor, divisor: int | float | None, dtype: torch.dtype) -> dict:
    """Shape, dtype and the SHA-256 of the bytes of the data as the model sees them (after conversion and
    scaling): any change to any value, or to the order of the examples, is another digest. uint8 levels are
    hashed as their values (``pixel_values``), so the same images as 8-bit pixels and as floats are one
    digest; ``FINGERPRINT_ROWS`` rows at a time, never a float copy of the whole set."""
    digest = hashlib.sha256()
    levels = None if divisor is None else level_values(divisor, dtype, x.device)
    for rows in x.detach().split(FINGERPRINT_ROWS):
        values = rows if levels is None else pixel_values(rows, levels)
        digest.update(values.contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
    return {"shape": list(x.shape), "dtype": str(dtype).removeprefix("torch."), "sha256": digest.hexdigest()}
