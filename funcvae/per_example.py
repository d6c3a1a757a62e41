"""Per-example gradients, ``vmap(grad(...))`` of the one-example bound, and what they are used for: a
gradient signal-to-noise diagnostic and DP-SGD style clipping with Gaussian noise."""

from __future__ import annotations

from functools import partial
from typing import Callable

import optree
import torch
from torch import Tensor
from torch.func import grad, vmap

from funcvae.compiling import make_step
from funcvae.elbo import example_terms
from funcvae.model import ModelSpec, Params, check_params, with_matmul_dtype
from funcvae.rng import generator
from funcvae.validate import as_examples, check_int, check_nonnegative


def _example_loss(tree: dict, spec: ModelSpec, x: Tensor, eps: Tensor, beta, matmul_dtype):
    terms = example_terms(spec, with_matmul_dtype(tree, matmul_dtype), x, eps, beta)
    return terms["loss"], terms


def example_grads(tree: dict, spec: ModelSpec, x: Tensor, eps: Tensor, beta,
                  matmul_dtype: torch.dtype | None = None) -> tuple[dict, dict]:
    """Gradients of each example's loss: x (B, F), eps (B, K, latent) -> (grads with leaves (B, ...),
    terms of shape (B,), and ``kl_dims`` (B, latent)); ``matmul_dtype``: as in ``elbo.objective``."""
    return vmap(grad(_example_loss, has_aux=True), in_dims=(None, None, 0, 0, None, None))(
        tree, spec, x, eps, beta, matmul_dtype)


def clipped_noisy_mean(grads: dict, weights: Tensor, clip_norm: float, noise: dict) -> dict:
    """DP-SGD's gradient: each example's gradient scaled to L2 norm (over all leaves) at most ``clip_norm``,
    summed over the real rows (``weights`` 1), plus ``noise`` (a tree of N(0, (sigma * clip_norm)^2) draws),
    divided by the number of real rows."""
    leaves, spec = optree.tree_flatten(grads)
    norms = torch.sqrt(sum(t.flatten(1).pow(2).sum(1) for t in leaves))
    factor = weights * torch.clamp(clip_norm / (norms + 1e-12), max=1.0)
    n = weights.sum()
    noisy = [(torch.tensordot(factor, t, dims=1) + z) / n for t, z in zip(leaves, optree.tree_leaves(noise))]
    return optree.tree_unflatten(spec, noisy)


def per_example_grads(params: Params, x, *, seed: int, beta: float = 1.0, scale: float | None = None,
                      compile: bool | str | Callable | None = None) -> Params:
    """Each example's gradient of its own loss (one reparameterised sample, noise from ``seed``).

    Returns:
      ``Params`` whose leaves have a leading dimension N (one gradient per example); their mean over N is
      the gradient of the batch-mean loss. Memory: N times the model size.
    """
    check_params(params)
    check_nonnegative("beta", beta)
    x = as_examples(x, params.spec, scale=scale, like=params.tree["encoder"]["mean"]["kernel"], name="x")
    eps = torch.randn(x.shape[0], 1, params.spec.latent, generator=generator(seed, "per-example", device=x.device),
                      device=x.device, dtype=x.dtype)
    grads, _ = _grads_for(params.spec, compile, x.device)(params.tree, x, eps, beta)
    return Params(params.spec, grads)


def gradient_snr(params: Params, x, *, seed: int, beta: float = 1.0, scale: float | None = None,
                 chunk_size: int = 256, compile: bool | str | Callable | None = None) -> dict[str, float]:
    """Gradient signal-to-noise ratio per parameter tensor: the mean over its elements of
    |E_x[g]| / std_x[g], from per-example gradients over ``x`` (streamed in chunks: memory is
    ``chunk_size`` gradients). Below about 1, a tensor's minibatch gradients are mostly noise."""
    check_params(params)
    check_int("chunk_size", chunk_size)
    x = as_examples(x, params.spec, scale=scale, like=params.tree["encoder"]["mean"]["kernel"], name="x")
    if x.shape[0] < 2:
        raise ValueError("gradient_snr needs at least 2 examples")
    gen = generator(seed, "snr", device=x.device)
    fn = _grads_for(params.spec, compile, x.device)
    total = optree.tree_map(torch.zeros_like, params.tree)
    square = optree.tree_map(torch.zeros_like, params.tree)
    for xb in x.split(chunk_size):
        eps = torch.randn(xb.shape[0], 1, params.spec.latent, generator=gen, device=x.device, dtype=x.dtype)
        g, _ = fn(params.tree, xb, eps, beta)
        total = optree.tree_map(lambda s, t: s + t.sum(0), total, g)
        square = optree.tree_map(lambda s, t: s + t.pow(2).sum(0), square, g)
    n = x.shape[0]
    snr = {}
    for path, s, q in zip(_paths(params.tree), optree.tree_leaves(total), optree.tree_leaves(square)):
        mean = s / n
        std = torch.sqrt(torch.clamp((q - n * mean**2) / (n - 1), min=0.0))
        snr[path] = float((mean.abs() / (std + 1e-12)).mean())
    return snr


def _grads_for(spec: ModelSpec, compile, device: torch.device) -> Callable:
    """``example_grads`` for one spec, compiled as the training step is: one graph with a code object of its
    own per spec, kept for reuse. No CUDA graphs: the gradients are handed to the caller, and a replay would
    overwrite them."""
    return make_step(partial(_spec_example_grads, spec), device, compile, cuda_graphs=False)


def _spec_example_grads(spec: ModelSpec, tree: dict, x: Tensor, eps: Tensor, beta) -> tuple[dict, dict]:
    return example_grads(tree, spec, x, eps, beta)


def _paths(tree: dict) -> list[str]:
    return ["/".join(map(str, p)) for p in optree.tree_paths(tree)]
