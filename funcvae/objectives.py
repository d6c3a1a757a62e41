"""Training objectives as pure functions of (params, ONE example, noise), batched with ``vmap``.

An ``Objective`` has

- ``terms(params, x, eps, numbers) -> dict``: for ONE example x (features,) and noise eps (samples, latent),
  the named terms in nats: ``loss`` (what is minimised), ``recon`` = -E_q[log p(x | z)] and ``kl`` (an
  estimate of KL(q(z | x) || p(z))), and ``kl_dims`` (latent,) where the KL is analytic per dimension;
- ``reduce(terms, weights, total, numbers) -> 0-d``: the batch's loss from its terms (B,), padding rows
  weighted 0, divided by ``total`` real rows (the mean, unless a wrapper such as ``free_bits`` says otherwise);
- ``init() -> state``: its numbers (the KL weight beta, the free-bits floor) as 0-d float64 tensors, so that
  the models of a stack may differ in them (the state is stacked and ``vmap``ped, as optimiser states are);
- ``schedule(state, count, dtype) -> numbers``: those numbers in force at step ``count`` (a KL warm-up).

``samples`` is the number of noise rows each example takes. Built here: the beta-ELBO (``elbo``), the
importance-weighted bound (``iwae``), and the ``free_bits`` wrapper.
"""

from __future__ import annotations

import functools
import math
from functools import partial
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from funcvae import distributions as D
from funcvae.checks import check_int, check_nonnegative

KL_MODES = ("auto", "analytic", "mc")


class Objective(NamedTuple):
    name: str
    samples: int
    init: Callable[[], dict]
    schedule: Callable
    terms: Callable
    reduce: Callable
    kl_dims: bool = False  # whether terms carry an analytic per-dimension KL (what free bits needs)
    closed_form: bool = False  # whether it needs the prior's closed-form KL per dimension (kl="analytic", free bits)


def elbo(beta: float = 1.0, *, kl: str = "auto", warmup: Callable | None = None, samples: int = 1) -> Objective:
    """The beta-ELBO: ``loss = recon + beta_t * kl`` (= -ELBO at beta = 1), nats per example.

    Args:
      beta: the KL weight (Higgins et al. 2017); kept in the state (a stack may hold one per model).
      kl: "analytic" (closed form, per dimension; needs a prior that has one), "mc" (log q(z|x) - log p(z)
        at the reparameterised samples: unbiased for any prior), or "auto": analytic where the prior has it.
      warmup: a schedule (``funcvae.schedules.warmup(steps)``, or any function of the step count tensor)
        that multiplies beta: KL warm-up.
      samples: reparameterised samples per example; ``recon`` (and a Monte Carlo ``kl``) average them.
    """
    beta, samples = check_nonnegative("beta", beta), check_int("samples", samples)
    if kl not in KL_MODES:
        raise ValueError(f"kl must be one of {KL_MODES}, got {kl!r}")
    if warmup is not None and not callable(warmup):
        raise TypeError(f"warmup must be a schedule (funcvae.schedules.warmup(steps)) or a function of the step "
                        f"count, got {warmup!r}")
    name = f"elbo(beta={beta}, kl={kl!r}" + (f", warmup={_schedule_name(warmup)}" if warmup is not None else "") + (
        f", samples={samples})" if samples != 1 else ")")
    return Objective(name, samples, partial(_init, beta=beta), _beta_schedule(warmup), _elbo_terms(kl),
                     mean_loss, kl_dims=kl != "mc", closed_form=kl == "analytic")


def iwae(k: int) -> Objective:
    """The importance-weighted bound as a training objective (Burda, Grosse & Salakhutdinov 2016):
    ``loss = -IWAE_k = -log (1/k) sum_j p(x, z_j) / q(z_j | x)`` over k samples of one example; ``recon``
    and ``kl`` are the k-sample Monte Carlo ELBO terms (so ``recon + kl`` >= ``loss``)."""
    k = check_int("k", k)
    return Objective(f"iwae(k={k})", k, dict, _no_schedule, _iwae_terms, mean_loss)


def free_bits(objective: Objective, floor: float) -> Objective:
    """``objective`` with a floor on each latent dimension's batch-mean KL (Kingma et al. 2016): it optimises
    ``recon + beta * sum_d max(floor, KL_d)``, so a dimension below the floor feels no pull towards the prior
    and the encoder can start using it. The reported terms stay the true ones. Needs an ELBO with an analytic
    per-dimension KL (a factorised prior)."""
    if isinstance(objective, Objective) and objective.reduce is _floored_loss:
        raise ValueError(f"{objective.name} has free bits already; give one floor: free_bits(objective, floor) of "
                         "the objective without them")
    if not isinstance(objective, Objective) or not objective.kl_dims:
        raise ValueError("free bits floor the KL of each latent dimension: they need an ELBO with an analytic "
                         "per-dimension KL (objectives.elbo with kl='analytic' or 'auto' and a factorised prior)")
    floor = check_nonnegative("floor", floor)
    return objective._replace(name=f"free_bits({objective.name}, {floor})",
                              init=partial(_with_floor, objective.init, floor), reduce=_floored_loss,
                              closed_form=True)


def check(objective: Objective, model) -> None:
    """Raise ValueError, before any work, when ``objective`` cannot train ``model`` (an analytic KL or free
    bits with a prior that has no closed-form, per-dimension KL)."""
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be a funcvae.objectives.Objective (elbo, iwae, free_bits), got "
                        f"{type(objective).__name__}")
    if objective.closed_form and not model.prior.factorised:
        raise ValueError(f"{objective.name} needs a closed-form KL per latent dimension, which the {model.prior} "
                         "does not have (a mixture); use objectives.elbo(kl='mc') or 'auto', without free bits")


def batch_terms(params, x: Tensor, eps: Tensor, numbers: dict, objective: Objective) -> dict:
    """``objective.terms`` over a batch: x (B, features), eps (B, samples, latent) -> terms with a leading B."""
    return vmap(objective.terms, in_dims=(None, 0, 0, None))(params, x, eps, numbers)


def loss_and_grad(params, x: Tensor, eps: Tensor, objective: Objective | None = None, *, count: int = 0):
    """Gradients of ``objective``'s batch-mean loss (default: the ELBO) at step ``count``, for a loop of your own.

    Args:
      params: ``Params`` (from ``model.init``).
      x: (B, features) or (B, C, H, W) examples, already in the likelihood's support (no checks: this runs
        every step); eps: (B, objective.samples, latent) standard normal noise.

    Returns:
      ``(grads, (loss, terms))``: grads a ``Params`` like ``params``; loss 0-d; terms (B,) each, nats.
    """
    objective = elbo() if objective is None else objective
    x = x.reshape(x.shape[0], -1)
    numbers = objective.schedule(objective.init(), torch.tensor(count), x.dtype)
    weights = x.new_ones(x.shape[0])

    def loss(p):
        terms = batch_terms(p, x, eps, numbers, objective)
        return objective.reduce(terms, weights, weights.sum(), numbers), terms

    return grad_and_value(loss, has_aux=True)(params)


def _init(beta: float) -> dict:
    return {"beta": torch.tensor(float(beta), dtype=torch.float64)}


def _schedule_name(schedule: Callable) -> str:
    """How a schedule is written in a run's settings: its own name, or a plain function's qualified name."""
    return getattr(schedule, "name", None) or getattr(schedule, "__qualname__", type(schedule).__name__)


def _with_floor(init: Callable, floor: float) -> dict:
    return {**init(), "free_bits": torch.tensor(float(floor), dtype=torch.float64)}


@functools.lru_cache(maxsize=None)
def _beta_schedule(warmup: Callable | None) -> Callable:
    def schedule(state: dict, count: Tensor, dtype: torch.dtype) -> dict:
        # Every number in the compute dtype (free bits' floor too): a float64 0-d tensor left in would, once
        # stacked and vmapped, promote the loss of a stack to float64.
        numbers = _no_schedule(state, count, dtype)
        if warmup is not None:
            numbers["beta"] = (state["beta"] * warmup(count)).to(dtype)
        return numbers

    return schedule


def _no_schedule(state: dict, count: Tensor, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) for k, v in state.items()}


def _posterior_samples(params, x: Tensor, eps: Tensor):
    """Encode ONE example, draw its samples, decode them: (mean, logvar, z (K, latent), log p(x | z) (K,))."""
    model, tree = params.model, params.tree
    mean, logvar = model.encode_one(tree, x)
    z = D.reparameterize(mean, logvar, eps)
    out = vmap(partial(model.decode_one, tree))(z)
    return mean, logvar, z, model.likelihood.log_prob(out, x)


def _log_q_minus_log_p(params, mean: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
    """log q(z | x) - log p(z) at each sample z (K, latent) -> (K,)."""
    model, tree = params.model, params.tree
    log_p = vmap(partial(model.prior.log_prob, tree, model))(z)
    return D.gaussian_log_prob(mean, logvar, z).sum(-1) - log_p


@functools.lru_cache(maxsize=None)
def _elbo_terms(kl_mode: str) -> Callable:
    def terms(params, x: Tensor, eps: Tensor, numbers: dict) -> dict:
        mean, logvar, z, log_px_z = _posterior_samples(params, x, eps)
        recon = -log_px_z.mean()
        model = params.model
        kl_dims = None if kl_mode == "mc" else model.prior.kl_dims(params.tree, model, mean, logvar)
        if kl_dims is None and kl_mode == "analytic":
            raise ValueError(f"the {model.prior} has no closed-form KL; use kl='mc' or 'auto'")
        out = {"recon": recon}
        if kl_dims is None:
            out["kl"] = _log_q_minus_log_p(params, mean, logvar, z).mean()
        else:
            out["kl"], out["kl_dims"] = kl_dims.sum(), kl_dims
        out["loss"] = recon + numbers["beta"] * out["kl"]
        return out

    return terms


def _iwae_terms(params, x: Tensor, eps: Tensor, numbers: dict) -> dict:
    mean, logvar, z, log_px_z = _posterior_samples(params, x, eps)
    log_q_over_p = _log_q_minus_log_p(params, mean, logvar, z)
    log_w = log_px_z - log_q_over_p
    bound = torch.logsumexp(log_w, dim=-1) - math.log(eps.shape[0])
    return {"recon": -log_px_z.mean(), "kl": log_q_over_p.mean(), "loss": -bound}


def mean_loss(terms: dict, weights: Tensor, total: Tensor, numbers: dict) -> Tensor:
    return (terms["loss"] * weights).sum() / total


def _floored_loss(terms: dict, weights: Tensor, total: Tensor, numbers: dict) -> Tensor:
    kl_dims = (terms["kl_dims"] * weights.unsqueeze(-1)).sum(0) / total
    floored = torch.clamp(kl_dims, min=numbers["free_bits"]).sum()
    return (terms["recon"] * weights).sum() / total + numbers["beta"] * floored
