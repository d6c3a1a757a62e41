"""``fit``: minibatch training of a VAE's params (one model or a stack) through one compiled, guarded step
built from the model, an objective and an optimiser; checkpoints, exact resume, signals, data parallelism."""

from __future__ import annotations

import sys
import warnings
from typing import Callable, Sequence

import optree
import torch
from torch import Tensor

from funcvae import optim, shorthand
from funcvae._runtime import distributed
from funcvae._train import folder
from funcvae._train.folder import CHECKPOINT_FILE
from funcvae._train.loop import Run, generators, run_epoch
from funcvae._train.runner import make_runner
from funcvae._train.watch import NonFiniteError
from funcvae.checkpoint import Checkpoint
from funcvae.config import FitConfig, per_model, steps_per_epoch
from funcvae.data import held_out
from funcvae.distributions import check_support
from funcvae._runtime.interrupt import Interrupted, deferred_signals
from funcvae.model import Params, some_leaf, stack_size
from funcvae.step import TrainState, init_state, make_train_step
from funcvae._runtime.threads import shared_cores
from funcvae.inputs import as_examples, as_levels, check_values

__all__ = ["CHECKPOINT_FILE", "NonFiniteError", "fit"]


def fit(params: Params, data, *, objective=None, optimizer=None, config: FitConfig | None = None, val_data=None,
        callbacks: Sequence[Callable[[dict], None]] = (), **settings):
    """Train ``params`` on ``data``; returns new params and the per-epoch history (inputs are not modified).

    Args:
      params: from ``model.init`` or ``funcvae.init``, or a stack of N models from ``funcvae.stack(...)``, trained
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
    x, scale = _training_set(data, params, config, like)
    x_val = None if val_data is None else _examples(val_data, params, config, like, "val_data")
    x_vals = None if x_val is None else [held_out(x_val, s, config.binarize) for s in seeds]
    if config.batch_size > x.shape[0]:
        raise ValueError(f"batch_size {config.batch_size} is larger than the data ({x.shape[0]} examples)")
    spe = steps_per_epoch(x.shape[0], config.batch_size)
    objs, opts = shorthand.build(brief, spe, n_models, objective=objective, optimizer=optimizer)
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
                      per_example=opts[0].per_example, world=world, checkpoint=ckpt, callbacks=callbacks)
            description = {"objective": [o.name for o in objs], "optimizer": [t.name for t in opts]}
            prints = None if ckpt is None else folder.fingerprint(params.model, n_models, seeds, config, description,
                                                                  (x, scale, like.dtype), x_val)
            train = _fresh_state(params, n_models, objs, opts)._replace(tree=params.tree)
            fresh = Checkpoint(params.model, train, 0, 0, prints or {}, [[] for _ in seeds])
            state = folder.start(fresh, ckpt, config.resume, prints, epochs=config.epochs, steps=spe,
                                 rng=torch.stack([g.get_state() for g in generators(seeds, 1, x.device)]),
                                 device=x.device, accept_changed_code=config.accept_changed_code)
            show = (sys.stderr.isatty() if config.progress is None else config.progress) and world.is_main
            # A data-parallel step joins a collective, so it cannot be run again alone to check a thread count.
            adapt = config.share_cores and world.size == 1
            with deferred_signals(ckpt is not None) as received, shared_cores(x.device, adapt) as look:
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


def _fresh_state(params: Params, n_models: int | None, objs: list, opts: list) -> TrainState:
    """Each model's fresh TrainState, stacked along a leading model dimension for a stack."""
    if n_models is None:
        return init_state(params, objs[0], opts[0])
    trees = [optree.tree_map(lambda t, i=i: t[i], params.tree) for i in range(n_models)]
    states = [init_state(Params(params.model, t), o, p) for t, o, p in zip(trees, objs, opts)]
    return optree.tree_map(lambda *leaves: torch.stack(leaves), *states, namespace="funcvae")


def _training_set(data, params: Params, config: FitConfig, like: Tensor) -> tuple[Tensor, int | float | None]:
    """The training set as fit holds it and its scale (``inputs.as_levels``), checked as ``_examples``."""
    x, scale = as_levels(data, params.model, scale=config.scale, like=like, name="data")
    if config.binarize == "dynamic":
        check_values(x, scale, like.dtype, "data", _probabilities)
    return x, scale


def _examples(data, params: Params, config: FitConfig, like: Tensor, name: str) -> Tensor:
    x = as_examples(data, params.model, scale=config.scale, like=like, name=name)
    if config.binarize == "dynamic":
        _probabilities(x, name)
    return x


def _probabilities(x: Tensor, name: str) -> None:
    """Under dynamic binarisation pixels become Bernoulli probabilities, whatever the likelihood."""
    check_support("bernoulli", x, name=name)
