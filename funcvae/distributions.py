"""Log-densities, KL divergences and reparameterised sampling, in nats.

All functions are pure and elementwise over their last axis unless they say they sum; they assume
validated input (``check_support`` is the boundary check) so they can run under ``vmap``, ``grad`` and
``torch.compile``, where a data-dependent error cannot be raised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from funcvae.checks import exact, first_index

LOG_2PI = math.log(2.0 * math.pi)


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log Bernoulli(x | sigmoid(logits)) per element, x in [0, 1].

    Written as ``x * logits - softplus(logits)``: exact for every finite logit (no log of a rounded
    sigmoid). For x strictly between 0 and 1 this is the cross-entropy, not a normalised density.
    """
    return x * logits - F.softplus(logits)


def gaussian_log_prob(mean: Tensor, logvar: Tensor, x: Tensor) -> Tensor:
    """log N(x | mean, exp(logvar)) per element, normalising constant included."""
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z | 0, 1) per element."""
    return -0.5 * (LOG_2PI + z**2)


def kl_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last axis: (..., d) -> (...)."""
    return 0.5 * torch.sum(torch.exp(logvar) + mean**2 - 1.0 - logvar, dim=-1)


def kl_diagonal_gaussians(mean_q: Tensor, logvar_q: Tensor, mean_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))), summed over the last axis."""
    ratio = torch.exp(logvar_q - logvar_p)
    return 0.5 * torch.sum(ratio + (mean_q - mean_p) ** 2 * torch.exp(-logvar_p) - 1.0 - (logvar_q - logvar_p), dim=-1)


def reparameterize(mean: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """z = mean + exp(logvar / 2) * eps; eps (..., d) broadcasts against mean (d,)."""
    return mean + torch.exp(0.5 * logvar) * eps


def kl_monte_carlo(mean_q: Tensor, logvar_q: Tensor, eps: Tensor, mean_p: Tensor | None = None,
                   logvar_p: Tensor | None = None) -> Tensor:
    """Single-sample KL estimates log q(z) - log p(z) at z = reparameterize(mean_q, logvar_q, eps).

    Args:
      mean_q, logvar_q: (d,) the posterior q.
      eps: (K, d) standard normal draws, one row per sample.
      mean_p, logvar_p: (d,) the prior p; N(0, I) when omitted.

    Returns:
      (K,) unbiased estimates whose mean converges to the analytic KL.
    """
    z = reparameterize(mean_q, logvar_q, eps)
    log_q = gaussian_log_prob(mean_q, logvar_q, z).sum(-1)
    if mean_p is None:
        log_p = standard_normal_log_prob(z).sum(-1)
    else:
        log_p = gaussian_log_prob(mean_p, logvar_p, z).sum(-1)
    return log_q - log_p


def check_support(likelihood: str, x: Tensor, *, name: str = "data") -> None:
    """Raise ValueError when ``x`` holds values outside the likelihood's support (or NaN/Inf), naming the
    first such value, exactly, and its index."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"{name} holds {int(bad.sum())} NaN or Inf values (first at index {first_index(bad)})")
    if likelihood == "bernoulli":
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            where = first_index((x < 0) | (x > 1))
            raise ValueError(
                f"{name} has values in [{exact(lo)}, {exact(hi)}], outside [0, 1], the support of the Bernoulli "
                "likelihood; pass scale= (e.g. 255 for 8-bit pixels) or use likelihood='gaussian' (the first value "
                f"outside is {float(x[where])!r}, at index {where})"
            )
