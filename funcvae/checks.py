"""Argument checks: a setting as the plain Python value it stands for, or a ValueError that names it; and
the two helpers value checks word their messages with."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def first_index(mask: Tensor) -> tuple[int, ...]:
    """The index of the first True of ``mask`` in row-major order (which holds one), without listing them all."""
    flat = int(mask.reshape(-1).to(torch.uint8).argmax())  # argmax returns the first of equal maxima
    return tuple(int(i) for i in np.unravel_index(flat, tuple(mask.shape)))


def exact(value: float) -> str:
    """``value`` written short (``%g``) where that reads back as the same number, else in full (its repr):
    1.0000001192092896 must not print as 1 in a message that says it is above 1."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def plain(value):
    """A numpy scalar, or a 0-d numpy array or tensor, as the Python value it holds (so a setting prints,
    compares and saves as JSON as one); anything else as it is, for the caller's check."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    if isinstance(value, Tensor) and value.ndim == 0 and not value.is_meta:
        return value.item()
    return value


def check_int(name: str, value, *, minimum: int = 1) -> int:
    """``value`` as an int; ValueError unless it is an int or numpy integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_positive(name: str, value) -> int | float:
    """``value`` as a Python number; ValueError unless it is a finite real number > 0."""
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return plain(value)


def check_nonnegative(name: str, value) -> int | float:
    """``value`` as a Python number; ValueError unless it is a finite real number >= 0."""
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return plain(value)


def check_unit(name: str, value, *, closed: bool = False) -> int | float:
    """``value`` as a Python number; ValueError unless it is a real number in [0, 1) ([0, 1] if ``closed``)."""
    value = plain(value)
    if not _is_real(value) or not (0 <= value < 1 or (closed and value == 1)):
        raise ValueError(f"{name} must be in [0, 1{']' if closed else ')'}, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` as a bool; ValueError unless it is a bool or a numpy bool (or a 0-d array or tensor of one)."""
    value = plain(value)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_scale(scale) -> int | float | None:
    """The ``scale`` integer pixels are divided by as a Python number (None: none); ValueError unless it is
    a positive finite number (a numpy scalar, 0-d array or tensor of one included)."""
    if scale is None:
        return None
    value = plain(scale)
    if not _is_real(value) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return value


def _is_real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
