"""Posteriors richer than a diagonal Gaussian, on top of an encoder's last hidden vector ``h``.

Each is an ``*_init(generator, ...) -> head`` / ``*_sample(head, h, eps) -> (z, log_q)`` pair for ONE example:
``h`` (width,) the encoder's features, ``eps`` (latent,) standard-normal noise, ``z`` (latent,) one
reparameterised draw of q(z | x) and ``log_q`` the 0-d log q(z | x) in nats, exact by the change of variables
(z is a bijection of eps). No branching on tensor values, no in-place writes, no random draws: both run under
``vmap``, ``grad`` and ``torch.compile``.

- ``full_*``: a full-covariance Gaussian, z = mean + L eps with L lower triangular (a Cholesky factor).
- ``iaf_*``: inverse autoregressive flow (Kingma et al. 2016) in its numerically stable LSTM-type form,
  each step a MADE (Germain et al. 2015) conditioned on a context vector from ``h``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from funcvae import distributions as D
from funcvae import nn
from funcvae.model import LOGVAR_RANGE

# sigma = sigmoid(s + FORGET_BIAS) starts near sigmoid(1) = 0.73 while s is near 0: each step starts by moving
# z only part of the way, as the IAF paper advises (it suggests +1 or +2; +1 keeps sigmoid's slope larger).
FORGET_BIAS = 1.0


def _diagonal(head: dict, h: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, logvar), each (latent,), the log-variance clamped to ``LOGVAR_RANGE``."""
    return nn.dense(head["mean"], h), torch.clamp(nn.dense(head["logvar"], h), *LOGVAR_RANGE)


# --- full-covariance Gaussian ------------------------------------------------------------------------------


def full_init(generator: torch.Generator, width: int, latent: int) -> dict:
    """Params of a full-covariance Gaussian head from ``h`` (width,).

    Returns:
      ``{"mean", "logvar", "lower"}`` dense layers; "lower" gives the latent * (latent - 1) / 2 strictly-lower
      entries of the Cholesky factor, row by row, and is absent for latent 1 (a leaf of size zero would not
      survive every save and check).
    """
    head = {"mean": nn.dense_init(generator, width, latent), "logvar": nn.dense_init(generator, width, latent)}
    if latent > 1:
        head["lower"] = nn.dense_init(generator, width, latent * (latent - 1) // 2)
    return head


def _cholesky_index(latent: int, device) -> Tensor:
    """(latent, latent) positions into ``cat([strictly_lower, diagonal, zero])`` that assemble L.

    A gather from a constant index builds L without writing into a tensor, so it batches under vmap. The
    strictly-lower entries are row-major, as ``torch.tril_indices(offset=-1)`` lists them: (i, j) is i(i-1)/2 + j.
    """
    n_off = latent * (latent - 1) // 2
    i = torch.arange(latent, device=device)[:, None]
    j = torch.arange(latent, device=device)[None, :]
    return torch.where(i > j, i * (i - 1) // 2 + j, torch.where(i == j, n_off + i, n_off + latent))


def _full(head: dict, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(mean (latent,), logvar (latent,), L (latent, latent)) with diag(L) = exp(logvar / 2)."""
    mean, logvar = _diagonal(head, h)
    lower = nn.dense(head["lower"], h) if "lower" in head else h.new_zeros(0)
    values = torch.cat([lower, torch.exp(0.5 * logvar), h.new_zeros(1)])
    return mean, logvar, values[_cholesky_index(mean.shape[-1], h.device)]


def full_sample(head: dict, h: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """One draw z = mean + L eps of q(z | x) = N(mean, L L^T) and its log-density.

    Args:
      head: from ``full_init``.
      h: (width,) the encoder's last hidden vector.
      eps: (latent,) standard-normal noise.

    Returns:
      z (latent,) and log_q (0-d nats): log N(eps; 0, I) - log|det L|, with log|det L| = sum(logvar) / 2.
    """
    mean, logvar, chol = _full(head, h)
    # log diag(L) is logvar / 2 exactly: taken from the log-variance, not from the log of a rounded exp.
    return mean + chol @ eps, D.standard_normal_log_prob(eps).sum() - 0.5 * logvar.sum()


# --- inverse autoregressive flow ---------------------------------------------------------------------------


def iaf_init(generator: torch.Generator, width: int, latent: int, steps: int, hidden: int) -> dict:
    """Params of an IAF head: a diagonal Gaussian, a context and ``steps`` MADE steps of ``hidden`` units.

    Returns:
      ``{"mean", "logvar", "context", "step_0", ...}``; each step ``{"hidden", "mean", "scale"}`` dense layers,
      (latent -> hidden) and (hidden -> latent) twice. The masks are rebuilt from these shapes when applied.
    """
    head = {"mean": nn.dense_init(generator, width, latent), "logvar": nn.dense_init(generator, width, latent),
            "context": nn.dense_init(generator, width, hidden)}
    for t in range(steps):
        head[f"step_{t}"] = {"hidden": nn.dense_init(generator, latent, hidden),
                             "mean": nn.dense_init(generator, hidden, latent),
                             "scale": nn.dense_init(generator, hidden, latent)}
    return head


def made_masks(latent: int, hidden: int, reverse: bool, *, dtype=torch.float32, device=None) -> tuple[Tensor, Tensor]:
    """MADE masks (hidden, latent) and (latent, hidden) for outputs that depend only on earlier inputs.

    Inputs have degrees 1..latent (latent..1 when ``reverse``); hidden unit k has degree k mod latent and sees
    inputs of degree <= its own; output i sees hidden units of degree < its input's. Degree-0 units see no
    input, only the context, so the first output still depends on x.
    """
    degrees = torch.arange(1, latent + 1, device=device)
    if reverse:
        degrees = degrees.flip(0)
    units = torch.arange(hidden, device=device) % latent
    into = (degrees[None, :] <= units[:, None]).to(dtype)
    out = (degrees[:, None] > units[None, :]).to(dtype)
    return into, out


def _masked(layer: dict, mask: Tensor, x: Tensor) -> Tensor:
    return nn.dense({"kernel": layer["kernel"] * mask, "bias": layer["bias"]}, x)


def iaf_step(step: dict, context: Tensor, z: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
    """One IAF step z -> sigma * z + (1 - sigma) * m; returns (z (latent,), log sigma (latent,)).

    dz_new / dz is triangular in the step's ordering with diagonal sigma, so log|det| = sum(log sigma).
    """
    into, out = made_masks(z.shape[-1], context.shape[-1], reverse, dtype=step["hidden"]["kernel"].dtype,
                           device=z.device)
    units = F.elu(_masked(step["hidden"], into, z) + context)
    m, s = _masked(step["mean"], out, units), _masked(step["scale"], out, units)
    sigma = torch.sigmoid(s + FORGET_BIAS)
    return sigma * z + (1.0 - sigma) * m, F.logsigmoid(s + FORGET_BIAS)


def iaf_sample(head: dict, h: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """One draw of the IAF posterior and its log-density.

    Args:
      head: from ``iaf_init``.
      h: (width,) the encoder's last hidden vector.
      eps: (latent,) standard-normal noise.

    Returns:
      z (latent,) and log_q (0-d nats) = log N(z0; mean, exp(logvar)) - sum over steps of sum(log sigma).
    """
    mean, logvar = _diagonal(head, h)
    context = nn.dense(head["context"], h)
    z = D.reparameterize(mean, logvar, eps)
    log_q = D.gaussian_log_prob(mean, logvar, z).sum()
    steps = sum(1 for key in head if key.startswith("step_"))
    for t in range(steps):
        # Alternate the ordering (the paper reverses the variables between steps) through the masks, not by
        # permuting z: the same flow, and z comes out in its own order.
        z, log_sigma = iaf_step(head[f"step_{t}"], context, z, reverse=t % 2 == 1)
        log_q = log_q - log_sigma.sum()
    return z, log_q
