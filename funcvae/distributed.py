"""Data parallelism over torch.distributed: every process holds the whole data and draws every batch,
takes its block of rows, and the gradients (with the batch's stats) are summed across processes as ONE
flat buffer; the update then runs identically everywhere. gloo on CPU, NCCL on GPU; ``torchrun`` sets
the environment this reads."""

from __future__ import annotations

import os
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


def join(device: torch.device) -> World:
    """The process group ``torchrun`` describes (WORLD_SIZE > 1), started here if the caller has not."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), owned=False)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), owned=True)


def leave(world: World) -> None:
    if world.owned:
        dist.destroy_process_group()


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
