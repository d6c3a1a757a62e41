"""The compiled runner: the train step as the loop calls it, one step and the epoch's sums and watch after it
in one compiled call, or under data parallelism the step's two halves with the all-reduce between them."""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from funcvae._runtime import distributed
from funcvae._train import watch as W
from funcvae._runtime.compiling import compile_step
from funcvae.config import steps_per_epoch
from funcvae.step import Batch, TrainState, stacked


class Runner(NamedTuple):
    """``call(state, batch, acc, watch, b, received) -> (state, acc, watch, stop)`` for batch ``b``; ``stop``
    says a signal asks to stop (agreed by all processes, which read the all-reduced flag from the device every
    step). ``compiled``: whether ``call`` runs a compiled graph (not the eager fallback)."""

    call: Callable
    compiled: bool


def make_runner(step, *, compile, watching: bool, world: distributed.World, stack: bool, per_example: bool,
                n_examples: int, batch_size: int, like: Tensor) -> Runner:
    """The runner of ``step`` (``make_train_step``'s) on ``like``'s device and dtype, ``watching`` for
    non-finite steps (on_nonfinite="raise"), for ``world``; ``stack``: the params are a stack of models.

    Raises:
      ValueError: a data-parallel run of a stack, of per-example clipping, of a loss that is not a mean over
        examples each of its own (a batch objective's shard would see part of the batch), or of a ``batch_size``
        that does not divide by the number of processes.
    """
    device = like.device
    if world.size > 1:
        if stack or per_example:
            raise ValueError("data-parallel fit trains one model on the batch gradient (no stack or per-example "
                             "clipping)")
        if not step.objective.separable:
            raise ValueError("data-parallel fit needs a batch loss that is a mean over examples; "
                             f"{step.objective.name} is not")
        if batch_size % world.size:
            raise ValueError(f"batch_size {batch_size} must divide by the {world.size} processes")
        gradients = compile_step(step.gradients, device, compile, key=(step.key, "gradients"))
        apply = compile_step(step.apply, device, compile, key=(step.key, "apply"))
        totals = _counts(n_examples, batch_size, like)

        def parallel(state, batch, acc, watch, b, received):
            batch = batch._replace(total=totals[b])
            grads, stats = gradients(state, batch)
            grads, stats, flag = distributed.all_reduce_sum(grads, stats, float(bool(received)))
            state, stats = apply(state, grads, stats, batch)
            return (state, *W.after_step(acc, watch, stats, watching), flag > 0)
        return Runner(parallel, apply != step.apply)
    one, key = (stacked(step), (step.key, "stack")) if stack else (step, step.key)
    counted = partial(_counted, one, watching)
    compiled = compile_step(counted, device, compile, key=(key, "counted", watching))

    def local(state, batch, acc, watch, b, received):
        return (*compiled(state, batch, acc, watch), bool(received))
    return Runner(local, compiled is not counted)


def _counted(step, watching: bool, state: TrainState, batch: Batch, acc: Tensor, watch: W.Watch):
    """One step, then the epoch's sums and watch after it: ``(state, acc, watch)``."""
    state, stats = step(state, batch)
    return (state, *W.after_step(acc, watch, stats, watching))


def _counts(n: int, batch_size: int, like: Tensor) -> Tensor:
    """Real rows in each batch of the whole (not sharded) batch, (steps,) in ``like``'s dtype and device."""
    rows = [min(batch_size, n - b * batch_size) for b in range(steps_per_epoch(n, batch_size))]
    return torch.tensor(rows, dtype=like.dtype, device=like.device)
