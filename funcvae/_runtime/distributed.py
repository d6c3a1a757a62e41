"""Data parallelism over torch.distributed: every process holds the whole data and draws every batch,
takes its block of rows, and the gradients (with the batch's stats) are summed across processes as ONE
flat buffer; the update then runs identically everywhere. gloo on CPU, NCCL on GPU; ``torchrun`` sets
the environment this reads.

Joining waits for every process named in the environment; it says so on stderr first, and gives up after
``$FUNCVAE_DIST_TIMEOUT`` seconds (default 300; collectives use the same limit) with an error that names
what it waited for, so a ``WORLD_SIZE`` left in the environment cannot hang a run silently."""

from __future__ import annotations

import datetime
import math
import os
import sys
from dataclasses import dataclass

import optree
import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size``; ``owned`` when funcvae started the process group."""

    rank: int = 0
    size: int = 1
    owned: bool = False

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints and prints."""
        return self.rank == 0


TIMEOUT_ENV = "FUNCVAE_DIST_TIMEOUT"
TIMEOUT_S = 300.0


def join(device: torch.device) -> World:
    """The process group ``torchrun`` describes (WORLD_SIZE > 1), started here if the caller has not.

    Raises:
      RuntimeError: the other processes did not join within the timeout, or the environment does not
        describe a process group (naming the variables).
    """
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), owned=False)
    env = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")}
    try:
        size = int(env["WORLD_SIZE"] or "1")
    except ValueError:
        raise RuntimeError(f"WORLD_SIZE={env['WORLD_SIZE']!r} in the environment is not a number of processes") from None
    if size <= 1:
        return World()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    seconds = _timeout()
    described = ", ".join(f"{k}={v}" for k, v in env.items() if v is not None)
    print(f"funcvae: {described} in the environment: waiting up to {seconds:g} s for the {size} processes of a "
          f"data-parallel run to join (unset WORLD_SIZE to train in this process alone; {TIMEOUT_ENV} sets the "
          "wait)", file=sys.stderr, flush=True)
    try:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=seconds))
    except (dist.DistError, ValueError) as e:
        raise RuntimeError(f"data-parallel fit could not start ({described}): {str(e).rstrip('.')}. Start every process with "
                           "torchrun, or unset WORLD_SIZE and RANK to train in one process") from e
    return World(dist.get_rank(), dist.get_world_size(), owned=True)


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = TIMEOUT_S if text is None else float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise RuntimeError(f"{TIMEOUT_ENV}={text!r}: must be a number of seconds > 0")
    return seconds


def leave(world: World) -> None:
    if world.owned:
        dist.destroy_process_group()


def check_identical(tree, world: World) -> None:
    """ValueError on every process unless all of them hold the same values in ``tree`` (the params a run
    starts from): each process computes its own updates from them, so a difference would never heal."""
    if world.size == 1:
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in optree.tree_leaves(tree)])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    gap = float((high - low).max())
    if gap != 0:
        raise ValueError(f"the {world.size} processes start from different params (by up to {gap:.3g}): each must "
                         "build the same ones (the same seed, and an init that draws only from the generator it is "
                         "given)")


def all_reduce_sum(grads: dict, stats: Tensor, flag: float) -> tuple[dict, Tensor, float]:
    """Sum ``grads``, ``stats`` and ``flag`` over all processes in one collective call."""
    leaves, spec = optree.tree_flatten(grads)
    flag_t = stats.new_tensor([flag])
    flat = torch.cat([t.reshape(-1) for t in leaves] + [stats.reshape(-1), flag_t])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, offset = [], 0
    for t in leaves:
        out.append(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    summed_stats = flat[offset:offset + stats.numel()].view_as(stats)
    return optree.tree_unflatten(spec, out), summed_stats, float(flat[-1])
