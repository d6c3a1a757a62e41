"""ONE training step, built from a model, an objective and an optimiser: ``step(state, batch) -> (state,
metrics)`` over a ``TrainState``. Everything else is made from it:

- a stack of models is ``vmap(step)`` over stacked states and batches;
- data parallelism is the same two halves, ``gradients`` then ``apply``, with an all-reduce between them;
- ``fit`` is a loop over it.

The step has one static shape: a short last batch arrives padded, with a 0/1 row mask, so a compiled step
is traced once and never again. Step counts are tensors in the state and noise is drawn outside from an
explicit generator, so nothing the step sees changes its trace.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import optree
import torch
from torch import Tensor
from torch.func import grad, grad_and_value, vmap

from funcvae import objectives as O
from funcvae._runtime import trees
from funcvae._runtime.eager import op_by_op
from funcvae.model import Model, Params, some_leaf, with_matmul_dtype
from funcvae.optim import GradientTransformation, applied, apply_updates
from funcvae.checks import check_scale
from funcvae.pixels import level_values, pixel_values

#: What a step reports (``metrics``, one tensor): batch sums of recon, kl and loss over the real rows, the
#: number of real rows, and ok (1 when the update was applied, 0 when a guard skipped it); then, for a model
#: whose KL comes per latent group, the batch sum of each group's KL, and the batch sums of the terms its
#: objective reports besides (``Objective.reports``) (``stat_names``).
STATS = ("recon", "kl", "loss", "rows", "ok")
TERMS = STATS[:3]
OK = STATS.index("ok")


def stat_names(model: Model, objective: O.Objective | None = None) -> tuple[str, ...]:
    """The columns of ``model``'s step metrics: ``STATS``, then ``kl_<group>`` for each latent group whose KL
    the model gives (``objectives.kl_groups``), then the terms ``objective`` reports (``Objective.reports``)."""
    groups = tuple(f"kl_{g}" for g in (O.kl_groups(model) or ()))
    return STATS + groups + (() if objective is None else objective.reports)


class TrainState(NamedTuple):
    """``tree``: the params' tensors; ``opt_state``: the optimiser's state; ``objective_state``: the
    objective's numbers (``objective.init()``: 0-d float64 tensors, one row per model of a stack);
    ``count``: steps taken (0-d int64)."""

    tree: dict
    opt_state: Any
    objective_state: dict
    count: Tensor

    @property
    def hyper(self) -> dict:
        """The old name of ``objective_state``, for one release."""
        warnings.warn("TrainState.hyper is now TrainState.objective_state; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return self.objective_state


class Batch(NamedTuple):
    """``x`` (B, features), floats in the params' dtype or uint8 pixel levels (the step divides them by its
    ``scale``); ``eps`` (B, samples, noise_size) standard normal noise; ``weights`` (B,) 1 for real rows
    and 0 for padding; ``total``: the real rows of the whole batch (the sum of ``weights`` unless a
    data-parallel shard holds part of it); ``noise``: standard normal draws shaped like the params, for
    an optimiser that adds noise (DP-SGD), else None; ``context``: (B, K), a conditional model's context in
    the params' dtype, else None."""

    x: Tensor
    eps: Tensor
    weights: Tensor
    total: Tensor | None = None
    noise: Any = None
    context: Tensor | None = None


def init_state(params: Params, objective: O.Objective, optimizer: GradientTransformation) -> TrainState:
    """The state a run starts from: the params' tree, a fresh optimiser state, the objective's numbers
    (on the params' device), no step taken."""
    device = some_leaf(params).device
    numbers = {k: v.to(device) for k, v in objective.init().items()}
    return TrainState(params.tree, optimizer.init(params.tree), numbers,
                      torch.zeros((), dtype=torch.int64, device=device))


class TrainStep:
    """``make_train_step``'s step; hashable by what it computes, so equal steps share a compiled graph."""

    def __init__(self, model: Model, objective: O.Objective, optimizer: GradientTransformation,
                 matmul_dtype: torch.dtype | None = None, scale: int | float | None = None):
        O.check(objective, model)
        if optimizer.per_example and not objective.separable:
            raise ValueError(f"{optimizer.name} takes per-example gradients, which {objective.name} cannot give "
                             "(its batch loss is not a mean of per-example losses)")
        self.model, self.objective, self.optimizer, self.matmul_dtype = model, objective, optimizer, matmul_dtype
        self.scale = check_scale(scale)

    @property
    def key(self) -> tuple:
        """What the step computes: the model, the code of the objective and the optimiser (not their numbers,
        which live in the state), and the scale of pixel levels (a constant of the compiled graph)."""
        o = self.objective
        return (self.model, o.samples, o.schedule, o.terms, o.batch, o.reduce, self.optimizer.update,
                self.optimizer.per_example, self.matmul_dtype, self.scale)

    def __eq__(self, other):
        return isinstance(other, TrainStep) and self.key == other.key

    def __hash__(self):
        return hash(self.key)

    def gradients(self, state: TrainState, batch: Batch) -> tuple[dict, Tensor]:
        """Gradients of the batch's loss w.r.t. ``state.tree`` (per example, leaves (B, ...), for a per-example
        optimiser) and the batch's stats: sums of recon, kl, loss, the real rows, each latent group's KL and
        each term the objective reports (``stat_names`` without ok)."""
        batch = batch._replace(x=self._values(batch.x, batch.eps.dtype))
        numbers = self.objective.schedule(state.objective_state, state.count, batch.x.dtype)
        total = batch.weights.sum() if batch.total is None else batch.total
        if self.optimizer.per_example:
            c_dim = None if batch.context is None else 0
            grads, terms = vmap(grad(self._example_loss, has_aux=True), in_dims=(None, 0, 0, None, c_dim))(
                state.tree, batch.x, batch.eps, numbers, batch.context)
        else:
            tree = state.tree
            grads, terms = (_autograd if op_by_op() else _func_grad)(
                lambda leaves: self._batch_loss(trees.like(tree, leaves), batch, numbers, total), trees.leaves(tree))
            grads = trees.like(tree, grads)
        w = batch.weights
        stats = torch.stack([(terms[k] * w).sum() for k in TERMS] + [w.sum()])
        if "kl_groups" in terms:
            stats = torch.cat([stats, (terms["kl_groups"] * w.unsqueeze(-1)).sum(0)])
        if self.objective.reports:
            stats = torch.cat([stats, torch.stack([(terms[k] * w).sum() for k in self.objective.reports])])
        return grads, stats.detach()

    def apply(self, state: TrainState, grads: dict, stats: Tensor, batch: Batch) -> tuple[TrainState, Tensor]:
        """The optimiser's update applied: the new state and the metrics (``stat_names``)."""
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.tree, value=stats[:3],
                                                   weights=batch.weights, noise=batch.noise)
        ok = applied(opt_state)
        ok = stats.new_ones(()) if ok is None else ok.to(stats.dtype)
        new = TrainState(apply_updates(state.tree, updates), opt_state, state.objective_state, state.count + 1)
        return new, torch.cat([stats[:OK], ok.unsqueeze(0), stats[OK:]]).detach()

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, Tensor]:
        grads, stats = self.gradients(state, batch)
        return self.apply(state, grads, stats, batch)

    def _values(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """The batch as the model sees it: floats as they are; uint8 pixel levels divided by the scale (1 without
        one) in float64 and rounded to ``dtype``, the noise's, which is the params' (``pixels.pixel_values``)."""
        if x.is_floating_point():
            return x
        if x.dtype not in (torch.uint8, torch.bool):
            raise TypeError(f"a batch's x must be floats or uint8 pixel levels, got {x.dtype}")
        return pixel_values(x, level_values(1 if self.scale is None else self.scale, dtype, x.device))

    def _params(self, tree: dict) -> Params:
        return Params(self.model, with_matmul_dtype(tree, self.matmul_dtype))

    def _batch_loss(self, tree: dict, batch: Batch, numbers: dict, total: Tensor):
        return O.batch_loss(self._params(tree), batch.x, batch.eps, numbers, self.objective, batch.context,
                            batch.weights, total)

    def _example_loss(self, tree: dict, x: Tensor, eps: Tensor, numbers: dict, c: Tensor | None):
        terms = self.objective.terms(self._params(tree), x, eps, numbers, c)
        return terms["loss"], terms


def _func_grad(loss: Callable, leaves: list) -> tuple[list, dict]:
    """``loss``'s gradients at ``leaves`` and its terms, by ``torch.func.grad``: what dynamo traces and vmap
    batches. grad gets the leaves, a flat list, and nothing else: it wraps and flattens its arguments (in
    dynamo's trace, Python work per node), and the batch and numbers are not differentiated."""
    grads, (_, terms) = grad_and_value(loss, has_aux=True)(leaves)
    return grads, terms


def _autograd(loss: Callable, leaves: list) -> tuple[list, dict]:
    """``_func_grad`` by ``torch.autograd.grad``, for the step run op by op: the same backward formulas, so the
    same bits (tested on every built-in family), without functorch's wrapping of every op (9.2 ms against
    7.2 ms for the default model's gradients at batch 128 on 2 cores; docs/speed.md, "The eager step")."""
    leaves = [t.detach().requires_grad_() for t in leaves]
    with torch.enable_grad():
        value, terms = loss(leaves)
        grads = torch.autograd.grad(value, leaves, materialize_grads=True)
    return list(grads), optree.tree_map(Tensor.detach, terms, namespace="funcvae")


def make_train_step(model: Model, objective: O.Objective, optimizer: GradientTransformation, *,
                    matmul_dtype: torch.dtype | None = None, scale: int | float | None = None) -> TrainStep:
    """The training step of ``model`` under ``objective`` and ``optimizer``: ``step(state, batch) -> (state,
    metrics)``, pure. ``matmul_dtype`` (``torch.bfloat16``): the layers' matrix products in it, everything
    else (params, gradients, optimiser state, terms) in the params' dtype. ``scale``: a batch of uint8 pixel
    levels (a quarter of float32's bytes) is divided by it, 1 when None, inside the step, giving exactly the
    values of ``(x.to(float64) / scale).to(dtype)`` in the params' dtype; a float batch is taken as it is.

    Example:
      >>> step = make_train_step(model, objectives.elbo(), optim.adam(1e-3))
      >>> state = init_state(params, objectives.elbo(), optim.adam(1e-3))
      >>> state, metrics = step(state, Batch(x, eps, weights))   # + context=(B, K) for a conditional model
    """
    return TrainStep(model, objective, optimizer, matmul_dtype, scale)


def stacked(step: TrainStep):
    """The step of a stack of models: ``vmap(step)`` over states and batches (x, eps, weights and a
    conditional model's context) with a leading model dimension."""
    return vmap(step, in_dims=(0, Batch(0, 0, 0, None, None, None if step.model.context is None else 0)))
