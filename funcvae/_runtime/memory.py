"""Freed memory kept in the process for the eager step on a CPU (glibc's malloc).

The step is pure: run op by op, each step makes its moments, parameters and every intermediate afresh and
frees the last step's, megabytes of blocks for the default model. glibc serves a block this large from the
top of its heap and gives the heap's free top back to the system once it exceeds its trim threshold, which
it adapts to twice the largest block freed so far (2.5 MB here). A step frees far more than that at once,
so every step's blocks came back as fresh pages, each a page fault the kernel zeroes: 495 faults a step, an
eighth of the default model's eager step on an Intel Xeon (docs/speed.md, "The eager step"). The compiled
step reuses its own buffers and faults no page, and ``torch.optim``'s in-place updates allocate nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters, from glibc's malloc.h
#: Blocks up to this size come from the heap: glibc's own ceiling for its adaptive mmap threshold.
MMAP_THRESHOLD = 32 << 20
#: Free memory at the heap's top kept up to this much: twice the block size, glibc's own adaptive rule.
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (on Linux), else None: musl and others may lack ``mallopt``
    or make it a no-op."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)  # the C library the process runs on
    return libc if hasattr(libc, "gnu_get_libc_version") else None


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep up to ``TRIM_THRESHOLD`` bytes of freed memory for the next allocations and
    to serve blocks up to ``MMAP_THRESHOLD`` from its heap, once per process. True when set; False where the
    C library is not glibc (nothing is changed). The process's memory use can stay up to ``TRIM_THRESHOLD``
    above what it holds."""
    libc = glibc()
    if libc is None:
        return False
    # Fixed values, so glibc stops adapting them: its adaptation is what lets the heap's top go.
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
