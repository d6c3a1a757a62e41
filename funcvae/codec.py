"""The model's two halves as public, batched functions (``vmap`` of the one-example maths)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vmap

from funcvae.context import as_context, examples_and_context
from funcvae.model import Params, some_leaf
from funcvae.contract import check_params
from funcvae.rng import derive_seed, generator
from funcvae.checks import check_int

#: Draws per example behind a Monte Carlo posterior mean and variance (a posterior given as a draw): the
#: mean's standard error is then a sixteenth of the posterior's std.
MOMENT_SAMPLES = 256


def encode(params: Params, x, *, scale: float | None = None, context=None, seed: int | None = None,
           samples: int = MOMENT_SAMPLES) -> tuple[Tensor, Tensor]:
    """The mean and log-variance of q(z | x) per latent dimension for a batch: x as (N, F), (N, H, W) or
    (N, C, H, W) -> (mean, logvar), each (N, noise_size) (latent groups side by side, in ``model.groups``'
    order).

    A model given by ``encode`` returns its Gaussian's own moments. For a posterior given as a draw (a flow, a
    full covariance, a hierarchy) they are Monte Carlo estimates over ``samples`` draws named by ``seed``
    (required then): the mean's standard error is exp(logvar / 2) / sqrt(samples), and the variance is the
    unbiased sample variance of each dimension's marginal. ``context``: a conditional model's, as for ``elbo``.
    """
    x, c = examples_and_context(params, x, context, scale=scale)
    model = params.model
    if model.gaussian:
        return vmap(model.encode_one, in_dims=(None, 0, None if c is None else 0))(params.tree, x, c)
    z = _draws(params, x, c, seed=seed, samples=samples)
    return z.mean(1), torch.log(z.var(1, correction=1))


def _draws(params: Params, x: Tensor, c: Tensor | None, *, seed: int | None, samples: int) -> Tensor:
    """``samples`` draws of q(z | x) for each validated example, flat: (N, samples, noise_size)."""
    if seed is None:
        raise ValueError(f"the posterior of {params.model} is given as a draw, so its moments are Monte Carlo "
                         "estimates: pass seed= to name the draws")
    derive_seed(seed)
    check_int("samples", samples, minimum=2)
    model = params.model
    eps = torch.randn(x.shape[0], samples, model.noise_size, generator=generator(seed, "encode", device=x.device),
                      dtype=x.dtype, device=x.device)

    def one(xi, ei, ci):
        return model.join(vmap(model.draw, in_dims=(None, None, 0, None))(params.tree, xi, ei, ci)[0])

    with torch.no_grad():
        return vmap(one, in_dims=(0, 0, None if c is None else 0))(x, eps, c)


def decode(params: Params, z, *, context=None) -> Tensor:
    """The decoder for a batch of latents: z (N, latent) (flat (N, noise_size), or a dict of (N, size) per
    group) -> the likelihood's parameters with a leading N (for the built-in models: (N, F) Bernoulli logits or
    Gaussian means, or a (mean, logvar) pair for a learned variance, a (mean, log_scale) pair for the
    discretised logistic); ``params.model.likelihood.mean(out)`` gives the mean images, (N, F). ``context``: a
    conditional model's, one label or vector per latent."""
    check_params(params)
    model = params.model
    if isinstance(z, dict) and model.groups is not None:
        if set(z) != set(model.groups):
            raise ValueError(f"z's groups are {sorted(z)}; the model's are {list(model.groups)}")
        z = model.join(z)
    if not isinstance(z, Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    size = model.noise_size
    if z.ndim != 2 or z.shape[1] != size:
        raise ValueError(f"z must have shape (N, {size}), got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"z must be floating-point, got {z.dtype}")
    if not bool(torch.isfinite(z).all()):
        raise ValueError("z holds NaN or Inf values")
    like = some_leaf(params)
    c = as_context(model, context, z.shape[0], like=like)
    z = model.split(z.to(dtype=like.dtype, device=like.device))
    return vmap(model.decode_one, in_dims=(None, 0, None if c is None else 0))(params.tree, z, c)
