"""The training step: one pure function (loss, ``grad_and_value``, optimiser update), compiled as one graph.

The step has one static shape: a short last batch arrives padded, with a 0/1 row mask, so the compiled
graph is traced once and never again (no dynamic batch dimension, no second graph). The Adam step
count is a tensor in the optimiser state, and the noise is drawn outside from an explicit generator, so
nothing the step sees changes its trace.
"""

from __future__ import annotations


import optree
import torch
from torch import Tensor
from torch.func import vmap

from funcvae.elbo import TERMS, loss_and_grad
from funcvae.model import ModelSpec
from funcvae.optim import GradientTransformation, apply_updates
from funcvae.per_example import clipped_noisy_mean, example_grads


def train_step(spec: ModelSpec, optimizer: GradientTransformation, tree: dict, opt_state, x: Tensor,
               eps: Tensor, beta: Tensor, weights: Tensor):
    """One optimiser step on a batch; pure.

    Args:
      x: (B, features); eps: (B, K, latent); beta: 0-d KL weight; weights: (B,) 1 for real rows, 0 for padding.

    Returns:
      ``(tree, opt_state, sums)``; ``sums`` (3,) holds the batch sums of (recon, kl, loss) over the real
      rows, before the update, in ``TERMS`` order.
    """
    grads, (_, sums) = loss_and_grad(tree, spec, x, eps, beta, weights)
    updates, opt_state = optimizer.update(grads, opt_state, tree)
    return apply_updates(tree, updates), opt_state, torch.stack([sums[k] for k in TERMS]).detach()


def dp_train_step(spec: ModelSpec, optimizer: GradientTransformation, clip_norm: float, tree: dict, opt_state,
                  x: Tensor, eps: Tensor, beta: Tensor, weights: Tensor, noise: dict):
    """``train_step`` with DP-SGD's gradient: per-example gradients (``vmap(grad)``) clipped to L2 norm
    ``clip_norm``, summed with ``noise`` (drawn outside, N(0, (sigma * clip_norm)^2) per element), averaged."""
    grads, terms = example_grads(tree, spec, x, eps, beta)
    updates, opt_state = optimizer.update(clipped_noisy_mean(grads, weights, clip_norm, noise), opt_state, tree)
    sums = torch.stack([(terms[k] * weights).sum() for k in TERMS]).detach()
    return apply_updates(tree, updates), opt_state, sums


def stacked_train_step(spec: ModelSpec, optimizer: GradientTransformation, lrs: Tensor, tree: dict, opt_state,
                       x: Tensor, eps: Tensor, beta: Tensor, weights: Tensor):
    """One step for N models at once: ``tree`` leaves (N, ...), x (N, B, F), eps (N, B, K, latent), beta (N,),
    ``lrs`` (N,) learning rates; ``optimizer`` is built with lr 1 (Adam's update is proportional to lr, and
    elementwise, so it runs on the stacked leaves as they are). Returns sums of shape (N, 3)."""
    def one_model(t, xb, e, b):
        return loss_and_grad(t, spec, xb, e, b, weights)  # the padding mask is the same for every model

    grads, (_, sums) = vmap(one_model)(tree, x, eps, beta)
    updates, opt_state = optimizer.update(grads, opt_state, tree)
    updates = optree.tree_map(lambda u: u * lrs.view(-1, *([1] * (u.ndim - 1))), updates)
    return apply_updates(tree, updates), opt_state, torch.stack([sums[k] for k in TERMS], dim=1).detach()


def pad_rows(t: Tensor, rows: int) -> Tensor:
    """``t`` with zero rows appended along dim 0 up to ``rows``."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])

