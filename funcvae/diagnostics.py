"""Is the latent code used, and did training go well? Numbers about a trained VAE and verdicts on a run.

Numbers: ``kl_per_dim`` (which latent dimensions carry information), ``active_units`` (Burda et al. 2016:
a dimension is active when its posterior mean varies over the data), ``mutual_information`` (I(x; z) under
the encoder, He et al. 2019). Verdicts: ``diagnose(history, ...)`` returns findings (posterior collapse,
overfitting, an unstable run), each with its evidence and advice; ``format_report`` prints them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import vmap

from funcvae import distributions as D
from funcvae.codec import MOMENT_SAMPLES, encode
from funcvae.model import Params
from funcvae.rng import derive_seed, generator
from funcvae.checks import check_int

# A code carrying less than 0.1 nats (0.14 bits) per example tells the decoder next to nothing about x:
# the ELBO of a collapsed model sits within a rounding error of a model with no latent at all.
COLLAPSE_KL = 0.1
# Burda et al. (2016): a unit is active when the variance over x of its posterior mean exceeds 0.01; the
# prior's variance is 1, so such a unit moves by at most a tenth of a prior std from input to input.
ACTIVE_VARIANCE = 0.01
# Fewer than 10% of the latent dims active (with d >= 2) means the model uses almost none of its code;
# a few unused dims out of many are normal (a VAE prunes the dims it does not need), so the bar is low.
COLLAPSE_ACTIVE_FRACTION = 0.1
# Overfitting needs the held-out loss above its minimum for 2 epochs (one epoch up can be the noise of
# the last steps: the usual early-stopping patience) and by more than 0.1% of it (a smaller rise is not
# worth stopping for, and with fit's fixed validation noise epoch-to-epoch noise is well below that).
OVERFIT_PATIENCE = 2
OVERFIT_MIN_RISE = 1e-3
# A spike: an epoch's training loss above the previous one by more than the typical epoch-to-epoch change
# (the median) plus 3 robust standard deviations (1.4826 * MAD, the std of Gaussian changes, unmoved by
# the spikes themselves), and by more than 1% (smaller bumps are invisible on a curve and need no fix).
SPIKE_SDS = 3.0
SPIKE_MIN_RISE = 0.01
SPIKE_MIN_EPOCHS = 4  # 3 epoch-to-epoch changes at least before a median and a MAD mean anything


class ActiveUnits(NamedTuple):
    """``count``: latent dims whose posterior-mean variance exceeds the threshold; ``variance``: (d,) the
    variance over the data of each dim's posterior mean E_q[z_i]."""

    count: int
    variance: Tensor


def kl_per_dim(params: Params, x, *, scale: float | None = None, context=None) -> Tensor:
    """KL(q(z_i | x) || p(z_i)) of each latent dimension, analytic, averaged over the examples. Defined for a
    prior that factorises over the dimensions (N(0, I)); a mixture prior such as the VampPrior does not, and
    raises ValueError (its total KL is ``funcvae.elbo(...)["kl"]``; active units and MI work for any prior).

    Args:
      params: the model.
      x: examples, as for ``funcvae.encode``.
      scale: divide integer pixel data by this.

    Returns:
      (d,) nats per example; sums to the mean of the ELBO's ``kl`` term. A dim with ~0 carries nothing.
    """
    if not params.model.gaussian:
        raise ValueError(f"{params.model}'s posterior is given as a draw, so it has no analytic KL per dimension; "
                         "its total KL is funcvae.elbo(...)['kl'] (and per latent group, elbo(...)['kl_groups'], where "
                         "the model gives its densities per group)")
    mean, logvar = encode(params, x, scale=scale, context=context)
    kl = params.model.prior.kl_dims(params.tree, params.model, mean, logvar)
    if kl is None:
        raise ValueError(f"the {params.model.prior} does not factorise over latent dimensions, so a KL per dimension "
                         "is not defined for it; its total KL is funcvae.elbo(...)['kl'], and active units and the "
                         "mutual information work for any prior")
    return kl.mean(0)


def active_units(params: Params, x, threshold: float = ACTIVE_VARIANCE, *, scale: float | None = None,
                 context=None, seed: int = 0, samples: int = MOMENT_SAMPLES) -> ActiveUnits:
    """Active latent units (Burda et al. 2016): dim i is active when Var_x(E_q[z_i | x]) > ``threshold``.

    For a posterior given as a draw, E_q[z | x] is a Monte Carlo mean of ``samples`` draws named by ``seed``
    (``funcvae.encode``); its noise adds E_x Var_q(z_i | x) / samples to the variance over x, which is
    subtracted (an unbiased correction), so the count does not depend on the number of draws.

    Args:
      params: the model.
      x: examples (use held-out data), as for ``funcvae.encode``.
      threshold: variance of the posterior mean above which a dim counts as active.
      scale: divide integer pixel data by this.
      context, seed, samples: as for ``funcvae.encode``.

    Returns:
      ``ActiveUnits(count, variance)``, variance (noise_size,) over the N examples (population variance);
      latent groups side by side in ``model.groups``' order.
    """
    mean, logvar = encode(params, x, scale=scale, context=context, seed=seed, samples=samples)
    variance = mean.var(0, correction=0)
    if not params.model.gaussian:
        variance = variance - torch.exp(logvar).mean(0) / samples
    return ActiveUnits(int((variance > threshold).sum()), variance)


def active_by_group(params: Params, active: ActiveUnits, threshold: float = ACTIVE_VARIANCE) -> dict[str, int] | None:
    """``active``'s count within each latent group (None for a model without groups)."""
    model = params.model
    if model.groups is None:
        return None
    parts = model.split(active.variance > threshold)
    return {g: int(parts[g].sum()) for g in model.groups}


def mutual_information(params: Params, x, *, seed: int, chunk_size: int = 256, scale: float | None = None,
                       context=None) -> Tensor:
    """I(x; z) under the encoder, estimated as He et al. (2019): MI = E_x E_q(z|x)[log q(z|x)] - E_z[log q(z)].

    One z_i ~ q(z | x_i) per example; the aggregate posterior q(z) = (1/N) sum_j q(z | x_j) is estimated on
    the same N examples by a logsumexp. Both terms use the same z_i, so the estimate is exactly 0 for an
    encoder that ignores x and never exceeds log N (the most N examples can tell apart). It is the InfoNCE
    bound with the encoder as critic (Poole et al. 2019): in expectation a LOWER bound on I(x; z), for any N.
    An encoder whose posteriors barely overlap drives it to its ceiling log N, whatever its true information:
    ``latent_information`` says when.

    Args:
      params: the model.
      x: examples (a held-out batch; N of them, N x N log-densities are computed).
      seed: names the draw of the z_i.
      chunk_size: z_i evaluated at once; memory is chunk_size * N * latent numbers.
      scale: divide integer pixel data by this.

    Returns:
      0-d tensor, nats, in [~0, log N].
    """
    check_int("chunk_size", chunk_size)
    derive_seed(seed)
    if not params.model.gaussian:
        raise ValueError(f"{params.model}'s posterior is given as a draw: it gives log q(z | x) at its own draw, not "
                         "at another example's z, which the aggregate posterior q(z) needs; I(x; z) is at most the "
                         "mean KL, funcvae.elbo(...)['kl'] (an upper bound)")
    mean, logvar = encode(params, x, scale=scale, context=context)
    n = mean.shape[0]
    eps = torch.randn(mean.shape, generator=generator(seed, "mi", device=mean.device), dtype=mean.dtype,
                      device=mean.device)
    z = D.reparameterize(mean, logvar, eps)
    log_q_own = D.gaussian_log_prob(mean, logvar, z).sum(-1)  # log q(z_i | x_i), (N,)

    def log_q_all(z_one: Tensor) -> Tensor:  # log q(z | x_j) for every j: (latent,) -> (N,)
        return D.gaussian_log_prob(mean, logvar, z_one).sum(-1)

    log_q_z = torch.cat([torch.logsumexp(vmap(log_q_all)(z[a:a + chunk_size]), dim=-1)
                         for a in range(0, n, chunk_size)]) - math.log(n)
    return (log_q_own - log_q_z).mean()


#: An I(x; z) estimate within this many nats of its ceiling log N is saturated: each z_i is credited to its
#: own x_i with weight above e^-1 on average, so the estimate says more about N than about the encoder.
MI_SATURATION_NATS = 1.0


def latent_information(params: Params, x, *, seed: int, kl: float, context=None) -> dict:
    """The encoder's information, stated with its bounds: I(x; z) (``mutual_information``, a lower bound; its
    ceiling log N; whether it is saturated) and the gap between the aggregate posterior and the prior,
    KL(q(z) || p(z)) = E_x KL(q(z|x) || p(z)) - I(x; z), which is then an UPPER bound (nats).

    Args:
      params, x, seed, context: as for ``mutual_information`` (N = the examples of ``x``).
      kl: E_x KL(q(z|x) || p(z)) on ``x`` in nats (the mean ``kl`` term of ``funcvae.elbo``).

    Returns:
      ``{"mutual_information", "mi_ceiling", "mi_saturated", "aggregate_kl"}``.
    """
    mi = float(mutual_information(params, x, seed=seed, context=context))
    ceiling = math.log(len(x))
    return {"mutual_information": mi, "mi_ceiling": ceiling, "mi_saturated": ceiling - mi < MI_SATURATION_NATS,
            "aggregate_kl": kl - mi}


def diagnose(history: list[dict], *, kl_per_dim: Tensor | None = None, active: ActiveUnits | None = None,
             factorised_prior: bool = True) -> list[dict]:
    """Verdicts on a training run: posterior collapse, overfitting, instability.

    Args:
      history: ``fit``'s per-epoch records (``epoch``, ``recon``, ``kl``, ``loss``, ``val_*``).
      kl_per_dim: (d,) from ``kl_per_dim`` on held-out data, for collapse; optional.
      active: from ``active_units`` on held-out data, for collapse; optional.
      factorised_prior: False for a prior without a per-dimension KL (the VampPrior): the advice then leaves
        out free bits, which need one.

    Returns:
      A list of findings, each ``{"name", "severity" ("error" | "warning"), "evidence" (dict of numbers),
      "advice"}``; empty for a healthy run.
    """
    if not history:
        raise ValueError("history is empty: nothing to diagnose")
    if not isinstance(history[0], dict):
        raise TypeError("history must be one model's list of epoch records; for a stack of models, "
                        "diagnose each: diagnose(histories[i])")
    checks = (_collapse(history, kl_per_dim, active, factorised_prior), _overfitting(history), *_instability(history))
    return [finding for finding in checks if finding is not None]


def _finding(name: str, severity: str, evidence: dict, advice: str) -> dict:
    return {"name": name, "severity": severity, "evidence": evidence, "advice": advice}


def _last_kl(history: list[dict]) -> tuple[float, str]:
    """The final epoch's KL, held-out when available: (value, which)."""
    last = history[-1]
    return (last["val_kl"], "val_kl") if last.get("val_kl") is not None else (last["kl"], "kl")


def _collapse(history: list[dict], kl_dims: Tensor | None, active: ActiveUnits | None,
              factorised_prior: bool) -> dict | None:
    kl, which = _last_kl(history)
    evidence = {which: kl, "epoch": history[-1]["epoch"]}
    collapsed = math.isfinite(kl) and kl < COLLAPSE_KL
    groups = _last_groups(history)
    if groups is not None and not collapsed:
        return _group_collapse(history, groups, which, kl)
    if kl_dims is not None:
        evidence.update(kl_total=float(kl_dims.sum()), kl_per_dim=[round(float(v), 4) for v in kl_dims])
        collapsed = collapsed or float(kl_dims.sum()) < COLLAPSE_KL
    if active is not None:
        latent = len(active.variance)
        evidence.update(active_units=active.count, latent=latent)
        collapsed = collapsed or (latent >= 2 and active.count < COLLAPSE_ACTIVE_FRACTION * latent)
    if not collapsed:
        return None
    free_bits = ("free bits (fit(..., free_bits=0.2): a floor of a few tenths of a nat of KL per latent "
                 "dimension), " if factorised_prior else "")
    return _finding("posterior collapse", "error", evidence, (
        "The decoder ignores the latent code: q(z|x) has fallen onto the prior. Try KL warm-up "
        f"(fit(..., kl_warmup=10)), {free_bits}or a weaker decoder (fewer or smaller layers). Do NOT raise the KL "
        "weight beta: a larger beta pulls q(z|x) harder onto the prior and makes the collapse worse (a beta below "
        "1 is the direction that helps)."))


def _last_groups(history: list[dict]) -> dict | None:
    """The final epoch's KL per latent group, held-out when available (None for a model without groups)."""
    last = history[-1]
    return last.get("val_kl_groups") or last.get("kl_groups")


def _group_collapse(history: list[dict], groups: dict, which: str, kl: float) -> dict | None:
    """A hierarchy whose code is used, but not by every group: the groups below ``COLLAPSE_KL`` named."""
    dead = [g for g, v in groups.items() if math.isfinite(v) and v < COLLAPSE_KL]
    if not dead:
        return None
    named = ", ".join(f"{g}: KL {groups[g]:.2g} nats, collapsed" for g in dead)
    evidence = {which: kl, "epoch": history[-1]["epoch"], "collapsed_groups": dead,
                "kl_groups": {g: round(v, 4) for g, v in groups.items()}}
    return _finding("posterior collapse", "warning", evidence, (
        f"{named}. The other groups carry the code, so the model works, but these layers add nothing. Try KL "
        "warm-up (fit(..., kl_warmup=10)) or free bits per group (fit(..., free_bits=0.5): a floor on each "
        "group's KL, as the Ladder VAE paper does), or fewer groups. Do NOT raise the KL weight beta: it pulls "
        "q(z|x) harder onto the prior."))


def _overfitting(history: list[dict]) -> dict | None:
    val = [h.get("val_loss") for h in history]
    if any(v is None or not math.isfinite(v) for v in val) or len(val) <= OVERFIT_PATIENCE:
        return None
    best = min(range(len(val)), key=val.__getitem__)
    rise, train_drop = val[-1] - val[best], history[best]["loss"] - history[-1]["loss"]
    if len(val) - 1 - best < OVERFIT_PATIENCE or rise <= OVERFIT_MIN_RISE * abs(val[best]) or train_drop <= 0:
        return None
    best_epoch = history[best]["epoch"]
    evidence = {"best_epoch": best_epoch, "best_val_loss": val[best], "rise_began_epoch": history[best + 1]["epoch"],
                "final_val_loss": val[-1], "val_rise": rise, "train_loss_drop": train_drop}
    return _finding("overfitting", "warning", evidence, (
        f"The held-out loss was lowest at epoch {best_epoch} ({val[best]:.4g} nats) and rose by {rise:.3g} nats "
        f"since, while the training loss fell by {train_drop:.3g}. Stop early at epoch {best_epoch} (fit is "
        f"deterministic: the same seed with epochs={best_epoch} gives that epoch's params), get more data, or "
        "regularise (a smaller model, fewer latent dims)."))


def _instability(history: list[dict]) -> list[dict | None]:
    keys = ("recon", "kl", "loss", "val_recon", "val_kl", "val_loss")
    bad = [h["epoch"] for h in history if any(h.get(k) is not None and not math.isfinite(h[k]) for k in keys)]
    findings = []
    if bad:
        findings.append(_finding("unstable run: non-finite values", "error", {"epochs": bad}, (
            f"NaN or Inf in the losses from epoch {bad[0]}: the optimisation diverged. Lower the learning rate "
            "(e.g. by 10x) or clip gradients; for a learned Gaussian variance check the data's scale.")))
    spikes = _spikes([h["loss"] for h in history])
    if spikes:
        evidence = {"epochs": [history[t]["epoch"] for t, _ in spikes], "jumps": [round(j, 4) for _, j in spikes]}
        findings.append(_finding("unstable run: loss spikes", "warning", evidence, (
            f"The training loss jumped at epoch(s) {evidence['epochs']} well above its trend. Lower the learning "
            "rate or clip gradients (e.g. to a global norm of a few times the typical one).")))
    return findings


def _spikes(loss: list[float]) -> list[tuple[int, float]]:
    """(index, jump in nats) of the epochs whose loss rose above the previous epoch's by more than the
    spike threshold (see the constants)."""
    if len(loss) < SPIKE_MIN_EPOCHS or not all(math.isfinite(v) for v in loss):
        return []
    diffs = torch.tensor(loss, dtype=torch.float64).diff()
    centre = float(diffs.median())
    robust_sd = 1.4826 * float((diffs - centre).abs().median())
    return [(t + 1, float(d)) for t, d in enumerate(diffs.tolist())
            if d > centre + SPIKE_SDS * robust_sd and d > SPIKE_MIN_RISE * abs(loss[t])]


def format_report(findings: list[dict], history: list[dict] | None = None) -> str:
    """A short human-readable report of ``diagnose``'s findings, with their numbers.

    Args:
      findings: from ``diagnose``.
      history: optional; its last epoch's losses head the report.

    Returns:
      Text, one paragraph per finding (``[severity] name: evidence`` then the advice).
    """
    lines = []
    if history:
        last = history[-1]
        held = "" if last.get("val_loss") is None else f", held-out {last['val_loss']:.4g}"
        lines.append(f"Epoch {last['epoch']}: loss {last['loss']:.4g} nats per example (recon "
                     f"{last['recon']:.4g}, KL {last['kl']:.4g}){held}.")
    if not findings:
        lines.append("No problems found: no posterior collapse, overfitting or instability.")
    for f in findings:
        numbers = ", ".join(f"{k}={_number(v)}" for k, v in f["evidence"].items())
        lines.append(f"[{f['severity']}] {f['name']}: {numbers}\n    {f['advice']}")
    return "\n".join(lines)


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_number(v) for v in value) + "]"
    return str(value)
