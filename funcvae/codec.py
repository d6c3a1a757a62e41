"""The model's two halves as public, batched functions (``vmap`` of the one-example maths)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor
from torch.func import vmap

from funcvae.model import Params, check_params, decode_one, encode_one
from funcvae.validate import as_examples


def encode(params: Params, x, *, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """q(z | x) for a batch: x as (N, F), (N, H, W) or (N, C, H, W) -> (mean, logvar), each (N, latent)."""
    check_params(params)
    x = as_examples(x, params.spec, scale=scale, like=params.tree["encoder"]["mean"]["kernel"], name="x")
    return vmap(partial(encode_one, params.spec, params.tree))(x)


def decode(params: Params, z: Tensor) -> Tensor:
    """The decoder for a batch of latents: z (N, latent) -> (N, F) Bernoulli logits or Gaussian means
    (reshape with ``.view(-1, *params.spec.input_shape)`` for images)."""
    check_params(params)
    if not isinstance(z, Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if z.ndim != 2 or z.shape[1] != params.spec.latent:
        raise ValueError(f"z must have shape (N, {params.spec.latent}), got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"z must be floating-point, got {z.dtype}")
    if not bool(torch.isfinite(z).all()):
        raise ValueError("z holds NaN or Inf values")
    like = params.tree["encoder"]["mean"]["kernel"]
    return vmap(partial(decode_one, params.spec, params.tree))(z.to(dtype=like.dtype, device=like.device))
