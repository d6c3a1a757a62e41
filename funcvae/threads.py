"""How many CPU threads fit's steps use on a machine that other processes share.

PyTorch's CPU work (its kernels, MKL's and oneDNN's products, the C++ inductor compiles) runs on OpenMP
threads that meet at a barrier after every parallel region. Beside another busy process, one of fit's threads
is often off its core while the others wait for it at the barrier, spinning: on 2 cores next to one busy
Python loop a fit epoch took 4x as long. One thread next to that process has a core to itself and ran the same
epoch in 1.0-1.5x the unloaded time. Shorter OpenMP spinning was measured too: it cost up to 30% on an
unloaded machine, which this does not (an unloaded machine keeps every thread).

So fit looks at the machine about every ``INTERVAL_S`` seconds of training: the cores that other processes
kept busy since its last look (from /proc/stat, less this process's own CPU time) are left to them, and the
steps run on the rest, at least one thread and never more than torch was set to use. A window in which fit
may have compiled (before its first step; the step after a change) is not judged: inductor compiles in
worker processes, which would read as others. The setting is restored when fit returns. Where /proc/stat
cannot be read nothing changes. The results do not depend on it: the step's products and reductions give the
same bits on any number of threads (tested on the built-in models).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

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
    """While fit trains: yields ``look() -> bool``, to call after each step; it samples the machine every
    ``INTERVAL_S`` and sets torch's threads by ``threads_for``, returning whether it changed them (a compiled
    step is then compiled once more for the new count, which dynamo checks). Restores the count on exit.

    A window in which this process may have compiled is not judged, since inductor compiles in worker
    processes whose CPU time would read as other processes': the first window starts at the first look
    (after the first step) and the one after a change starts at the look after it."""
    most = torch.get_num_threads()
    if not adapt or device.type != "cpu" or sample() is None:
        yield lambda: False
        return
    cores, last = os.cpu_count() or most, [None]

    def look() -> bool:
        if last[0] is not None and time.perf_counter() - last[0].wall < INTERVAL_S:
            return False
        now, before = sample(), last[0]
        last[0] = now
        if before is None:
            return False
        wanted = threads_for(others_busy(before, now), most, cores)
        if wanted == torch.get_num_threads():
            return False
        torch.set_num_threads(wanted)
        last[0] = None  # the next step compiles for the new count: start the next window after it
        return True

    try:
        yield look
    finally:
        torch.set_num_threads(most)
