"""The pixel table: the value each 8-bit level stands for, read by the step, the batches and the data's
fingerprint, so 8-bit data held as uint8 train exactly as the same data given as floats."""

from __future__ import annotations

import torch
from torch import Tensor


def level_values(scale: int | float, dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
    """(256,): the value each uint8 level stands for, ``(level.to(float64) / scale).to(dtype)``. The divisions
    are Python's, in IEEE double like torch's float64, so they are exact whatever runs the step: inductor
    turns a division by a constant into a multiplication by its reciprocal on a GPU, which can differ."""
    return torch.tensor([float(level) / scale for level in range(256)], dtype=torch.float64,
                        device=device).to(dtype)


def pixel_values(x: Tensor, levels: Tensor) -> Tensor:
    """The values of uint8 (or bool) levels ``x``, of its shape, read from ``levels = level_values(scale,
    dtype, x.device)``: exactly ``(x.to(float64) / scale).to(dtype)``."""
    index = x.reshape(-1).to(torch.int32)  # index_select with int32 indices is as fast as the division
    return levels.index_select(0, index).view(x.shape)
