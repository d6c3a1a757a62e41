"""The training step: pure functions (loss, ``grad_and_value``, optimiser update) compiled as one graph.

The step has one static shape: a short last batch arrives padded, with a 0/1 row mask, so the compiled
graph is traced once and never again (no dynamic batch dimension, no second graph). The Adam step
count is a tensor in the optimiser state, and the noise is drawn outside from an explicit generator, so
nothing the step sees changes its trace.

Every step is guarded: a non-finite loss term or gradient leaves the params and the optimiser state as
they were (selected on the device, no host sync), and the step's ``stats`` say so. A step passed
``live=False`` (a 0-d bool tensor) is not applied either: ``fit`` uses it to freeze a run after its first
bad step until its next read of the device, so a GPU runs a whole epoch without waiting on the host.
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

#: What a step reports, per model: batch sums of recon, kl and loss over the real rows, the number of real
#: rows, and ok (1 when the step was applied, 0 when a non-finite value made it skip).
STATS = (*TERMS, "rows", "ok")


def batch_grads(spec: ModelSpec, tree: dict, x: Tensor, eps: Tensor, beta: Tensor, weights: Tensor,
                count: Tensor | None = None, *, free_bits: float = 0.0,
                matmul_dtype: torch.dtype | None = None) -> tuple[dict, Tensor]:
    """Gradients of the batch-mean loss and the batch's stats[:4]: x (B, F), eps (B, K, latent),
    weights (B,) 1 for real rows and 0 for padding, count the real rows of the whole batch; ``free_bits``
    and ``matmul_dtype``: see ``objective``."""
    grads, (_, sums) = loss_and_grad(tree, spec, x, eps, beta, weights, count, free_bits, matmul_dtype)
    return grads, torch.stack([sums[k] for k in TERMS] + [weights.sum()])


def guarded_update(optimizer: GradientTransformation, tree: dict, opt_state, grads: dict, stats: Tensor,
                   lrs: Tensor | None = None, live: Tensor | None = None):
    """Apply ``optimizer`` unless a loss term or gradient is non-finite, or ``live`` (0-d bool) is False.
    For a stack (leaves (N, ...), stats (N, 4)) each model is guarded on its own and ``lrs`` (N,) scales its
    update. Returns (tree, opt_state, stats with "ok" appended)."""
    leaves = optree.tree_leaves(grads)
    lead = stats.ndim - 1  # 0 for one model, 1 for a stack
    finite = [torch.isfinite(stats[..., :3]).all(-1)] + [torch.isfinite(g).flatten(lead).all(-1) for g in leaves]
    ok = torch.stack(finite).all(0)
    if live is not None:
        ok = ok & live
    updates, new_state = optimizer.update(grads, opt_state, tree)
    if lrs is not None:
        updates = optree.tree_map(lambda u: u * _per_model(lrs, u), updates)
    new_tree = apply_updates(tree, updates)
    keep = optree.tree_map(lambda new, old: torch.where(_per_model(ok, new), new, old), new_tree, tree)
    new_state = optree.tree_map(lambda new, old: torch.where(_per_model(ok, new) if new.ndim else ok.any(), new, old),
                                new_state, opt_state)
    return keep, new_state, torch.cat([stats, ok.to(stats.dtype).unsqueeze(-1)], dim=-1).detach()


def train_step(spec: ModelSpec, optimizer: GradientTransformation, tree: dict, opt_state, x: Tensor,
               eps: Tensor, beta: Tensor, weights: Tensor, live: Tensor | None = None, *, free_bits: float = 0.0,
               matmul_dtype: torch.dtype | None = None):
    """One guarded optimiser step on a batch; pure.

    Args:
      x: (B, features); eps: (B, K, latent); beta: 0-d KL weight; weights: (B,) 1 for real rows, 0 for padding;
      live: 0-d bool, False to leave everything as it is (see the module's docstring); None: True.

    Returns:
      ``(tree, opt_state, stats)``; ``stats`` (5,) as in ``STATS``, the sums taken before the update.
    """
    grads, stats = batch_grads(spec, tree, x, eps, beta, weights, free_bits=free_bits, matmul_dtype=matmul_dtype)
    return guarded_update(optimizer, tree, opt_state, grads, stats, live=live)


def dp_train_step(spec: ModelSpec, optimizer: GradientTransformation, clip_norm: float, tree: dict, opt_state,
                  x: Tensor, eps: Tensor, beta: Tensor, weights: Tensor, noise: dict, live: Tensor | None = None, *,
                  matmul_dtype: torch.dtype | None = None):
    """``train_step`` with DP-SGD's gradient: per-example gradients (``vmap(grad)``) clipped to L2 norm
    ``clip_norm``, summed with ``noise`` (drawn outside, N(0, (sigma * clip_norm)^2) per element), averaged."""
    grads, terms = example_grads(tree, spec, x, eps, beta, matmul_dtype)
    stats = torch.stack([(terms[k] * weights).sum() for k in TERMS] + [weights.sum()])
    return guarded_update(optimizer, tree, opt_state, clipped_noisy_mean(grads, weights, clip_norm, noise), stats,
                          live=live)


def stacked_train_step(spec: ModelSpec, optimizer: GradientTransformation, lrs: tuple[float, ...], tree: dict,
                       opt_state, x: Tensor, eps: Tensor, beta: Tensor, weights: Tensor, live: Tensor | None = None,
                       *, free_bits: float = 0.0, matmul_dtype: torch.dtype | None = None):
    """One step for N models at once: ``tree`` leaves (N, ...), x (N, B, F), eps (N, B, K, latent), beta (N,),
    ``lrs`` the N learning rates; ``optimizer`` is built with lr 1 (Adam's update is proportional to lr, and
    elementwise, so it runs on the stacked leaves as they are; the step count is shared and advances while
    any model steps). Returns stats of shape (N, 5)."""
    def one_model(t, xb, e, b):
        # One padding mask for all models.
        return batch_grads(spec, t, xb, e, b, weights, free_bits=free_bits, matmul_dtype=matmul_dtype)

    grads, stats = vmap(one_model)(tree, x, eps, beta)
    return guarded_update(optimizer, tree, opt_state, grads, stats, x.new_tensor(lrs), live)


def _per_model(values: Tensor, like: Tensor) -> Tensor:
    """``values`` () or (N,) shaped to broadcast against ``like`` (...) or (N, ...)."""
    return values.view(*values.shape, *([1] * (like.ndim - values.ndim)))
