"""New images from a trained VAE: draws z ~ p(z) (ancestral, for a hierarchy) decoded to the likelihood's mean."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vmap

from funcvae.checks import check_int
from funcvae.context import as_context
from funcvae.contract import check_params
from funcvae.model import Params, some_leaf
from funcvae.rng import generator


def sample(params: Params, n: int, *, seed: int, context=None) -> Tensor:
    """``n`` new images: the likelihood's means of decoded prior draws, (n, C, H, W) in [0, 1].

    Args:
      params: one model.
      n: how many.
      seed: names the draws; the same seed gives the same images.
      context: a conditional model's (required then): one label in [0, K) or vector of size K per sample, (n,)
        or (n, K); images of p(x | context).
    """
    check_int("n", n)
    check_params(params)
    like = some_leaf(params)
    c = as_context(params.model, context, n, like=like)
    return decoded_images(params, prior_draws(params, n, generator(seed, "sample", device=like.device), c), c)


def balanced_context(params: Params, n: int) -> Tensor | None:
    """A conditional model's context for ``n`` samples of every class alike: labels 0, 1, ..., K-1, 0, ...
    one-hot (None for an unconditional model)."""
    k = params.model.context
    if k is None:
        return None
    like = some_leaf(params)
    return as_context(params.model, torch.arange(n) % k, n, like=like)


def prior_draws(params: Params, n: int, gen: torch.Generator, c: Tensor | None = None):
    """``n`` draws z ~ p(z | c) in the model's structure (leading n), from ``gen``; ``c`` (n, K) or None."""
    model, like = params.model, some_leaf(params)
    with torch.no_grad():
        return model.prior.sample(params.tree, model, n, gen, like, c)


def decoded_images(params: Params, z, c: Tensor | None = None) -> Tensor:
    """Latents ``z`` (the model's structure, leading n) decoded to mean images (n, C, H, W) in [0, 1]."""
    model = params.model
    with torch.no_grad():
        out = vmap(model.decode_one, in_dims=(None, 0, None if c is None else 0))(params.tree, z, c)
    return mean_images(params, out)


def mean_images(params: Params, out) -> Tensor:
    """Decoder outputs (the likelihood's parameters, leading N) -> mean images (N, C, H, W) in [0, 1]."""
    model = params.model
    return model.likelihood.mean(out).clamp(0.0, 1.0).reshape(-1, *model.input_shape)
