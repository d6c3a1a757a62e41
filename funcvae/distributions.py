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
#: 8-bit data on [0, 1]: a level k/255 stands for the bin k/255 +- HALF_BIN, of width 1/255 (log width -LOG_255).
HALF_BIN = 0.5 / 255.0
LOG_255 = math.log(255.0)
#: How far (in levels) a value of 8-bit data may sit from k/255 and still be level k: float rounding of k/255
#: is below 1e-4 of a level in float32, and data of another depth (x/256, 16-bit levels) sit 1/257 or more away.
LEVEL_TOLERANCE = 1e-3


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


def discretized_logistic_log_prob(mean: Tensor, log_scale: Tensor, x: Tensor) -> Tensor:
    """log P(x | mean, exp(log_scale)) per element, x on the 256 levels k/255 of [0, 1]: the mass of a logistic
    over x's bin [x - 1/510, x + 1/510], the first bin reaching down to -inf and the last up to +inf, so the 256
    masses sum to 1.

    Exact in log space for any finite mean and log_scale >= -80 (``exp(-log_scale)`` must not overflow). A
    middle bin's mass sigmoid(t + h) - sigmoid(t - h), t = (x - mean) / scale, h = 1 / (510 scale), is written as
    the product sigmoid(t + h) sigmoid(h - t) (1 - exp(-2h)), whose logs lose no digits: no difference of
    rounded sigmoids, so PixelCNN++'s switch to the density at the bin's centre for masses below 1e-5 is not
    needed, and masses far below the smallest float keep their exact log.
    """
    inv_scale = torch.exp(-log_scale)
    t = (x - mean) * inv_scale
    h = HALF_BIN * inv_scale
    lower_edge = F.logsigmoid(t + h)  # log P(X <= 1/510): the bin of level 0
    upper_edge = F.logsigmoid(h - t)  # log P(X >= 1 - 1/510): the bin of level 255
    # log(1 - exp(-2h)) = log(2h) + log((1 - exp(-2h)) / (2h)): 2h underflows to 0 for a vast scale, log(2h) does
    # not; the clamp keeps the ratio's 0 / 0 out (it is 1 there).
    width = (2.0 * h).clamp(min=torch.finfo(h.dtype).tiny)
    log_width = -log_scale - LOG_255 + torch.log(-torch.expm1(-width) / width)
    middle = lower_edge + upper_edge + log_width
    # Levels are told apart half a level from their value, so data rounded in float still find their bin.
    return torch.where(x < HALF_BIN, lower_edge, torch.where(x > 1.0 - HALF_BIN, upper_edge, middle))


def discretized_logistic_mean(mean: Tensor, log_scale: Tensor) -> Tensor:
    """The mean of the discretised logistic per element, in [0, 1]: sum over k = 1..255 of P(X >= k/255) / 255."""
    inv_scale = torch.exp(-log_scale)
    total = torch.zeros_like(mean)
    for k in range(1, 256):  # one level at a time: a (..., 255) tensor of a batch of images would be large
        total = total + torch.sigmoid((mean - (k - 0.5) / 255.0) * inv_scale)
    return total / 255.0


def discretized_logistic_sample(mean: Tensor, log_scale: Tensor, generator: torch.Generator) -> Tensor:
    """One draw per element on the 256 levels k/255: a logistic draw rounded to its bin's level (the edge bins
    take the tails), so each level comes with its probability under ``discretized_logistic_log_prob``."""
    u = torch.rand(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    draw = mean + torch.exp(log_scale) * torch.logit(u)
    return torch.round(255.0 * draw).clamp(0.0, 255.0) / 255.0


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
    if likelihood == "discretized_logistic":
        levels = x * 255.0
        bad = (x < 0) | (x > 1) | ((levels - levels.round()).abs() > LEVEL_TOLERANCE)
        if bool(bad.any()):
            where = first_index(bad)
            raise ValueError(
                f"{name} holds {int(bad.sum())} values that are not 8-bit levels k/255 in [0, 1], the support of the "
                f"discretized logistic likelihood (the first is {float(x[where])!r}, at index {where}); pass 8-bit "
                "pixels with scale=255, or use likelihood='gaussian' for other data")
