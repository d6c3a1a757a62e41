"""Optax-style optimisers over parameter pytrees: ``init(params) -> state``,
``update(updates, state, params, **extra) -> (updates, state)``, composed with ``chain``, applied with
``apply_updates``.

Pure: nothing passed in is modified. The trees may be plain dicts of tensors or ``Params``. Every numeric
hyperparameter (learning rate, weight decay, momentum, clipping norm, ...) lives in the state as a 0-d
float64 tensor, not in the update's code: a stack of models with different learning rates is ``vmap`` of ONE
update over stacked states, for any optimiser, and two optimisers that differ only in their numbers share one
compiled step. A learning rate may also be a schedule (``funcvae.schedules``), a function of the transform's
own step count.

``extra`` carries what some transforms need besides the gradients: ``value`` (the loss terms, for
``apply_if_finite``), and ``weights`` and ``noise`` (for ``differentially_private_aggregate``); the others
ignore it. Leaves are updated one by one with plain elementwise ops, not ``torch._foreach_*`` kernels: those
have no ``vmap`` rule, and a stack is ``vmap`` of the update (compiled, the ops fuse into one loop anyway).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import optree
import torch
from torch import Tensor

from funcvae._runtime import trees
from funcvae._runtime.eager import op_by_op
from funcvae.checks import check_nonnegative, check_positive, check_unit, plain


class GradientTransformation(NamedTuple):
    """``init``, ``update``; ``name`` describes it (recorded with a run, so resuming with another one is
    refused); ``per_example``: its update takes one gradient per example (leading batch dimension); ``lr``:
    ``lr(state)``, the learning rate its next update uses (0-d float64), or None for a transform without one
    (read it with ``learning_rate``)."""

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]
    name: str
    per_example: bool = False
    lr: Callable[[Any], Tensor] | None = None


class AdamState(NamedTuple):
    """``count``: 0-d int64 tensor of steps taken (a tensor, so a compiled step never specialises on it);
    ``mu``, ``nu``: moment estimates shaped like the params; ``hyper``: ``{"lr": ..., "weight_decay": ...}``."""

    count: Tensor
    mu: Any
    nu: Any
    hyper: dict


class SgdState(NamedTuple):
    count: Tensor
    momentum: Any  # the velocity, shaped like the params (empty without momentum)
    hyper: dict


class HyperState(NamedTuple):
    """The state of a transform whose only state is its hyperparameters."""

    hyper: dict


class ApplyIfFiniteState(NamedTuple):
    """``inner``: the wrapped transform's state; ``ok`` (0-d bool): the last update was applied; ``live``
    (0-d bool): False once a non-finite step froze a ``freeze=True`` guard; ``skipped`` (0-d int64)."""

    inner: Any
    ok: Tensor
    live: Tensor
    skipped: Tensor


def _hyper(device, **values) -> dict:
    return {k: torch.tensor(float(v), dtype=torch.float64, device=device) for k, v in values.items()}


def _device(params):
    leaves = optree.tree_leaves(params, namespace="funcvae")
    return leaves[0].device if leaves else None


def _lr_parts(lr) -> tuple[float, Callable | None]:
    """A learning rate as (scale kept in the state, schedule or None): a schedule is kept as code, scale 1."""
    if callable(lr):
        return 1.0, lr
    return float(check_positive("lr", lr)), None


def _lr_at(hyper: dict, schedule: Callable | None, count: Tensor) -> Tensor:
    return hyper["lr"] if schedule is None else hyper["lr"] * schedule(count)


def _lr_of(schedule: Callable | None, state) -> Tensor:
    """The learning rate of the next update of an Adam or SGD ``state``."""
    return _lr_at(state.hyper, schedule, state.count)


def learning_rate(optimizer: GradientTransformation, state) -> float | None:
    """The learning rate ``optimizer``'s next update uses, read from its ``state`` (one model's): the number
    given, or a schedule's value at the state's step count (updates applied so far: a step that
    ``apply_if_finite`` skipped does not count); None for an optimiser without one (clipping alone)."""
    return None if optimizer.lr is None else float(optimizer.lr(state))


def adam(lr, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Adam (Kingma & Ba 2015) with the arithmetic of ``torch.optim.Adam`` (bias-corrected, eps outside
    the square root), so both give the same iterates on the same gradients, except that a moment below the
    smallest normal float is set to zero (see ``_adam_update``). ``lr``: a number or a schedule."""
    return _adamw(lr, b1, b2, eps, 0.0, "adam")


def adamw(lr, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-2
          ) -> GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019): Adam plus decoupled weight decay, ``- lr * weight_decay * params``,
    as ``torch.optim.AdamW`` computes it."""
    weight_decay = check_nonnegative("weight_decay", weight_decay)
    return _adamw(lr, b1, b2, eps, weight_decay, "adamw")


def _adamw(lr, b1, b2, eps, weight_decay, kind) -> GradientTransformation:
    scale, schedule = _lr_parts(lr)
    b1, b2, eps = check_unit("b1", b1), check_unit("b2", b2), check_nonnegative("eps", eps)
    decay = {} if kind == "adam" else {"weight_decay": weight_decay}

    def init(params) -> AdamState:
        leaves, spec = optree.tree_flatten(params, namespace="funcvae")
        device = _device(params)
        # Separate buffers: moments that alias each other would also make a compiled step recompile.
        mu, nu = ([torch.zeros_like(t) for t in leaves] for _ in range(2))
        return AdamState(torch.zeros((), dtype=torch.int64, device=device), optree.tree_unflatten(spec, mu),
                         optree.tree_unflatten(spec, nu), _hyper(device, lr=scale, **decay))

    name = f"{kind}(lr={_describe(lr)}, b1={b1}, b2={b2}, eps={eps}" + (
        f", weight_decay={weight_decay})" if decay else ")")
    return GradientTransformation(init, _adam_update(b1, b2, eps, schedule, bool(decay)), name,
                                  lr=functools.partial(_lr_of, schedule))


@functools.lru_cache(maxsize=None)
def _adam_update(b1: float, b2: float, eps: float, schedule: Callable | None, decoupled: bool) -> Callable:
    """Adam's update for these constants (one function per set, so compiled steps are shared)."""

    def update(grads, state: AdamState, params=None, **extra):
        g = trees.leaves(grads)
        count = state.count + 1
        mu = [torch.lerp(m, gi, 1.0 - b1) for m, gi in zip(trees.leaves(state.mu), g)]
        nu = [torch.addcmul(v * b2, gi, gi, value=1.0 - b2) for v, gi in zip(trees.leaves(state.nu), g)]
        # Moments below the smallest normal number are zero, as a flush-to-zero processor mode would make
        # them: subnormal moments stick and slow every CPU step (docs/speed.md, "Adam without subnormals").
        mu, nu = [_flush_subnormal(m) for m in mu], [_flush_subnormal(v) for v in nu]
        # Bias corrections in float64, stacked so a compiled step computes them once a step, not once per
        # parameter element (docs/speed.md, "Adam's bias corrections once a step").
        t = count.to(torch.float64)
        lr = _lr_at(state.hyper, schedule, state.count)
        descent, correction2 = torch.stack([-lr / (1.0 - b1**t), torch.sqrt(1.0 - b2**t)]).to(g[0].dtype)
        updates = [m / (torch.sqrt(v) / correction2 + eps) * descent for m, v in zip(mu, nu)]
        if decoupled:
            decay = (lr * state.hyper["weight_decay"]).to(g[0].dtype)
            updates = [u - p * decay for u, p in zip(updates, trees.leaves(params))]
        return trees.like(grads, updates), AdamState(count, trees.like(grads, mu), trees.like(grads, nu), state.hyper)

    return update


def _flush_subnormal(t: Tensor) -> Tensor:
    """``t`` with every element of magnitude below the smallest normal number set to zero. hardshrink at the
    largest subnormal is that selection in one vectorised pass; ``where(t.abs() < tiny, 0, t)`` took three,
    its bool ones unvectorised on a CPU (docs/speed.md, "The eager step")."""
    info = torch.finfo(t.dtype)
    return torch.nn.functional.hardshrink(t, info.tiny * (1 - info.eps))  # tiny less the smallest subnormal


def sgd(lr, momentum: float = 0.0, nesterov: bool = False) -> GradientTransformation:
    """Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD`` computes it:
    velocity ``v = momentum * v + g`` (``v = g`` at the first step), update ``-lr * v`` (or
    ``-lr * (g + momentum * v)`` with Nesterov)."""
    scale, schedule = _lr_parts(lr)
    momentum = check_unit("momentum", momentum)
    if nesterov and not momentum:
        raise ValueError("nesterov needs a momentum > 0")

    def init(params) -> SgdState:
        leaves, spec = optree.tree_flatten(params, namespace="funcvae")
        device = _device(params)
        velocity = optree.tree_unflatten(spec, [torch.zeros_like(t) for t in leaves]) if momentum else {}
        return SgdState(torch.zeros((), dtype=torch.int64, device=device), velocity,
                        _hyper(device, lr=scale, momentum=momentum))

    name = f"sgd(lr={_describe(lr)}, momentum={momentum}" + (", nesterov=True)" if nesterov else ")")
    return GradientTransformation(init, _sgd_update(schedule, bool(momentum), nesterov), name,
                                  lr=functools.partial(_lr_of, schedule))


@functools.lru_cache(maxsize=None)
def _sgd_update(schedule: Callable | None, with_momentum: bool, nesterov: bool) -> Callable:
    def update(grads, state: SgdState, params=None, **extra):
        g = trees.leaves(grads)
        lr = _lr_at(state.hyper, schedule, state.count).to(g[0].dtype)
        velocity = state.momentum
        if with_momentum:
            m = state.hyper["momentum"].to(g[0].dtype)
            first = state.count == 0  # torch.optim.SGD starts the velocity at the first gradient
            old = trees.leaves(state.momentum)
            v = [torch.where(first, gi, m * vi + gi) for gi, vi in zip(g, old)]
            g = [gi + m * vi for gi, vi in zip(g, v)] if nesterov else v
            velocity = trees.like(grads, v)
        updates = [gi * -lr for gi in g]
        return trees.like(grads, updates), SgdState(state.count + 1, velocity, state.hyper)

    return update


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale the updates down to an L2 norm (over all leaves together) of at most ``max_norm``."""
    max_norm = check_positive("max_norm", max_norm)

    def init(params) -> HyperState:
        return HyperState(_hyper(_device(params), max_norm=max_norm))

    return GradientTransformation(init, _clip_update, f"clip_by_global_norm({max_norm})")


def _clip_update(updates, state: HyperState, params=None, **extra):
    leaves = trees.leaves(updates)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in leaves]))
    factor = torch.clamp(state.hyper["max_norm"].to(norm.dtype) / (norm + 1e-12), max=1.0)
    return trees.like(updates, [t * factor for t in leaves]), state


def differentially_private_aggregate(clip_norm: float, noise_multiplier: float) -> GradientTransformation:
    """DP-SGD's aggregation (Abadi et al. 2016): per-example gradients (leaves (B, ...)) each scaled to L2
    norm (over all leaves) at most ``clip_norm``, summed over the real rows (``weights`` 1), plus Gaussian
    noise of std ``noise_multiplier * clip_norm`` (``noise``: a tree of standard normal draws shaped like the
    params, drawn by the caller at the boundary), divided by the number of real rows. Put it first in a
    ``chain``; the training step then computes per-example gradients (``vmap(grad)``)."""
    clip_norm = check_positive("clip_norm", clip_norm)
    noise_multiplier = check_nonnegative("noise_multiplier", noise_multiplier)

    def init(params) -> HyperState:
        return HyperState(_hyper(_device(params), clip_norm=clip_norm, noise_multiplier=noise_multiplier))

    name = f"differentially_private_aggregate(clip_norm={clip_norm}, noise_multiplier={noise_multiplier})"
    return GradientTransformation(init, _dp_update, name, per_example=True)


def _dp_update(grads, state: HyperState, params=None, *, weights: Tensor, noise, **extra):
    leaves = trees.leaves(grads)
    clip = state.hyper["clip_norm"].to(leaves[0].dtype)
    std = (state.hyper["noise_multiplier"] * state.hyper["clip_norm"]).to(leaves[0].dtype)
    # reshape, not flatten(1): a 0-d param's per-example gradients are (B,), which flatten(1) refuses.
    norms = torch.sqrt(sum(t.reshape(t.shape[0], -1).pow(2).sum(1) for t in leaves))
    factor = weights * torch.clamp(clip / (norms + 1e-12), max=1.0)
    n = weights.sum()
    noise = trees.leaves(noise)
    noisy = [(torch.tensordot(factor, t, dims=1) + std * z) / n for t, z in zip(leaves, noise)]
    return trees.like(grads, noisy), state


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """The transforms applied one after the other (optax's ``chain``); state: a tuple of theirs."""
    if not transforms or not all(isinstance(t, GradientTransformation) for t in transforms):
        raise TypeError("chain takes one or more GradientTransformations (adam, sgd, clip_by_global_norm, ...)")
    if any(t.per_example for t in transforms[1:]):
        raise ValueError("a per-example transform (differentially_private_aggregate) must come first in a chain")

    def init(params) -> tuple:
        return tuple(t.init(params) for t in transforms)

    name = "chain(" + ", ".join(t.name for t in transforms) + ")"
    rates = [functools.partial(_part_lr, i, t.lr) for i, t in enumerate(transforms) if t.lr is not None]
    return GradientTransformation(init, _chain_update(tuple(t.update for t in transforms)), name,
                                  transforms[0].per_example, rates[0] if rates else None)


def _part_lr(i: int, lr: Callable, state: tuple) -> Tensor:
    """The learning rate of a chain's ``i``-th transform, from the chain's state."""
    return lr(state[i])


@functools.lru_cache(maxsize=None)
def _chain_update(updates: tuple[Callable, ...]) -> Callable:
    def update(grads, state: tuple, params=None, **extra):
        new_states = []
        for fn, s in zip(updates, state):
            grads, s = fn(grads, s, params, **extra)
            new_states.append(s)
        return grads, tuple(new_states)

    return update


def apply_if_finite(inner: GradientTransformation, *, freeze: bool = False) -> GradientTransformation:
    """``inner``, except that an update whose gradients or ``value`` (the loss terms, when passed) hold a NaN
    or Inf is not applied: the updates are zero and ``inner``'s state stays as it was (selected on the
    device, no host sync; eagerly on a CPU, where reading the flag costs no sync, picked by it).
    ``freeze=True``: after the first such step no later update is applied either, until the caller reads
    ``live`` (how ``fit(on_nonfinite="raise")`` stops at the first bad step without reading the device every
    step)."""

    def init(params) -> ApplyIfFiniteState:
        device = _device(params)
        true = torch.ones((), dtype=torch.bool, device=device)
        return ApplyIfFiniteState(inner.init(params), true, true.clone(),
                                  torch.zeros((), dtype=torch.int64, device=device))

    name = f"apply_if_finite({inner.name}" + (", freeze=True)" if freeze else ")")
    lr = None if inner.lr is None else functools.partial(_inner_lr, inner.lr)
    return GradientTransformation(init, _guarded_update(inner.update, freeze), name, inner.per_example, lr)


def _inner_lr(lr: Callable, state: ApplyIfFiniteState) -> Tensor:
    return lr(state.inner)


@functools.lru_cache(maxsize=None)
def _guarded_update(inner_update: Callable, freeze: bool) -> Callable:
    def update(grads, state: ApplyIfFiniteState, params=None, *, value: Tensor | None = None, **extra):
        leaves = trees.leaves(grads)
        ok = _all_finite(leaves if value is None else [*leaves, value])
        live = state.live & ok if freeze else state.live
        ok = ok & state.live if freeze else ok
        updates, new_inner = inner_update(grads, state.inner, params, value=value, **extra)
        if _on_host(ok):
            if not ok:
                updates, new_inner = optree.tree_map(torch.zeros_like, updates, namespace="funcvae"), state.inner
        else:
            updates = optree.tree_map(lambda u: torch.where(ok, u, 0.0), updates, namespace="funcvae")
            new_inner = optree.tree_map(lambda new, old: torch.where(ok, new, old), new_inner, state.inner,
                                        namespace="funcvae")
        return updates, ApplyIfFiniteState(new_inner, ok, live, state.skipped + (~ok).to(torch.int64))

    return update


def _on_host(t: Tensor) -> bool:
    """``t`` is a plain tensor in the CPU's memory and the step runs op by op: reading a value costs no device
    sync, so the guard picks a tree by its flag, the same values as ``where`` without its passes over every
    leaf (``where``'s CPU kernel is not vectorised: 1.2 ms a step for the default model; docs/speed.md, "The
    eager step"), and tests finiteness by a plain sum first. Compiled, under ``vmap`` (a stack of models) or
    on a GPU, the guard selects on the device."""
    return t.device.type == "cpu" and type(t) is Tensor and op_by_op()


def _all_finite(tensors: list[Tensor]) -> Tensor:
    """0-d bool: no element of ``tensors`` is NaN or infinite. ``x * 0`` is 0 for a finite ``x`` and NaN
    otherwise, so the sum is 0 exactly when all are finite, in two vectorised passes (``isfinite(x).all()``'s
    bool passes are not vectorised on a CPU: 1 ms against 0.1 ms for the default model's gradients). Op by op
    on a CPU, a plain sum comes first, one pass: a NaN or an infinity makes it NaN or infinite, so a finite
    sum settles it; only one that is not (a NaN, an infinity or a sum that overflows) needs the exact test."""
    if _on_host(tensors[0]) and bool(torch.isfinite(torch.stack([t.sum() for t in tensors]).sum())):
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(torch.stack([(t * 0).sum() for t in tensors]).sum())


def applied(state) -> Tensor | None:
    """The ``ok`` flag (0-d bool) of the first ``apply_if_finite`` found in an optimiser state, or None."""
    if isinstance(state, ApplyIfFiniteState):
        return state.ok
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        for s in state:
            found = applied(s)
            if found is not None:
                return found
    return None


def apply_updates(params, updates):
    """``params + updates`` leaf by leaf, as a new tree."""
    return trees.like(params, [a + u for a, u in zip(trees.leaves(params), trees.leaves(updates))])


def _describe(lr) -> str:
    return getattr(lr, "name", None) or repr(lr) if callable(lr) else repr(plain(lr))
