"""Per-example gradients, ``vmap(grad(...))`` of the one-example bound, and a gradient signal-to-noise
diagnostic built on them (DP-SGD's clipping is ``funcvae.optim.differentially_private_aggregate``)."""

from __future__ import annotations

from functools import partial
from typing import Callable

import optree
import torch
from torch import Tensor
from torch.func import grad, vmap

from funcvae import objectives
from funcvae._runtime.compiling import compile_step
from funcvae.model import Params, with_matmul_dtype
from funcvae.context import examples_and_context
from funcvae.rng import generator
from funcvae.checks import check_int, check_nonnegative


# Built once, outside any compiled function: tracing ``objectives.elbo()`` would trace its cached helpers.
_ELBO = objectives.elbo()


def _example_loss(tree: dict, model, x: Tensor, eps: Tensor, beta, matmul_dtype, c: Tensor | None = None):
    terms = _ELBO.terms(Params(model, with_matmul_dtype(tree, matmul_dtype)), x, eps, {"beta": beta}, c)
    return terms["loss"], terms


def example_grads(params: Params, x: Tensor, eps: Tensor, beta, matmul_dtype: torch.dtype | None = None,
                  c: Tensor | None = None) -> tuple[dict, dict]:
    """Gradients of each example's beta-ELBO loss: x (B, F), eps (B, K, noise_size), c (B, K_context) or None
    -> (grads with leaves (B, ...), terms of shape (B,)); ``matmul_dtype``: as in
    ``funcvae.step.make_train_step``."""
    return vmap(grad(_example_loss, has_aux=True), in_dims=(None, None, 0, 0, None, None, None if c is None else 0))(
        params.tree, params.model, x, eps, beta, matmul_dtype, c)


def per_example_grads(params: Params, x, *, seed: int, beta: float = 1.0, scale: float | None = None,
                      compile: bool | str | Callable | None = None, context=None) -> Params:
    """Each example's gradient of its own loss (one reparameterised sample, noise from ``seed``);
    ``context``: a conditional model's, as for ``funcvae.elbo``.

    Returns:
      ``Params`` whose leaves have a leading dimension N (one gradient per example); their mean over N is
      the gradient of the batch-mean loss. Memory: N times the model size.
    """
    check_nonnegative("beta", beta)
    x, c = examples_and_context(params, x, context, scale=scale)
    eps = torch.randn(x.shape[0], 1, params.model.noise_size, generator=generator(seed, "per-example", device=x.device),
                      device=x.device, dtype=x.dtype)
    grads, _ = _grads_for(params.model, compile, x.device)(params.tree, x, eps, x.new_tensor(beta), c)
    return Params(params.model, grads)


def gradient_snr(params: Params, x, *, seed: int, beta: float = 1.0, scale: float | None = None,
                 chunk_size: int = 256, compile: bool | str | Callable | None = None, context=None) -> dict[str, float]:
    """Gradient signal-to-noise ratio per parameter tensor: the mean over its elements of
    |E_x[g]| / std_x[g], from per-example gradients over ``x`` (streamed in chunks: memory is
    ``chunk_size`` gradients). Below about 1, a tensor's minibatch gradients are mostly noise."""
    check_int("chunk_size", chunk_size)
    x, c = examples_and_context(params, x, context, scale=scale)
    if x.shape[0] < 2:
        raise ValueError("gradient_snr needs at least 2 examples")
    gen = generator(seed, "snr", device=x.device)
    fn = _grads_for(params.model, compile, x.device)
    total = optree.tree_map(torch.zeros_like, params.tree)
    square = optree.tree_map(torch.zeros_like, params.tree)
    for i, xb in enumerate(x.split(chunk_size)):
        eps = torch.randn(xb.shape[0], 1, params.model.noise_size, generator=gen, device=x.device, dtype=x.dtype)
        g, _ = fn(params.tree, xb, eps, x.new_tensor(beta), None if c is None else c.split(chunk_size)[i])
        total = optree.tree_map(lambda s, t: s + t.sum(0), total, g)
        square = optree.tree_map(lambda s, t: s + t.pow(2).sum(0), square, g)
    n = x.shape[0]
    snr = {}
    for path, s, q in zip(_paths(params.tree), optree.tree_leaves(total), optree.tree_leaves(square)):
        mean = s / n
        std = torch.sqrt(torch.clamp((q - n * mean**2) / (n - 1), min=0.0))
        snr[path] = float((mean.abs() / (std + 1e-12)).mean())
    return snr


def _grads_for(model, compile, device: torch.device) -> Callable:
    """``example_grads`` for one model, compiled as the training step is: one graph per model, kept for reuse.
    No CUDA graphs: the gradients are handed to the caller, and a replay would overwrite them."""
    return compile_step(partial(_model_example_grads, model), device, compile, cuda_graphs=False)


def _model_example_grads(model, tree: dict, x: Tensor, eps: Tensor, beta, c: Tensor | None) -> tuple[dict, dict]:
    return example_grads(Params(model, tree), x, eps, beta, c=c)


def _paths(tree: dict) -> list[str]:
    return ["/".join(map(str, p)) for p in optree.tree_paths(tree)]
