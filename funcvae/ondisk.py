"""A training set read from its file batch by batch: a numpy memory map of integer pixel levels
(``np.load(path, mmap_mode="r")``), which ``fit`` trains on without ever holding it whole in memory.

Rows are read with ``pread`` rather than gathered through the map: every page a process touches through a
file-backed mapping counts in its resident memory (RSS) until the kernel reclaims it, so an epoch of random
batches would leave the whole file in the process's RSS. Read from the file, the bytes pass through the page
cache (the system's, dropped first under pressure) into a buffer of one batch. The design and what it costs:
docs/training.md (data bigger than memory).
"""

from __future__ import annotations

import mmap
import os
import weakref
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

#: Bytes a pass over the whole set (its range check) reads at a time.
BLOCK_BYTES = 1 << 24


def is_mapped(data) -> bool:
    """Whether ``data`` is a memory map of a file that ``OnDisk`` reads from: an ``np.memmap`` of a named file
    opened to share the file's bytes (mode "r", "r+" or "w+"; a copy-on-write map, "c", may hold changes the
    file does not, so it is an array like any other)."""
    return isinstance(data, np.memmap) and data.filename is not None and data.mode != "c" \
        and _root(data) is not None


class OnDisk:
    """(N, F) uint8 pixel levels read from the file of an ``np.memmap`` of integers (or bools) in [0, 255],
    only the rows asked for. The few tensor members ``fit`` uses on its training set are here, so batches,
    checks and the fingerprint take either.

    Attributes:
      shape: (N, F), examples by features.
      dtype: torch.uint8, what every read returns (the file's own dtype is ``source``).
      device: where reads are returned (the params' device).
      source: the file's numpy dtype; its values must lie in [0, 255] (``fit`` checks them with ``min``/``max``
        first), since reads convert them to uint8.
      filename: the file's path.
    """

    dtype = torch.uint8

    def __init__(self, array: np.memmap, features: int, device: torch.device):
        """``array``: a memory map for which ``is_mapped`` holds, (N, ...) with F = ``features`` values per
        example in C order.

        Raises:
          ValueError: an example that is not one contiguous run of the file's bytes (a transposed map).
          OSError: the file cannot be opened.
        """
        n = array.shape[0]
        if n and not array[:1].flags.c_contiguous:
            raise ValueError(f"the memory map of {array.filename} has strides {array.strides}: its examples are "
                             "not each one run of the file's bytes, so they cannot be read from it in batches; "
                             "save the array in C order (np.ascontiguousarray), or pass np.array(data) to train "
                             "on it in memory")
        root = _root(array)
        self.shape = torch.Size((n, features))
        self.device = torch.device(device)
        self.source = array.dtype
        self.filename = array.filename
        self._start = root.offset + (array.ctypes.data - root.ctypes.data)  # the file's byte of row 0
        self._stride = array.strides[0]  # from one row to the next: a slice (mm[::2]) skips rows
        self._row = features * array.dtype.itemsize
        self._fd = os.open(array.filename, os.O_RDONLY)  # held: the file may be renamed or removed meanwhile
        weakref.finalize(self, os.close, self._fd)
        self._extremes: tuple[int, int] | None = None

    def index_select(self, dim: int, index: Tensor) -> Tensor:
        """Rows ``index`` ((B,) integers, on any device) as (B, F) uint8 on ``device``, as ``x.index_select(0,
        index)`` gives them from the same levels in memory."""
        if dim != 0:
            raise ValueError(f"an OnDisk set selects rows (dim 0), not dim {dim}")
        rows = index.cpu().numpy().astype(np.int64, copy=False)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row index out of range [0, {self.shape[0]}): {rows.min()}..{rows.max()}")
        return self._levels(self._read(rows))

    def split(self, rows: int) -> Iterator[Tensor]:
        """The set in order, ``rows`` rows at a time, as (rows, F) uint8 on ``device`` (the last may be short)."""
        for first in range(0, self.shape[0], rows):
            yield self._levels(self._read(np.arange(first, min(first + rows, self.shape[0]))))

    def min(self) -> int:
        """The smallest value in the file (one pass over it, shared with ``max``)."""
        return self._range()[0]

    def max(self) -> int:
        """The largest value in the file."""
        return self._range()[1]

    def find(self, test: Callable[[np.ndarray], np.ndarray]) -> tuple[int, tuple[int, int] | None, int | None]:
        """How many values ``test`` holds for (a function of (n, F) rows in the file's dtype to their mask), the
        (row, feature) index of the first of them and its value (None, None where there is none)."""
        count, first = 0, (None, None)
        for start, rows in self._blocks():
            mask = test(rows)
            count += int(np.count_nonzero(mask))
            if first[0] is None and count:
                row, feature = divmod(int(mask.argmax()), self.shape[1])
                first = (start + row, feature), int(rows[row, feature])
        return count, *first

    def _range(self) -> tuple[int, int]:
        if self._extremes is None:
            lo, hi = None, None
            for _, rows in self._blocks():
                lo = int(rows.min()) if lo is None else min(lo, int(rows.min()))
                hi = int(rows.max()) if hi is None else max(hi, int(rows.max()))
            self._extremes = lo, hi
        return self._extremes

    def _blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, (n, F) rows in the file's dtype) over the whole set, ``BLOCK_BYTES`` at a time."""
        n = self.shape[0]
        step = max(1, BLOCK_BYTES // self._row)
        for first in range(0, n, step):
            yield first, self._read(np.arange(first, min(first + step, n)))

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` ((B,) int64 in [0, N)) as (B, F) in the file's dtype (read-only where ``rows`` are in
        the file's order), read in the file's order: each run of rows that follow one another there is one
        ``pread``."""
        at = self._start + rows * self._stride
        order = np.argsort(at, kind="stable")
        parts, first, size = [], -1, 0  # no file position is -1
        for pos in at[order].tolist():
            if pos != first + size:  # not the next row in the file: read the run so far, start another
                if size:
                    parts.append(self._pread(first, size))
                first, size = pos, 0
            size += self._row
        if size:
            parts.append(self._pread(first, size))
        in_order = np.frombuffer(b"".join(parts), self.source).reshape(len(rows), self.shape[1])
        if (np.diff(order) == 1).all():
            return in_order
        out = np.empty_like(in_order)
        out[order] = in_order
        return out

    def _pread(self, pos: int, size: int) -> bytes:
        """``size`` bytes of the file from ``pos`` (a read may return fewer: it is repeated for the rest)."""
        data = os.pread(self._fd, size, pos)
        while len(data) < size:
            more = os.pread(self._fd, size - len(data), pos + len(data))
            if not more:
                raise ValueError(f"{self.filename} ends at byte {pos + len(data)}, inside the data its memory map "
                                 "was opened on: the file was cut short since")
            data += more
        return data

    def _levels(self, rows: np.ndarray) -> Tensor:
        """Rows of the file's dtype as a uint8 tensor of their levels (values checked to lie in [0, 255]) on
        ``device``."""
        levels = rows.view(np.uint8) if self.source.itemsize == 1 else rows.astype(np.uint8)
        return torch.from_numpy(np.require(levels, requirements="W")).to(self.device)


def _root(array: np.memmap) -> np.memmap | None:
    """The memory map that ``np.memmap`` made over the file, of which ``array`` is a view (numpy keeps the owner
    of the memory as the base of every view), or None if it has none (an array that only looks like one)."""
    root = array if isinstance(array.base, mmap.mmap) else array.base
    return root if isinstance(root, np.memmap) and isinstance(root.base, mmap.mmap) else None
