"""The epoch loop: an epoch's batches through the runner, checkpoints on the way and at its end, its history
record (with held-out scores and callbacks), and a stop at a step boundary on a signal."""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import optree
import torch
from torch import Tensor
from tqdm.auto import tqdm

from funcvae._runtime import distributed
from funcvae._train import folder, watch as W
from funcvae._train.runner import Runner
from funcvae.callbacks import Hooks
from funcvae.batches import model_batches
from funcvae.checkpoint import Checkpoint
from funcvae.config import FitConfig, steps_per_epoch
from funcvae.bounds import evaluate
from funcvae._runtime.interrupt import Interrupted
from funcvae.model import Model, Params
from funcvae.rng import generator
from funcvae.step import STATS, TERMS, Batch, TrainState, stat_names


@dataclass(frozen=True)
class Run:
    """What stays fixed through a run. ``x``: the training set, (N, features) in ``dtype`` (the params'), or
    uint8 levels whose values are ``pixel_values(x, level_values(scale, dtype))`` (``scale`` None
    otherwise), in memory or ``ondisk.OnDisk`` rows of a file; ``x_vals``: each model's held-out set (None
    without one); ``stack``: whether the params are a stack of models; ``c`` and ``c_val``: a conditional
    model's context of the training and held-out sets, (N, K) in ``dtype``, else None."""

    config: FitConfig
    model: Model
    stack: bool
    x: Tensor
    scale: int | float | None
    dtype: torch.dtype
    x_vals: list | None
    seeds: list
    objective: object
    per_example: bool
    world: distributed.World
    checkpoint: Path | None
    callbacks: Hooks
    c: Tensor | None = None
    c_val: Tensor | None = None

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.x.shape[0], self.config.batch_size)


def generators(seeds: list, epoch: int, device: torch.device) -> list[torch.Generator]:
    """Each model's generator of epoch ``epoch``'s training draws."""
    return [generator(s, "train", epoch, device=device) for s in seeds]


def run_epoch(run: Run, runner: Runner, state: Checkpoint, received: list, look: Callable[[Callable], bool],
              show: bool) -> Checkpoint:
    """Train epoch ``state.epoch + 1`` (from step ``state.step`` when resuming mid-epoch) and save it.

    ``look(same)`` is called after each step (``threads.shared_cores``'s): it may change the thread count,
    checking with ``same()`` that the step just taken gives the same bits on it, and says whether it did.
    ``show``: a progress bar. Raises Interrupted once a signal in ``received`` stops the run (saved), and
    NonFiniteError when a step froze it."""
    epoch, start, began = state.epoch + 1, state.step, time.perf_counter()
    device = run.x.device
    gens = generators(run.seeds, epoch, device)
    # float64: an epoch's sums of finite float32 step sums cannot overflow.
    width = len(stat_names(run.model, run.objective))
    acc = state.sums.to(device, torch.float64) if start else torch.zeros(len(run.seeds), width,
                                                                          dtype=torch.float64, device=device)
    rng_states = list(state.rng) if start else None
    batches = model_batches(run.x, run.config.batch_size, gens, run.model.noise_size, run.config.binarize,
                            run.stack, samples=run.objective.samples, start=start, rng_states=rng_states,
                            shard=(run.world.rank, run.world.size), scale=run.scale, dtype=run.dtype, context=run.c)
    train, steps = state.train, run.steps_per_epoch
    stop, watch, trusted, said = False, W.start(acc, start), False, 0.0
    with ExitStack() as trust:
        shown = tqdm(batches, total=steps - start, leave=False, desc=f"epoch {epoch}/{run.config.epochs}",
                     disable=not show, file=sys.stderr, dynamic_ncols=True)
        for b, (xb, eps, weights, cb) in enumerate(shown, start=start):
            noise = _noise(train.tree, gens[0]) if run.per_example else None
            inputs = (train, Batch(xb, eps, weights, None, noise, cb), acc, watch)
            train, acc, watch, stop = runner.call(*inputs, b, received)
            if runner.compiled and not trusted and b > start:
                # From an epoch's second step on, the step's inputs are its own outputs and batches alike in
                # every property its guards check; the first step's state may come from elsewhere (a
                # checkpoint). So the guards are checked on two steps and then skipped (docs/speed.md).
                trust.enter_context(torch.compiler.set_stance(skip_guard_eval_unsafe=True))
                trusted = True
            def same() -> bool:  # the step just taken, again on a new thread count: the same bits?
                nonlocal trusted
                trust.close()  # the guards pick (or compile) the graph for the new count
                trusted = False
                return same_bits(runner.call(*inputs, b, received)[:3], (train, acc, watch))
            if look(same) and trusted:  # another thread count: the next step's guards pick its graph
                trust.close()
                trusted = False
            done = b + 1
            if show and time.perf_counter() - said >= 0.5:
                said = _show_loss(shown, acc)
            if run.callbacks.stepping:
                step = (epoch - 1) * steps + done
                run.callbacks.step_end(step, _running(acc, run.stack), f"at step {step} (epoch {epoch})")
            every = run.config.checkpoint_every and (
                (epoch - 1) * steps + done) % run.config.checkpoint_every == 0
            if (stop or every) and done < steps:
                W.raise_if_frozen(watch, epoch, steps, run.stack, run.checkpoint)
                mid = replace(state, train=train, step=done, rng=torch.stack([g.get_state() for g in gens]), sums=acc)
                folder.write(run.checkpoint, run.world, mid)
            if stop:
                if done == steps:
                    break  # the epoch is complete: finish it and save it as an epoch boundary below
                # A process that got no signal itself stops because another one did (they agree through the
                # all-reduce); torchrun forwards SIGTERM, so that is what it reports.
                raise Interrupted(received[0] if received else signal.SIGTERM, str(run.checkpoint))
    W.raise_if_frozen(watch, epoch, steps, run.stack, run.checkpoint)
    history = _close_epoch(run, epoch, acc, train, began)
    state = replace(state, train=train, epoch=epoch, step=0, rng=None, sums=None,
                    history=[h + [r] for h, r in zip(state.history, history)])
    folder.write(run.checkpoint, run.world, state)
    # A signal that came during the evaluation or the write stops the run here, its epoch whole on disk;
    # processes of a data-parallel run agree on stopping at the next step instead.
    if stop or (received and run.world.size == 1):
        raise Interrupted(received[0] if received else signal.SIGTERM, str(run.checkpoint))
    return state


def _show_loss(shown: tqdm, acc: Tensor) -> float:
    """The epoch's running mean loss so far (of the first model) beside the bar, and when it was read: twice a
    second at most, since each read waits for the device."""
    loss, rows = acc[0, STATS.index("loss")].item(), acc[0, STATS.index("rows")].item()
    if rows:
        shown.set_postfix(loss=f"{loss / rows:.2f}", refresh=False)
    return time.perf_counter()


def _running(acc: Tensor, stack: bool) -> dict:
    """The epoch's running means so far of the training terms, nats per example, on the device (no read):
    ``{"recon", "kl", "loss"}``, each 0-d, or (N,) for a stack."""
    means = acc[:, :len(TERMS)] / acc[:, STATS.index("rows"), None]
    return {k: means[:, i] if stack else means[0, i] for i, k in enumerate(TERMS)}


def same_bits(a, b) -> bool:
    """Whether two trees of tensors hold the same bits (NaN payloads included) in the same structure."""
    left, right = (optree.tree_leaves(t, namespace="funcvae") for t in (a, b))
    return len(left) == len(right) and all(_bits(p).equal(_bits(q)) for p, q in zip(left, right))


def _bits(t: Tensor) -> Tensor:
    return t.view(_INTS[t.element_size()]) if t.is_floating_point() else t


_INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _noise(tree: dict, gen: torch.Generator) -> dict:
    """Standard normal draws shaped like the params for a noisy optimiser (DP-SGD), drawn at the boundary
    from the run's stream (after the batch's own draws)."""
    return optree.tree_map(lambda t: torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype), tree)


def _close_epoch(run: Run, epoch: int, acc: Tensor, train: TrainState, began: float) -> list[dict]:
    """Each model's history record for the epoch; evaluation on held-out data; callbacks on rank 0."""
    sums = acc.tolist()  # one device read per epoch
    reports = run.objective.reports
    groups = run.model.groups if len(sums[0]) > len(STATS) + len(reports) else None
    # A batch objective's loss is its own (it has no warm-up), not recon + beta * kl; its held-out scores are
    # the ELBO's (beta = 1), since its loss is not defined for one example alone.
    batchwise = run.objective.batch is not None
    records = []
    for m, (recon, kl, loss, rows, skipped, *rest) in enumerate(sums):
        group_kls, reported = rest[:len(rest) - len(reports)], rest[len(rest) - len(reports):]
        numbers = train.objective_state
        numbers = numbers if not run.stack else {k: v[m] for k, v in numbers.items()}
        target = float(numbers["beta"]) if "beta" in numbers and not batchwise else None
        recon, kl, loss = (recon / rows, kl / rows, loss / rows) if rows else (math.nan, math.nan, math.nan)
        record = {"epoch": epoch, "recon": recon, "kl": kl, "loss": loss if target is None else recon + target * kl,
                  "val_recon": None, "val_kl": None, "val_loss": None, "beta": _beta_in_force(run, numbers, train, m),
                  "skipped": int(skipped)}
        record.update({name: v / rows if rows else math.nan for name, v in zip(reports, reported)})
        if groups:
            record["kl_groups"] = {g: v / rows if rows else math.nan for g, v in zip(groups, group_kls)}
            record["val_kl_groups"] = None
        if run.x_vals is not None:
            one = train.tree if not run.stack else optree.tree_map(lambda t: t[m], train.tree)
            val = evaluate(Params(run.model, one), run.x_vals[m], generator(run.seeds[m], "val", device=run.x.device),
                           beta=1.0 if target is None else target, c=run.c_val)
            record.update({f"val_{k}": float(v.mean()) for k, v in val.items() if k != "kl_groups"})
            if groups:
                record["val_kl_groups"] = dict(zip(groups, val["kl_groups"].mean(0).tolist()))
        record["seconds"] = time.perf_counter() - began
        W.warn_if_nonfinite(record, m if run.stack else None, run.steps_per_epoch)
        records.append(record)
        if run.callbacks:  # before the epoch's checkpoint: one that raises leaves the last one on disk
            one = train if not run.stack else optree.tree_map(lambda t: t[m], train, namespace="funcvae")
            run.callbacks.epoch_end(record if not run.stack else {**record, "model": m}, run.model, one,
                                    f"at the end of epoch {epoch}" + (f" (model {m})" if run.stack else ""))
    return records


def _beta_in_force(run: Run, numbers: dict, train: TrainState, m: int) -> float | None:
    """The KL weight the epoch's last step used (after any warm-up), or None for an objective without one."""
    if "beta" not in numbers:
        return None
    count = train.count if not run.stack else train.count[m]
    return float(run.objective.schedule(numbers, count - 1, run.dtype)["beta"])
