"""``fit``: minibatch training of a VAE's params (one model or a stack) through one compiled, guarded step
built from the model, an objective and an optimiser; checkpoints, exact resume, signals, data parallelism."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import optree
import torch
from torch import Tensor

from funcvae import optim, shorthand
from funcvae._runtime import distributed, progress
from funcvae._train import folder
from funcvae._train.folder import CHECKPOINT_FILE
from funcvae._train.loop import Run, generators, run_epoch
from funcvae._train.runner import make_runner
from funcvae._train.watch import NonFiniteError
from funcvae.callbacks import Hooks, RunInfo
from funcvae.checkpoint import Checkpoint
from funcvae.config import FitConfig, per_model, steps_per_epoch
from funcvae.data import held_out
from funcvae.distributions import check_support
from funcvae._runtime.interrupt import Interrupted, deferred_signals
from funcvae.model import Params, some_leaf
from funcvae.contract import stack_size
from funcvae.step import TrainState, init_state, make_train_step
from funcvae._runtime.threads import shared_cores
from funcvae.context import chosen, with_labels
from funcvae.inputs import as_examples, as_levels, check_values
from funcvae.ondisk import OnDisk

__all__ = ["CHECKPOINT_FILE", "NonFiniteError", "fit"]


def fit(params: Params, data, *, objective=None, optimizer=None, config: FitConfig | None = None, val_data=None,
        callbacks: Sequence = (), context=None, val_context=None, **settings):
    """Train ``params`` on ``data``; returns new params and the per-epoch history (inputs are not modified).
    The run, checkpoints, resume, signals, stacks and data parallelism: docs/training.md.

    Args:
      params: from ``model.init`` or ``funcvae.init``, or a stack of N models (``funcvae.stack(...)``);
        training runs on their device.
      data: training examples (tensor, numpy array, Dataset or DataLoader of tensors, arrays or PIL images,
        alone or with a label), shaped (N, F), (N, H, W) or (N, C, H, W); read once. Integers in [0, 255]
        are held as uint8 and divided by ``scale`` inside the step, exactly as ``(x.to(float64) / scale)``
        in the params' dtype. A memory map of integers in [0, 255] (``np.load(path, mmap_mode="r")``) stays
        in its file and each batch is read from it, for data bigger than memory (docs/training.md).
      objective: from ``funcvae.objectives``; for a stack, one for all or one per model.
      optimizer: from ``funcvae.optim``; for a stack, one for all or one per model. fit wraps it in
        ``optim.apply_if_finite``.
      config: a ``FitConfig`` (``epochs``, ``batch_size``, ``seed``, checkpointing, ...).
      val_data: held-out examples, scored by the ELBO after each epoch (the same noise every epoch).
      callbacks: functions ``f(record)``, called with each epoch's history record as soon as it is complete, or
        objects with ``start``, ``step_end``, ``epoch_end`` and ``end`` methods (``funcvae.callbacks``; loggers
        there too); rank 0 only. ``callback=``, one function, is the old spelling, kept for one release.
      context, val_context: a conditional model's context (``Model(..., context=K)``) for ``data`` and
        ``val_data``: (N,) integer labels in [0, K) (one-hot) or (N, K) float vectors; without them, the labels
        of a labelled dataset ((example, label) items). Refused for an unconditional model.
      **settings: ``FitConfig``'s fields as keywords instead of ``config`` (``fit(params, x, epochs=10)``),
        and the shorthand ``lr``, ``beta``, ``kl_warmup``, ``free_bits``, ``clip_norm``,
        ``noise_multiplier`` for the default objective and optimiser (``funcvae.shorthand.build``).

    Returns:
      ``(params, history)``: ``history`` has one dict per epoch: ``epoch``; ``recon``, ``kl``, ``loss``
      (training averages, nats per example); ``val_recon``, ``val_kl``, ``val_loss`` (None without
      ``val_data``); ``beta`` (the KL weight in force at the epoch's end, or None); ``skipped`` (steps not
      applied); ``seconds``; for a model whose KL comes per latent group, ``kl_groups`` and ``val_kl_groups``
      (``{group: nats}``); the training averages of the terms a batch objective reports (``mi``, ``tc``,
      ``dwkl``; ``mmd``). For a stack: the stacked params and a list of N such histories.

    Raises:
      ValueError: bad data, settings or objects, a ``checkpoint_dir`` that cannot be used, or a checkpoint
        this run cannot resume (naming what differs), all before the first step.
      FolderLocked: another run holds ``checkpoint_dir``.
      NonFiniteError: under ``on_nonfinite="raise"``, a step with a non-finite loss term or gradient (the
        params of that step were not updated; the last checkpoint is untouched).
      Interrupted: SIGINT or SIGTERM arrived with a ``checkpoint_dir``; the run is saved at a step boundary.
      CallbackError: a callback raised (``funcvae.callbacks``; the epoch is not saved, the last checkpoint is).
    """
    brief = {k: settings.pop(k) for k in shorthand.FIT_KEYS if k in settings}
    hooks = Hooks(_callbacks(callbacks, settings.pop("callback", None)))
    if config is None:
        config = FitConfig(**{"epochs": None, **settings})
    elif settings:
        raise ValueError("pass either config= or its settings as keywords, not both")
    n_models = stack_size(params)
    seeds = per_model(n_models, "seed", config.seed)
    like = some_leaf(params)
    x, scale, c = _training_set(data, params, config, like, context)
    x_val, c_val = (None, None) if val_data is None else _examples(val_data, params, config, like, "val_data",
                                                                   val_context)
    if val_data is None and val_context is not None:
        raise ValueError("val_context was given without val_data")
    x_vals = None if x_val is None else [held_out(x_val, s, config.binarize) for s in seeds]
    if config.batch_size > x.shape[0]:
        raise ValueError(f"batch_size {config.batch_size} is larger than the data ({x.shape[0]} examples)")
    spe = steps_per_epoch(x.shape[0], config.batch_size)
    objs, opts = shorthand.build(brief, spe, n_models, objective=objective, optimizer=optimizer)
    told = _settings(config, objs, opts, n_models, x.shape[0])
    opts = [optim.apply_if_finite(o, freeze=config.on_nonfinite == "raise") for o in opts]
    if n_models is not None and opts[0].per_example:
        raise ValueError(f"{opts[0].name} (per-example gradients) trains one model at a time, not a stack")
    steps = [make_train_step(params.model, o, t, matmul_dtype=config.matmul_dtype, scale=scale)
             for o, t in zip(objs, opts)]
    if len(set(steps)) > 1:
        raise ValueError("the models of a stack must share one objective and one optimiser, up to their numbers "
                         f"(got {sorted({o.name for o in objs})} and {sorted({t.name for t in opts})})")
    world = distributed.join(x.device)
    try:
        with folder.held(config, world) as ckpt:
            runner = make_runner(steps[0], compile=config.compile, watching=config.on_nonfinite == "raise",
                                 world=world, stack=n_models is not None, per_example=opts[0].per_example,
                                 n_examples=x.shape[0], batch_size=config.batch_size, like=like)
            run = Run(config=config, model=params.model, stack=n_models is not None, x=x, scale=scale,
                      dtype=like.dtype, x_vals=x_vals, seeds=seeds, objective=objs[0],
                      per_example=opts[0].per_example, world=world, checkpoint=ckpt, c=c,
                      callbacks=hooks if world.is_main else Hooks(),
                      c_val=c_val)
            description = {"objective": [o.name for o in objs], "optimizer": [t.name for t in opts]}
            prints = None if ckpt is None else folder.fingerprint(params.model, n_models, seeds, config, description,
                                                                  (x, scale, like.dtype), x_val, (c, c_val))
            train = _fresh_state(params, n_models, objs, opts)._replace(tree=params.tree)
            fresh = Checkpoint(params.model, train, 0, 0, prints or {}, [[] for _ in seeds])
            state = folder.start(fresh, ckpt, config.resume, prints, epochs=config.epochs, steps=spe,
                                 rng=torch.stack([g.get_state() for g in generators(seeds, 1, x.device)]),
                                 device=x.device, accept_changed_code=config.accept_changed_code,
                                 objective=objs[0])
            distributed.check_identical(state.train.tree, world)
            info = RunInfo(told, Params(params.model, state.train.tree), n_models, opts[0], spe, state.epoch)
            show = progress.shown(config.progress) and world.is_main
            # A data-parallel step joins a collective, so it cannot be run again alone to check a thread count.
            adapt = config.share_cores and world.size == 1
            with deferred_signals(ckpt is not None) as received, shared_cores(x.device, adapt) as look, \
                    run.callbacks.running(info):
                while state.epoch < config.epochs:
                    state = run_epoch(run, runner, state, received, look, show)
                if received:  # during the last epoch's evaluation or its write: the run is whole on disk
                    raise Interrupted(received[0], str(ckpt))
    finally:
        distributed.leave(world)
    # On a GPU the compiled step's outputs live in its CUDA graph's memory, which the next replay of that
    # graph (a later fit of the same model) overwrites: the caller gets params of its own.
    params = Params(params.model, optree.tree_map(torch.clone, state.train.tree))
    return params, state.history[0] if n_models is None else state.history


def _callbacks(callbacks, callback) -> tuple:
    """``callbacks`` as a tuple, with the old ``callback=`` (one function) after them and a DeprecationWarning."""
    if callback is None:
        return tuple(callbacks)
    warnings.warn("fit(callback=f) is now fit(callbacks=[f]); callback= goes in the next release",
                  DeprecationWarning, stacklevel=3)
    return (*callbacks, callback)


def _settings(config: FitConfig, objs: list, opts: list, n_models: int | None, examples: int) -> dict:
    """The run's settings as callbacks are told them (``RunInfo.settings``): JSON values."""
    names = {"objective": [o.name for o in objs], "optimizer": [t.name for t in opts]}
    return {**{f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)},
            **{k: v if n_models else v[0] for k, v in names.items()}, "examples": examples}


def _plain(value):
    """A setting as a JSON value: a dtype or a compiler backend as its name, a tuple as a list."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return getattr(value, "__name__", None) or str(value).removeprefix("torch.")


def _fresh_state(params: Params, n_models: int | None, objs: list, opts: list) -> TrainState:
    """Each model's fresh TrainState, stacked along a leading model dimension for a stack."""
    if n_models is None:
        return init_state(params, objs[0], opts[0])
    trees = [optree.tree_map(lambda t, i=i: t[i], params.tree) for i in range(n_models)]
    states = [init_state(Params(params.model, t), o, p) for t, o, p in zip(trees, objs, opts)]
    return optree.tree_map(lambda *leaves: torch.stack(leaves), *states, namespace="funcvae")


def _training_set(data, params: Params, config: FitConfig, like: Tensor,
                  context) -> tuple[Tensor | OnDisk, int | float | None, Tensor | None]:
    """The training set as fit holds it and its scale (``inputs.as_levels``: a memory map stays in its file),
    checked as ``_examples``, and a conditional model's context (``funcvae.context``)."""
    data, labels = with_labels(data, params.model, context, "data")
    x, scale = as_levels(data, params.model, scale=config.scale, like=like, name="data")
    if config.binarize == "dynamic":
        check_values(x, scale, like.dtype, "data", _probabilities)
    return x, scale, chosen(params.model, context, labels, x.shape[0], like=like, name="data")


def _examples(data, params: Params, config: FitConfig, like: Tensor, name: str,
              context) -> tuple[Tensor, Tensor | None]:
    data, labels = with_labels(data, params.model, context, name)
    x = as_examples(data, params.model, scale=config.scale, like=like, name=name)
    if config.binarize == "dynamic":
        _probabilities(x, name)
    return x, chosen(params.model, context, labels, x.shape[0], like=like, name=name, given="val_context")


def _probabilities(x: Tensor, name: str) -> None:
    """Under dynamic binarisation pixels become Bernoulli probabilities, whatever the likelihood."""
    check_support("bernoulli", x, name=name)
