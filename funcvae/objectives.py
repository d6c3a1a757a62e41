"""Training objectives as pure functions of (params, ONE example, noise), batched with ``vmap``.

An ``Objective`` has

- ``terms(params, x, eps, numbers, c) -> dict``: for ONE example x (features,), noise eps (samples,
  noise_size) and its context c (K,) (None for an unconditional model), the named terms in nats: ``loss``
  (what is minimised), ``recon`` = -E_q[log p(x | z)] and ``kl`` (an estimate of KL(q(z | x) || p(z))),
  ``kl_dims`` (latent,) where the KL is analytic per dimension, and ``kl_groups`` (groups,) where the
  model's densities come per latent group;
- ``reduce(terms, weights, total, numbers) -> 0-d``: the batch's loss from its terms (B,), padding rows
  weighted 0, divided by ``total`` real rows (the mean, unless a wrapper such as ``free_bits`` says otherwise);
- ``init() -> state``: its numbers (the KL weight beta, the free-bits floor) as 0-d float64 tensors, so that
  the models of a stack may differ in them (the state is stacked and ``vmap``ped, as optimiser states are);
- ``schedule(state, count, dtype) -> numbers``: those numbers in force at step ``count`` (a KL warm-up).

``samples`` is the number of noise rows each example takes. An objective whose loss needs the whole batch (an
estimate over it of the aggregate posterior q(z)) also has

- ``batch(terms, weights, total, numbers) -> terms``: run on the batch's terms (B, ...) after the ``vmap`` and
  before ``reduce``; it returns the terms ``reduce`` and the step read, ``loss`` among them, (B,) each;
- ``reports``: the names of the further (B,) terms it returns (``mi``, ``tc``, ``dwkl``; ``mmd``), which the
  step sums into its stats and ``fit`` records per epoch.

Without them (``batch`` None, ``reports`` empty) nothing changes for an objective: its step and stats are
those of before. With them, the loss of one example depends on the others, so an objective that is not
``separable`` is refused by per-example optimisers (DP-SGD) and by data-parallel fit, whose shards each see
part of the batch. Built here: the beta-ELBO (``elbo``), the importance-weighted bound (``iwae``), the
``free_bits`` wrapper, and two batch objectives: ``beta_tcvae`` and ``mmd`` (InfoVAE).
"""

from __future__ import annotations

import functools
import math
from functools import partial
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from funcvae import aggregate, priors
from funcvae import distributions as D
from funcvae.checks import check_bool, check_int, check_nonnegative

KL_MODES = ("auto", "analytic", "mc")
#: What ``beta_tcvae`` reports besides recon, kl and loss: the KL's decomposition, nats per example.
TC_TERMS = ("mi", "tc", "dwkl")


class Objective(NamedTuple):
    name: str
    samples: int
    init: Callable[[], dict]
    schedule: Callable
    terms: Callable
    reduce: Callable
    kl_dims: bool = False  # whether terms carry an analytic per-dimension KL (what free bits needs)
    closed_form: bool = False  # whether it needs the prior's closed-form KL per dimension (kl="analytic", free bits)
    batch: Callable | None = None  # batch(terms, weights, total, numbers) -> terms, between the vmap and reduce
    reports: tuple[str, ...] = ()  # the further (B,) terms ``batch`` returns, summed into the step's stats

    @property
    def separable(self) -> bool:
        """Whether the batch's loss is the mean of per-example losses, each of its own example alone: what
        per-example gradients and a data-parallel shard need."""
        return self.reduce is mean_loss and self.batch is None


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
    per-dimension KL (a Gaussian ``encode`` and a factorised prior), or a model whose densities come per latent
    group: the floor is then on each group's KL, as the Ladder VAE and IAF papers do."""
    if isinstance(objective, Objective) and objective.reduce is _floored_loss:
        raise ValueError(f"{objective.name} has free bits already; give one floor: free_bits(objective, floor) of "
                         "the objective without them")
    if not isinstance(objective, Objective) or objective.terms not in {_elbo_terms(m) for m in KL_MODES}:
        raise ValueError("free bits floor the KL of each latent dimension or group: they need an ELBO "
                         "(objectives.elbo), not " + (objective.name if isinstance(objective, Objective) and
                                                      objective.batch is not None else "the IWAE bound"))
    floor = check_nonnegative("floor", floor)
    return objective._replace(name=f"free_bits({objective.name}, {floor})",
                              init=partial(_with_floor, objective.init, floor), reduce=_floored_loss)


def beta_tcvae(beta: float, dataset_size: int, *, stratified: bool = False) -> Objective:
    """beta-TCVAE (Chen et al. 2018): ``loss = recon + mi + beta * tc + dwkl`` per example, nats, the KL split
    at the example's draw z ~ q(z | x) with q(z) and prod_d q(z_d) estimated over the batch:

    - ``mi`` = log q(z | x) - log q(z), the index-code mutual information;
    - ``tc`` = log q(z) - sum_d log q(z_d), the total correlation, the one term beta weighs (alpha = gamma = 1);
    - ``dwkl`` = sum_d log q(z_d) - log p(z), the dimension-wise KL.

    They sum to the Monte Carlo KL log q(z | x) - log p(z) at the draw, so at beta = 1 the loss is the negative
    ELBO with a one-sample Monte Carlo KL. ``kl`` is the analytic KL, reported and not optimised. The
    estimates (``funcvae.aggregate``) take the batch's M real rows as a sample of the N training examples:
    minibatch-weighted sampling, log q(z_i) ~ logsumexp_j log q(z_i | x_j) - log(N·M), or with
    ``stratified`` minibatch-stratified sampling (unbiased for q(z_i)); padding rows are not members. MWS's
    weights sum to 1/N, as the paper writes it: its log q(z) lies up to log N low (log N where the posteriors
    overlap, log M where they are apart), so its ``mi`` and ``tc`` read high and its ``dwkl`` low by such
    offsets, which the gradients do not see; MSS's weights sum to 1, the estimates to read the terms by.

    Args:
      beta: the weight of the total correlation (the paper's beta); kept in the state, with N, so a stack may
        hold one per model.
      dataset_size: N, the size of the training set the batches are drawn from.
      stratified: minibatch-stratified sampling (MSS) instead of minibatch-weighted sampling (MWS).

    Needs a Gaussian ``encode`` and a factorised prior (``check``). One sample per example. Its loss couples the
    batch's examples: no per-example optimiser, no data parallelism.
    """
    beta, n = check_nonnegative("beta", beta), check_int("dataset_size", dataset_size)
    stratified = check_bool("stratified", stratified)
    name = f"beta_tcvae(beta={beta}, dataset_size={n}" + (", stratified=True)" if stratified else ")")
    return Objective(name, 1, partial(_tc_init, beta, n), _no_schedule, _tc_terms, mean_loss,
                     batch=_tc_batch(stratified), reports=TC_TERMS)


def mmd(weight: float = 1000.0, *, kernel: str = "gaussian") -> Objective:
    """The MMD-VAE of InfoVAE (Zhao et al. 2017, alpha = 1, lambda = ``weight``): ``loss = recon + weight *
    mmd``, nats per example, ``mmd`` the batch's unbiased MMD² between its M draws of q(z) and M draws of the
    N(0, I) prior (the same for each of its rows; 0 for a batch of one real row).

    ``kernel`` "gaussian" is InfoVAE's released code's: k(x, y) = exp(-|x - y|² / D²), a Gaussian RBF with
    2σ² = D², D the latent size; "imq" is WAE's inverse multiquadratic C / (C + |x - y|²), C = 2D
    (``funcvae.aggregate.kernel``). The prior's draws are the second noise row of each example (``samples``
    is 2), so the randomness is the batch's, drawn outside the step, and a resumed run draws the same.
    ``recon`` and ``kl`` (analytic where it can be, else Monte Carlo) are reported; the KL is not optimised.
    The default weight, 1000, is InfoVAE's lambda: an MMD² is of order 1e-3 beside a reconstruction of about
    100 nats. Needs the standard normal prior. Its loss couples the batch's examples: no per-example
    optimiser, no data parallelism.
    """
    weight = check_nonnegative("weight", weight)
    if kernel not in aggregate.KERNELS:
        raise ValueError(f"kernel must be one of {aggregate.KERNELS}, got {kernel!r}")
    return Objective(f"mmd(weight={weight}, kernel={kernel!r})", 2, partial(_mmd_init, weight), _no_schedule,
                     _mmd_terms, mean_loss, batch=_mmd_batch(kernel), reports=("mmd",))


def check(objective: Objective, model) -> None:
    """Raise ValueError, before any work, when ``objective`` cannot train ``model`` (an analytic KL or free
    bits with a prior that has no closed-form, per-dimension KL; beta-TCVAE without a Gaussian ``encode`` and a
    factorised prior; the MMD without the standard normal prior)."""
    if not isinstance(objective, Objective):
        raise TypeError("objective must be a funcvae.objectives.Objective (elbo, iwae, free_bits, beta_tcvae, mmd), "
                        f"got {type(objective).__name__}")
    floors = objective.reduce is _floored_loss
    closed = model.gaussian and model.prior.factorised
    if (objective.closed_form or floors and model.gaussian and objective.kl_dims) and not closed:
        raise ValueError(f"{objective.name} needs a closed-form KL per latent dimension, which "
                         + (f"the {model.prior} does not have (a mixture)" if model.gaussian else
                            "a posterior given as a draw does not have")
                         + "; use objectives.elbo(kl='mc') or 'auto'" + (", without free bits" if model.gaussian else
                                                                          ""))
    if floors and model.gaussian and not objective.kl_dims:
        raise ValueError(f"{objective.name} floors the KL of each latent dimension, which needs the analytic KL; "
                         "its KL is a Monte Carlo estimate (kl='mc'): use kl='auto'")
    if floors and not model.gaussian and kl_groups(model) is None:
        raise ValueError(f"{objective.name} floors the KL of each latent group, but {model} gives no KL per group: "
                         "its posterior and prior must both return dicts of log-densities keyed like its latent groups")
    if objective.terms is _tc_terms and not closed:
        raise ValueError(f"{objective.name} estimates q(z) from the batch's diagonal Gaussian posteriors and splits "
                         "the KL over latent dimensions: it needs a model given by encode= and a factorised prior, "
                         + (f"not the {model.prior}" if model.gaussian else "not a posterior given as a draw"))
    if objective.terms is _mmd_terms and not isinstance(model.prior, priors.StandardNormal):
        raise ValueError(f"{objective.name} compares q(z) with draws of the prior made from standard normal noise: "
                         f"it needs the standard normal prior ('normal'), not the {model.prior}")


def kl_groups(model) -> tuple[str, ...] | None:
    """The latent groups whose KL ``model``'s terms report (``kl_groups``): its groups when its posterior and
    prior both give log-densities per group (as the model check found), else None."""
    from funcvae.contract import structure  # the check runs the model once; objectives are below it

    return model.groups if structure(model).per_group else None


def batch_terms(params, x: Tensor, eps: Tensor, numbers: dict, objective: Objective,
                c: Tensor | None = None) -> dict:
    """``objective.terms`` over a batch: x (B, features), eps (B, samples, noise_size), c (B, K) or None ->
    terms with a leading B."""
    # params and numbers are closed over, not passed: vmap flattens its arguments (in dynamo's trace, Python
    # work per node of the params' tree) and they are the same for every example.
    return vmap(lambda xi, ei, ci: objective.terms(params, xi, ei, numbers, ci),
                in_dims=(0, 0, None if c is None else 0))(x, eps, c)


def loss_and_grad(params, x: Tensor, eps: Tensor, objective: Objective | None = None, *, count: int = 0,
                  context: Tensor | None = None):
    """Gradients of ``objective``'s batch-mean loss (default: the ELBO) at step ``count``, for a loop of your own.

    Args:
      params: ``Params`` (from ``model.init``).
      x: (B, features) or (B, C, H, W) examples, already in the likelihood's support (no checks: this runs
        every step); eps: (B, objective.samples, noise_size) standard normal noise; context: (B, K) floats
        for a conditional model.

    Returns:
      ``(grads, (loss, terms))``: grads a ``Params`` like ``params``; loss 0-d; terms (B,) each, nats.
    """
    objective = elbo() if objective is None else objective
    x = x.reshape(x.shape[0], -1)
    numbers = objective.schedule(objective.init(), torch.tensor(count), x.dtype)
    weights = x.new_ones(x.shape[0])
    return grad_and_value(batch_loss, has_aux=True)(params, x, eps, numbers, objective, context, weights,
                                                    weights.sum())


def batch_loss(params, x: Tensor, eps: Tensor, numbers: dict, objective: Objective, c: Tensor | None,
               weights: Tensor, total: Tensor) -> tuple[Tensor, dict]:
    """The batch's loss, 0-d, and its terms, (B,) each: ``batch_terms``, then the objective's batch stage (where
    it has one), then its ``reduce`` over the rows ``weights`` marks real, divided by ``total``."""
    terms = batch_terms(params, x, eps, numbers, objective, c)
    if objective.batch is not None:
        terms = objective.batch(terms, weights, total, numbers)
    return objective.reduce(terms, weights, total, numbers), terms


def _init(beta: float) -> dict:
    return {"beta": torch.tensor(float(beta), dtype=torch.float64)}


def _tc_init(beta: float, dataset_size: int) -> dict:
    return {**_init(beta), "dataset_size": torch.tensor(float(dataset_size), dtype=torch.float64)}


def _mmd_init(weight: float) -> dict:
    return {"mmd_weight": torch.tensor(float(weight), dtype=torch.float64)}


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


class Draws(NamedTuple):
    """K draws of q(z | x) for ONE example: ``gauss`` the posterior's (mean, logvar) for a model given by
    ``encode`` (else None); ``z`` (K, ...) in the model's structure; ``log_q`` (K,) or a dict of (K,) per
    group (None for ``encode``: ``log_q`` computes it from ``gauss`` where a term needs it); ``log_px_z``
    (K,), all nats."""

    gauss: tuple | None
    z: object
    log_q: object
    log_px_z: Tensor


def draws(params, x: Tensor, eps: Tensor, c: Tensor | None = None) -> Draws:
    """Encode ONE example x (features,), draw its samples from eps (K, noise_size), decode them."""
    model, tree = params.model, params.tree
    if model.gaussian:  # one encoding for the K draws, and its moments kept for an analytic KL
        mean, logvar = model.encode_one(tree, x, c)
        z = D.reparameterize(mean, logvar, eps)
        gauss, log_q = (mean, logvar), None
    else:
        gauss = None
        z, log_q = vmap(lambda e: model.draw(tree, x, e, c))(eps)
    out = vmap(lambda zk: model.decode_one(tree, zk, c))(z)
    return Draws(gauss, z, log_q, model.likelihood.log_prob(out, x))


def log_ratios(params, d: Draws, c: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """log q(z | x) - log p(z) at each draw, (K,), and per latent group, (K, groups), where both densities
    come per group (else None)."""
    model = params.model
    log_p = vmap(lambda zk: model.log_prior(params.tree, zk, c))(d.z)
    if isinstance(d.log_q, dict) and isinstance(log_p, dict):
        groups = torch.stack([d.log_q[g] - log_p[g] for g in model.groups], dim=-1)
        return groups.sum(-1), groups
    return _total(log_q(d)) - _total(log_p), None


def log_q(d: Draws):
    """log q(z | x) at each draw, nats: the posterior's own, or a Gaussian ``encode``'s density."""
    return d.log_q if d.gauss is None else D.gaussian_log_prob(*d.gauss, d.z).sum(-1)


def _total(log_density) -> Tensor:
    return sum(log_density.values()) if isinstance(log_density, dict) else log_density


def _kl_terms(params, d: Draws, c: Tensor | None, kl_mode: str) -> dict:
    """``kl`` of ONE example's draws, with ``kl_dims`` where it is analytic, or ``kl_groups`` where the model's
    densities come per latent group."""
    model = params.model
    kl_dims = None
    if kl_mode != "mc" and d.gauss is not None:
        kl_dims = model.prior.kl_dims(params.tree, model, *d.gauss)
    if kl_dims is None and kl_mode == "analytic":
        raise ValueError(f"the {model.prior} has no closed-form KL; use kl='mc' or 'auto'")
    if kl_dims is not None:
        return {"kl": kl_dims.sum(), "kl_dims": kl_dims}
    ratio, groups = log_ratios(params, d, c)
    return {"kl": ratio.mean()} if groups is None else {"kl": ratio.mean(), "kl_groups": groups.mean(0)}


@functools.lru_cache(maxsize=None)
def _elbo_terms(kl_mode: str) -> Callable:
    def terms(params, x: Tensor, eps: Tensor, numbers: dict, c: Tensor | None = None) -> dict:
        d = draws(params, x, eps, c)
        recon = -d.log_px_z.mean()
        out = {"recon": recon, **_kl_terms(params, d, c, kl_mode)}
        out["loss"] = recon + numbers["beta"] * out["kl"]
        return out

    return terms


def _iwae_terms(params, x: Tensor, eps: Tensor, numbers: dict, c: Tensor | None = None) -> dict:
    d = draws(params, x, eps, c)
    log_q_over_p, groups = log_ratios(params, d, c)
    log_w = d.log_px_z - log_q_over_p
    bound = torch.logsumexp(log_w, dim=-1) - math.log(eps.shape[0])
    out = {"recon": -d.log_px_z.mean(), "kl": log_q_over_p.mean(), "loss": -bound}
    if groups is not None:
        out["kl_groups"] = groups.mean(0)
    return out


def _tc_terms(params, x: Tensor, eps: Tensor, numbers: dict, c: Tensor | None = None) -> dict:
    """What ``_tc_batch`` needs of ONE example: recon, the analytic kl, its draw z, the posterior's mean and
    logvar, and log q(z | x), log p(z) at the draw."""
    d = draws(params, x, eps, c)
    log_p = vmap(lambda zk: params.model.log_prior(params.tree, zk, c))(d.z)
    return {"recon": -d.log_px_z.mean(), "kl": _kl_terms(params, d, c, "analytic")["kl"], "z": d.z[0],
            "mean": d.gauss[0], "logvar": d.gauss[1], "log_q": log_q(d)[0], "log_p": log_p[0]}


@functools.lru_cache(maxsize=None)
def _tc_batch(stratified: bool) -> Callable:
    def batch(terms: dict, weights: Tensor, total: Tensor, numbers: dict) -> dict:
        log_w = aggregate.log_weights(weights, numbers["dataset_size"], stratified)
        log_qz, log_dims = aggregate.log_aggregate(terms["z"], terms["mean"], terms["logvar"], log_w)
        mi, tc, dwkl = terms["log_q"] - log_qz, log_qz - log_dims, log_dims - terms["log_p"]
        return {"recon": terms["recon"], "kl": terms["kl"], "loss": terms["recon"] + mi + numbers["beta"] * tc + dwkl,
                "mi": mi, "tc": tc, "dwkl": dwkl}

    return batch


def _mmd_terms(params, x: Tensor, eps: Tensor, numbers: dict, c: Tensor | None = None) -> dict:
    """ONE example's recon and kl from its first noise row's draw, the draw flat (``z``), and the prior's draw
    made from its second noise row (``z_prior``)."""
    d = draws(params, x, eps[:1], c)
    out = {"recon": -d.log_px_z.mean(), **_kl_terms(params, d, c, "auto")}
    out.pop("kl_dims", None)
    return {**out, "z": params.model.join(d.z)[0], "z_prior": eps[1]}


@functools.lru_cache(maxsize=None)
def _mmd_batch(kernel: str) -> Callable:
    def batch(terms: dict, weights: Tensor, total: Tensor, numbers: dict) -> dict:
        mmd2 = aggregate.mmd2(terms["z"], terms["z_prior"], weights, kernel).expand(weights.shape)
        kept = {k: v for k, v in terms.items() if k not in ("z", "z_prior")}
        return {**kept, "loss": terms["recon"] + numbers["mmd_weight"] * mmd2, "mmd": mmd2}

    return batch


def mean_loss(terms: dict, weights: Tensor, total: Tensor, numbers: dict) -> Tensor:
    return (terms["loss"] * weights).sum() / total


def _floored_loss(terms: dict, weights: Tensor, total: Tensor, numbers: dict) -> Tensor:
    parts = terms["kl_groups"] if "kl_groups" in terms else terms["kl_dims"]  # a model has one or the other
    kl_parts = (parts * weights.unsqueeze(-1)).sum(0) / total
    floored = torch.clamp(kl_parts, min=numbers["free_bits"]).sum()
    return (terms["recon"] * weights).sum() / total + numbers["beta"] * floored
