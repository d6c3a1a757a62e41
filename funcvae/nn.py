"""Layers as ``init`` / ``apply`` pairs over dicts of tensors.

Each ``*_init(generator, ...)`` returns a dict ``{"kernel": ..., "bias": ...}`` drawn like the matching
``torch.nn`` layer's default (uniform in +-1/sqrt(fan_in)), so a funcvae model starts from the same
distribution as its ``nn.Module`` twin. Each apply is a pure function of its params and input and works
on one example (the caller batches with ``vmap``) as well as on a batch.

A layer computes its product in its kernel's dtype and returns its input's dtype: with a bfloat16 copy
of the params (``model.with_matmul_dtype``) only the matrix products run in bfloat16, everything between
them in the input's float32.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "elu": F.elu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "leaky_relu": F.leaky_relu,
}


def _uniform(generator: torch.Generator, shape: tuple[int, ...], fan_in: int, dtype, device) -> Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    out = torch.empty(shape, dtype=dtype, device=device)
    return out.uniform_(-bound, bound, generator=generator)


def dense_init(generator: torch.Generator, n_in: int, n_out: int, *, dtype=torch.float32, device=None) -> dict:
    """Params of ``y = x @ kernel.T + bias``: kernel (n_out, n_in), bias (n_out,)."""
    return {
        "kernel": _uniform(generator, (n_out, n_in), n_in, dtype, device),
        "bias": _uniform(generator, (n_out,), n_in, dtype, device),
    }


def _in_kernel_dtype(op: Callable, params: dict, x: Tensor, **options) -> Tensor:
    """``op(x, kernel, bias, **options)`` computed in the kernel's dtype, returned in ``x``'s."""
    kernel = params["kernel"]
    return op(x.to(kernel.dtype), kernel, params["bias"], **options).to(x.dtype)


def dense(params: dict, x: Tensor) -> Tensor:
    """(..., n_in) -> (..., n_out)."""
    return _in_kernel_dtype(F.linear, params, x)


def conv_init(generator: torch.Generator, c_in: int, c_out: int, size: int, *, dtype=torch.float32, device=None) -> dict:
    """Params of a 2-D convolution: kernel (c_out, c_in, size, size), bias (c_out,)."""
    fan_in = c_in * size * size
    return {
        "kernel": _uniform(generator, (c_out, c_in, size, size), fan_in, dtype, device),
        "bias": _uniform(generator, (c_out,), fan_in, dtype, device),
    }


def conv(params: dict, x: Tensor, *, stride: int, padding: int) -> Tensor:
    """(C_in, H, W) or (N, C_in, H, W) -> the same with C_out and the strided size."""
    return _in_kernel_dtype(F.conv2d, params, x, stride=stride, padding=padding)


def conv_transpose_init(
    generator: torch.Generator, c_in: int, c_out: int, size: int, *, dtype=torch.float32, device=None
) -> dict:
    """Params of a 2-D transposed convolution: kernel (c_in, c_out, size, size), bias (c_out,)."""
    # torch.nn.ConvTranspose2d takes its fan-in from the kernel's second dimension; we match it.
    fan_in = c_out * size * size
    return {
        "kernel": _uniform(generator, (c_in, c_out, size, size), fan_in, dtype, device),
        "bias": _uniform(generator, (c_out,), fan_in, dtype, device),
    }


def conv_transpose(params: dict, x: Tensor, *, stride: int, padding: int) -> Tensor:
    """(C_in, H, W) or (N, C_in, H, W) -> the same with C_out and the upsampled size."""
    return _in_kernel_dtype(F.conv_transpose2d, params, x, stride=stride, padding=padding)
