"""Likelihoods p(x | z) as small pure objects over what the decoder returns for ONE example.

A model's ``decode(tree, z)`` returns the likelihood's parameters, and the likelihood turns them into a
log-density in nats, summed over the example's features:

- ``bernoulli()``: ``decode`` returns logits (features,); x in [0, 1].
- ``gaussian(std)``: ``decode`` returns the mean (features,); the std is fixed.
- ``gaussian()``: ``decode`` returns ``(mean, logvar)``, each (features,): a learned variance (for instance a
  per-pixel parameter of the tree, returned as it is), floored at ``MIN_OBS_LOGVAR``.
- ``discretized_logistic()``: ``decode`` returns ``(mean, log_scale)``, each (features,); x on the 256 levels
  k/255 of 8-bit data, each sub-pixel a logistic integrated over its level's bin (PixelCNN++'s likelihood with
  one component), its log-scale floored at ``MIN_LOG_SCALE``.

A likelihood says which parameters ``decode`` returns (``outputs``) and whether it is a distribution over
discrete values (``discrete``), whose nats are code lengths: ``bits_per_dim`` turns them into bits per
dimension comparable with published numbers. A density's nats are not (docs/models.md, "Bits per dimension").

Each is a frozen dataclass: equal settings give equal (hashable) objects, so a compiled step is reused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from funcvae import distributions as D
from funcvae.checks import check_positive

# A learned Gaussian variance is floored at the variance of 8-bit quantisation noise on [0, 1] data,
# (1/255)^2/12: a density narrower than one grey level measures rounding, not the image, and would let
# constant pixels drive the likelihood to +inf.
MIN_OBS_LOGVAR = math.log((1.0 / 255.0) ** 2 / 12.0)
# PixelCNN++'s and VDVAE's floor of -7 on data in [-1, 1], on [0, 1]: a bin holds at most 97% of a logistic this
# narrow, and exp(-log_scale) stays far from overflow.
MIN_LOG_SCALE = -7.0 - math.log(2.0)


@dataclass(frozen=True)
class Bernoulli:
    """p(x | z) = prod_i Bernoulli(x_i | sigmoid(logit_i)); on grey levels in (0, 1) it is the cross-entropy."""

    name = "bernoulli"
    outputs = ("logits",)
    discrete = True  # on {0, 1}; on grey levels in between its nats are a cross-entropy, not a probability

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        """(..., F) logits and data -> (...) nats."""
        return D.bernoulli_log_prob(out, x).sum(-1)

    def mean(self, out: Tensor) -> Tensor:
        """The mean image sigmoid(logits), in [0, 1]."""
        return torch.sigmoid(out)

    def sample(self, out: Tensor, generator: torch.Generator) -> Tensor:
        return torch.bernoulli(torch.sigmoid(out), generator=generator)

    def check_support(self, x: Tensor, name: str) -> None:
        D.check_support("bernoulli", x, name=name)

    def to_dict(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class Gaussian:
    """p(x | z) = N(x | mean, std^2 I) with a fixed ``std``, or a learned variance when ``std`` is None."""

    std: float | None = None
    name = "gaussian"
    discrete = False

    def __post_init__(self):
        if self.std is not None and (isinstance(self.std, bool) or not isinstance(self.std, (int, float))
                                     or not math.isfinite(self.std) or self.std <= 0):
            raise ValueError(f"the gaussian likelihood's std must be a finite number > 0, got {self.std!r}")

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("mean",) if self.std is not None else ("mean", "logvar")

    def mean_and_logvar(self, out) -> tuple[Tensor, Tensor]:
        """The decoder's output as (mean, logvar), the learned logvar floored at ``MIN_OBS_LOGVAR``."""
        if self.std is None:
            mean, logvar = out
            return mean, torch.clamp(logvar, min=MIN_OBS_LOGVAR)
        return out, torch.full_like(out, 2.0 * math.log(self.std))

    def log_prob(self, out, x: Tensor) -> Tensor:
        mean, logvar = self.mean_and_logvar(out)
        return D.gaussian_log_prob(mean, logvar, x).sum(-1)

    def mean(self, out) -> Tensor:
        """The mean image, clamped to [0, 1] for display."""
        return self.mean_and_logvar(out)[0].clamp(0.0, 1.0)

    def sample(self, out, generator: torch.Generator) -> Tensor:
        mean, logvar = self.mean_and_logvar(out)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(0.5 * logvar) * noise

    def check_support(self, x: Tensor, name: str) -> None:
        D.check_support("gaussian", x, name=name)

    def to_dict(self) -> dict:
        return {"name": self.name, "std": self.std}


@dataclass(frozen=True)
class DiscretizedLogistic:
    """p(x | z) = prod_i P(x_i | mean_i, exp(log_scale_i)), x_i on the 256 levels k/255: a logistic's mass over
    the bin [x_i - 1/510, x_i + 1/510], the edge bins reaching to -inf and +inf (``distributions.
    discretized_logistic_log_prob``); a distribution over the 256 levels of each sub-pixel."""

    name = "discretized_logistic"
    outputs = ("mean", "log_scale")
    discrete = True

    def log_prob(self, out, x: Tensor) -> Tensor:
        """``(mean, log_scale)``, each (..., F), and data (..., F) on the levels -> (...) nats."""
        mean, log_scale = out
        return D.discretized_logistic_log_prob(mean, torch.clamp(log_scale, min=MIN_LOG_SCALE), x).sum(-1)

    def mean(self, out) -> Tensor:
        """The mean image of the discretised distribution, in [0, 1]."""
        mean, log_scale = out
        return D.discretized_logistic_mean(mean, torch.clamp(log_scale, min=MIN_LOG_SCALE))

    def sample(self, out, generator: torch.Generator) -> Tensor:
        """Draws on the 256 levels k/255, each with its probability."""
        mean, log_scale = out
        return D.discretized_logistic_sample(mean, torch.clamp(log_scale, min=MIN_LOG_SCALE), generator)

    def check_support(self, x: Tensor, name: str) -> None:
        D.check_support("discretized_logistic", x, name=name)

    def to_dict(self) -> dict:
        return {"name": self.name}


def bernoulli() -> Bernoulli:
    return Bernoulli()


def gaussian(std: float | None = None) -> Gaussian:
    """A fixed ``std``, or None for a variance the decoder returns (``decode`` gives ``(mean, logvar)``)."""
    if std is not None:
        # Checked before float(): float() would take True as 1.0 and "0.1" as 0.1.
        check_positive("the gaussian likelihood's std", std)
    return Gaussian(None if std is None else float(std))


def discretized_logistic() -> DiscretizedLogistic:
    """For 8-bit data: ``decode`` returns ``(mean, log_scale)``, each (features,), in units of [0, 1]."""
    return DiscretizedLogistic()


def bits_per_dim(nats, dims: int):
    """Nats per example (a float or a tensor) -> bits per dimension, ``nats / (dims * ln 2)``.

    The numbers papers publish for 8-bit images are of the 256-level discrete distribution: with data scaled to
    [0, 1] and a discrete likelihood (``discrete``, as ``discretized_logistic``), funcvae's nats are those, so
    these bits compare with them as they are. A density's nats on [0, 1] data would need log 256 nats per
    dimension added (8 bits), and uniform dequantisation in training to make that an upper bound.
    """
    return nats / (dims * math.log(2.0))


def get(likelihood) -> Bernoulli | Gaussian | DiscretizedLogistic:
    """A likelihood object from itself, a name ("bernoulli", "gaussian": learned variance,
    "discretized_logistic") or ``to_dict()``."""
    if isinstance(likelihood, (Bernoulli, Gaussian, DiscretizedLogistic)):
        return likelihood
    if isinstance(likelihood, dict):
        likelihood = dict(likelihood)
        name = likelihood.pop("name", None)
        if name == "bernoulli" and not likelihood:
            return bernoulli()
        if name == "gaussian" and set(likelihood) <= {"std"}:
            return gaussian(likelihood.get("std"))
        if name == "discretized_logistic" and not likelihood:
            return discretized_logistic()
        raise ValueError(f"not a likelihood description: {likelihood!r}")
    if likelihood == "bernoulli":
        return bernoulli()
    if likelihood == "gaussian":
        return gaussian()
    if likelihood == "discretized_logistic":
        return discretized_logistic()
    raise ValueError(f"likelihood must be 'bernoulli', 'gaussian', 'discretized_logistic' or an object from "
                     f"funcvae.likelihoods, got {likelihood!r}")

