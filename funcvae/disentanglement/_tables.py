"""The inputs of the scores checked and shaped: codes (N, D) float64, factors (N, K) int64 with their names,
images drawn by row; and results made JSON values."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from funcvae.checks import check_int


def factor_table(factors, names: Sequence[str] | None = None, *, rows: int, factor_count: int = 1,
                 least: int = 2) -> tuple[np.ndarray, tuple[str, ...]]:
    """``factors`` (as the scores take them) checked and made (N, K) int64 for ``rows`` images (at least
    ``least``), with at least ``factor_count`` factors, each taking two values or more; and their names.

    Raises:
      TypeError, ValueError: the message names what is wrong (dtype, shape, rows, names, a constant factor).
    """
    if isinstance(factors, dict):
        if names is not None:
            raise ValueError("factors given as a dict are named by its keys; pass names= with an (N, K) array only")
        names = tuple(factors)
        columns = [_array(v, f"factors[{k!r}]") for k, v in factors.items()]
        if not columns or any(c.shape != (rows,) for c in columns):
            raise ValueError(f"factors as a dict must hold (N,) columns, one value per image ({rows}), got shapes "
                             f"{[c.shape for c in columns]}")
        y = np.stack(columns, axis=1)
    else:
        y = _array(factors, "factors")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"factors must be integers (each factor's value index), got dtype {y.dtype}")
    if y.ndim != 2:
        raise ValueError(f"factors must be (N, K), one row per image, got shape {y.shape}")
    if len(y) != rows:
        raise ValueError(f"factors has {len(y)} rows for {rows} images (or codes); give one row per image")
    if len(y) < least:
        raise ValueError(f"there are {len(y)} rows of codes and factors; the score needs at least {least}")
    if y.shape[1] < factor_count:
        raise ValueError(f"factors has {y.shape[1]} factor(s); the score tells {factor_count} or more apart")
    names = tuple(f"factor {k}" for k in range(y.shape[1])) if names is None else tuple(names)
    if len(names) != y.shape[1] or not all(isinstance(s, str) for s in names):
        raise ValueError(f"names must be {y.shape[1]} strings, one per factor, got {names!r}")
    lone = np.flatnonzero(y.min(0) == y.max(0))
    if len(lone):
        k = int(lone[0])
        raise ValueError(f"factor {k} ({names[k]!r}) takes the one value {y[0, k]} in every row: its entropy is 0, "
                         "so it has no information to score (MIG would divide by 0); drop it")
    return y.astype(np.int64), names


def _pair(codes, factors, names, *, rows: int, dims: int, factor_count: int = 1):
    """``codes`` (N, D) float64 and ``factors`` (N, K) int64 checked against each other, and the names."""
    z = _code_array(codes, "codes")
    if z.shape[1] < dims:
        raise ValueError(f"codes has {z.shape[1]} dimension(s); the score compares the two best of each factor, "
                         f"so it needs at least {dims}")
    y, names = factor_table(factors, names, rows=len(z), factor_count=factor_count, least=rows)
    return z, y, names


def _code_array(codes, name: str) -> np.ndarray:
    """Codes as (N, D) float64, D >= 1, finite; a TypeError or ValueError that names the problem."""
    a = _array(codes, name)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be real numbers, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"{name} must be (N, D), one row per image, got shape {a.shape}")
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} holds {int(bad.sum())} NaN or Inf values (first at {first})")
    return a


def _split(y: np.ndarray, train: int | None) -> int:
    """The number of leading training rows (default two thirds), each factor taking two values among them."""
    n = len(y)
    t = round(2 * n / 3) if train is None else check_int("train", train)
    if not 1 <= t < n:
        raise ValueError(f"train={t} leaves no rows to score of the {n}; give train < {n}")
    lone = np.flatnonzero(y[:t].min(0) == y[:t].max(0))
    if len(lone):
        raise ValueError(f"factor {int(lone[0])} takes one value in the first {t} rows, the training part; a "
                         "classifier needs two: give the rows in random order, or more of them")
    return t


def _array(value, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        if value.is_meta:
            raise ValueError(f"{name} is on the meta device (no values)")
        value = value.detach().cpu()
        return (value.double() if value.is_floating_point() else value).numpy()  # numpy has no bfloat16
    if isinstance(value, (np.ndarray, list, tuple)):
        return np.asarray(value)
    raise TypeError(f"{name} must be a tensor or an array, got {type(value).__name__}")


def _length(images, name: str) -> int:
    try:
        n = len(images)
    except TypeError:
        raise TypeError(f"{name} must be a tensor or an array of images, got {type(images).__name__}") from None
    if n < 1:
        raise ValueError(f"{name} holds no images")
    return n


def _check_represent(represent, images) -> None:
    if not callable(represent):
        raise TypeError(f"represent must be a function of images returning (n, D) codes, got "
                        f"{type(represent).__name__}")
    if not isinstance(images, (Tensor, np.ndarray)):
        raise TypeError(f"images must be a tensor or an array (its rows are drawn), got {type(images).__name__}")


def _take(images, rows: np.ndarray):
    """The images of ``rows`` (int64), in their own type (a memory map reads only those rows)."""
    if isinstance(images, Tensor):
        return images[torch.from_numpy(rows).to(images.device)]
    return images[rows]


def _represented(represent, images) -> np.ndarray:
    """``represent(images)`` checked: (len(images), D) finite floats, as float64."""
    out = represent(images)
    if not isinstance(out, (Tensor, np.ndarray)) or out.ndim != 2 or out.shape[0] != len(images):
        raise ValueError(f"represent must return (n, D) codes for n = {len(images)} images, got "
                         f"{type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))}")
    return _code_array(out, "represent's codes")


def _represented_like(table: np.ndarray, dims: int) -> None:
    if table.shape[1] != dims:
        raise ValueError(f"represent returned codes of {table.shape[1]} dimensions, after {dims} before; it must "
                         "give every image a code of the same size")


def _json(value):
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, tuple)):
        return np.asarray(value).tolist()
    return value
