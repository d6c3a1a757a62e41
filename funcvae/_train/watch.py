"""The non-finite watch: how ``on_nonfinite="raise"`` finds a run's first bad step without reading the
device every step, and the epoch's sums, which leave out steps that were not applied."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from funcvae.step import OK


class NonFiniteError(FloatingPointError):
    """A step met a non-finite loss term or gradient; the params were not updated by it."""


class Watch(NamedTuple):
    """``live`` (0-d bool) is True until a step is not applied, and from then on keeps every later step from
    being applied; ``stats`` and ``batch`` are those of the last step taken while live, the bad one once
    ``live`` is False; ``next`` is the index of the next batch (a tensor, so that the compiled step is the
    same for every batch)."""

    live: Tensor
    stats: Tensor
    batch: Tensor
    next: Tensor


def start(like: Tensor, first: int) -> Watch:
    """The watch of an epoch that begins at batch ``first``, on ``like``'s device, stats shaped like it
    (models, stats)."""
    return Watch(torch.ones((), dtype=torch.bool, device=like.device),
                 torch.zeros_like(like),
                 torch.zeros((), dtype=torch.int64, device=like.device),
                 torch.full((), first, dtype=torch.int64, device=like.device))


def after_step(acc: Tensor, watch: Watch, stats: Tensor, watching: bool) -> tuple[Tensor, Watch]:
    """The epoch's sums (``accumulate``) after a step that reported ``stats``, and its watch (``watched``;
    kept as it is unless ``watching``, as under on_nonfinite="skip"). Device work only."""
    return accumulate(acc, stats.view_as(acc)), watched(watch, stats) if watching else watch


def accumulate(acc: Tensor, stats: Tensor) -> Tensor:
    """The epoch's sums (models, ``stat_names``) after a step: its stats if it was applied, else only a count
    of 1 skipped (in the ok column)."""
    applied = stats[..., OK:OK + 1]
    kept = torch.where(applied > 0, stats, 0.0)
    return acc + torch.cat([kept[..., :OK], 1.0 - applied, kept[..., OK + 1:]], -1)


def watched(watch: Watch, stats: Tensor) -> Watch:
    """``watch`` after the step of batch ``watch.next`` reported ``stats``; device work only."""
    return Watch(watch.live & (stats[..., OK] > 0).all(), torch.where(watch.live, stats.view_as(watch.stats),
                                                                        watch.stats),
                 torch.where(watch.live, watch.next, watch.batch), watch.next + 1)


def raise_if_frozen(watch: Watch, epoch: int, steps: int, stacked: bool, checkpoint: Path | None) -> None:
    """Raises NonFiniteError naming the first bad step (model, epoch, batch of ``steps``, term) if the run froze;
    one device read."""
    if bool(watch.live):
        return
    rows = watch.stats
    m = int((rows[:, OK] == 0).nonzero()[0])
    term = "recon" if not torch.isfinite(rows[m, 0]) else "kl" if not torch.isfinite(rows[m, 1]) else "gradient"
    model = f" of model {m}" if stacked else ""
    kept = f"; the last checkpoint, {checkpoint}, is untouched" if checkpoint else ""
    raise NonFiniteError(f"non-finite {term}{model} at epoch {epoch}, batch {int(watch.batch) + 1} of "
                         f"{steps}: the step was not applied{kept}. on_nonfinite='skip' goes on "
                         f"without such steps; a lower lr or a check of the data usually removes them")


def warn_if_nonfinite(record: dict, model: int | None, steps: int) -> None:
    """A RuntimeWarning naming an epoch's non-finite metrics (kept in the history as NaN or inf, and written
    to checkpoints as "NaN" or "Infinity"), and why when every step of it was skipped."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        why = f": every one of its {steps} steps was skipped as non-finite" if record["skipped"] == steps else ""
        of = "" if model is None else f" of model {model}"
        warnings.warn(f"epoch {record['epoch']}{of}: {', '.join(bad)} not finite{why}", RuntimeWarning, stacklevel=4)
