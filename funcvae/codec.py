"""The model's two halves as public, batched functions (``vmap`` of the one-example maths)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor
from torch.func import vmap

from funcvae.model import Params, some_leaf
from funcvae.contract import check_params, examples_of


def encode(params: Params, x, *, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """q(z | x) for a batch: x as (N, F), (N, H, W) or (N, C, H, W) -> (mean, logvar), each (N, latent)."""
    x = examples_of(params, x, scale=scale)
    return vmap(partial(params.model.encode_one, params.tree))(x)


def decode(params: Params, z: Tensor) -> Tensor:
    """The decoder for a batch of latents: z (N, latent) -> the likelihood's parameters with a leading N (for
    the built-in models: (N, F) Bernoulli logits or Gaussian means, or a (mean, logvar) pair for a learned
    variance); ``params.model.likelihood.mean(out)`` gives the mean images, (N, F)."""
    check_params(params)
    if not isinstance(z, Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    latent = params.model.latent
    if z.ndim != 2 or z.shape[1] != latent:
        raise ValueError(f"z must have shape (N, {latent}), got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"z must be floating-point, got {z.dtype}")
    if not bool(torch.isfinite(z).all()):
        raise ValueError("z holds NaN or Inf values")
    like = some_leaf(params)
    return vmap(partial(params.model.decode_one, params.tree))(z.to(dtype=like.dtype, device=like.device))
