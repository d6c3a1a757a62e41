"""How many CPU threads fit's steps use on a machine that other processes share: every ``INTERVAL_S``
seconds of training, the cores other processes leave free (/proc/stat, less this process's own CPU time),
at least one, never more than torch was set to use, restored when fit returns. A count is used only after
the step gave the same bits on it. Why and what it buys: docs/speed.md ("A shared machine") and
docs/training.md ("Same seed, same bits").

A window in which this process may have compiled (before its first step; the step after a change or a
check) is not judged: inductor compiles in worker processes, which would read as others.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, NamedTuple

import torch

INTERVAL_S = 0.5  # how often fit looks at the machine, in seconds of training
_STAT = Path("/proc/stat")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Sample(NamedTuple):
    """What the machine and this process had done at ``wall`` (seconds): the CPU seconds all cores spent busy
    and those this process spent."""

    wall: float
    busy: float
    own: float


def sample() -> Sample | None:
    """The machine's and this process's CPU time now; None where /proc/stat cannot be read."""
    try:
        fields = _STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4] - ticks[7]  # idle, waiting for IO, or taken by the hypervisor
    times = os.times()
    return Sample(time.perf_counter(), busy / _TICKS, times.user + times.system)


def others_busy(before: Sample, after: Sample) -> float:
    """Cores other processes kept busy on average between two samples."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    return max(0.0, (after.busy - before.busy) - (after.own - before.own)) / wall


def threads_for(others: float, most: int, cores: int) -> int:
    """Threads to run on when other processes keep ``others`` cores busy: the cores they leave, at least one,
    at most ``most``."""
    return max(1, min(most, cores - round(others)))


@contextmanager
def shared_cores(device: torch.device, adapt: bool = True):
    """While fit trains: yields ``look(same) -> bool``, to call after each step.

    ``look`` samples the machine every ``INTERVAL_S`` seconds and sets torch's thread count by ``threads_for``;
    it returns whether the count changed. ``same() -> bool`` is called, with the new count already set, the
    first time each count would be used: it must compute the step just taken again and say whether every bit
    is the same. A count for which it says False is restored at once and never tried again. Restores torch's
    count on exit; does nothing unless ``adapt``, on a CPU where /proc/stat can be read.
    """
    most = torch.get_num_threads()
    if not adapt or device.type != "cpu" or sample() is None:
        yield lambda same: False
        return
    cores, last, checked, refused = os.cpu_count() or most, [None], {most}, set()

    def look(same: Callable[[], bool]) -> bool:
        if last[0] is not None and time.perf_counter() - last[0].wall < INTERVAL_S:
            return False
        now, before = sample(), last[0]
        last[0] = now
        if before is None:
            return False
        current, wanted = torch.get_num_threads(), threads_for(others_busy(before, now), most, cores)
        if wanted == current or wanted in refused:
            return False
        torch.set_num_threads(wanted)
        last[0] = None  # the next step (or the check) may compile for the new count: start the next window after it
        if wanted not in checked:
            if not same():
                torch.set_num_threads(current)
                refused.add(wanted)
                return False
            checked.add(wanted)
        return True

    try:
        yield look
    finally:
        torch.set_num_threads(most)
