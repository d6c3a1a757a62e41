"""Boundary checks: turn what a user passes as data into a validated (N, features) float tensor.

Every check runs before any work, so bad input fails at once with an error that names the problem.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


def as_examples(data, model, *, scale: float | None = None, like: Tensor, name: str = "data") -> Tensor:
    """Validate ``data`` for ``model`` (a ``funcvae.Model``) and return it as (N, features) in ``like``'s dtype/device.

    Accepts a tensor, a numpy array, a map-style Dataset or a DataLoader whose items are examples or
    ``(example, label)`` pairs. Images may be (N, F), (N, H, W) when there is one channel, or (N, C, H, W).
    Integer data must lie in [0, 1] unless ``scale`` says what to divide by (255 for 8-bit pixels).

    Raises:
      TypeError: an unsupported container or dtype.
      ValueError: empty data, a wrong shape, NaN/Inf, a bad scale, or values outside the likelihood's support.
    """
    x = _to_tensor(data, name)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    x = _to_flat(x, model, name)
    if x.is_complex():
        raise TypeError(f"{name} has complex dtype {x.dtype}; expected real pixel values")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        x = x.to(torch.float64) / scale
    elif not x.is_floating_point() and x.dtype != torch.bool:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"{name} is integer ({x.dtype}) with values in [{lo}, {hi}], outside [0, 1]; state the scale, "
                f"e.g. scale=255 for 8-bit pixels"
            )
    x = x.to(dtype=like.dtype, device=like.device)
    model.likelihood.check_support(x, name)
    return x


def _to_tensor(data, name: str) -> Tensor:
    if isinstance(data, Tensor):
        return data.detach()
    if isinstance(data, np.ndarray):
        if data.dtype == object:
            raise TypeError(f"{name} is a numpy array of Python objects; expected numbers")
        # torch reads native byte order only.
        return torch.from_numpy(np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("=")))
    if isinstance(data, DataLoader):
        batches = [_example_of(batch) for batch in data]
        if not batches:
            raise ValueError(f"{name} is an empty DataLoader")
        return torch.cat([torch.as_tensor(b) for b in batches])
    if isinstance(data, Dataset):
        if len(data) == 0:
            raise ValueError(f"{name} is an empty Dataset")
        return torch.stack([torch.as_tensor(_example_of(data[i])) for i in range(len(data))])
    raise TypeError(f"{name} must be a torch.Tensor, numpy array, Dataset or DataLoader, got {type(data).__name__}")


def _example_of(item):
    # Labelled datasets yield (image, label); the image is the example.
    return item[0] if isinstance(item, (tuple, list)) else item


def _to_flat(x: Tensor, model, name: str) -> Tensor:
    c, h, w = model.input_shape
    ok = (x.ndim == 2 and x.shape[1] == model.features) or (x.ndim == 3 and c == 1 and x.shape[1:] == (h, w)) \
        or (x.ndim == 4 and x.shape[1:] == (c, h, w))
    if not ok:
        shapes = [f"(N, {model.features})", f"(N, {c}, {h}, {w})"] + ([f"(N, {h}, {w})"] if c == 1 else [])
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; params built for {c}x{h}x{w} inputs take {' or '.join(shapes)}"
        )
    return x.reshape(x.shape[0], model.features)


def check_int(name: str, value, *, minimum: int = 1) -> None:
    """Raise ValueError unless ``value`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_positive(name: str, value) -> None:
    """Raise ValueError unless ``value`` is a finite real number > 0."""
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_nonnegative(name: str, value) -> None:
    """Raise ValueError unless ``value`` is a finite real number >= 0."""
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _is_real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
