"""Likelihoods p(x | z) as small pure objects over what the decoder returns for ONE example.

A model's ``decode(tree, z)`` returns the likelihood's parameters, and the likelihood turns them into a
log-density in nats, summed over the example's features:

- ``bernoulli()``: ``decode`` returns logits (features,); x in [0, 1].
- ``gaussian(std)``: ``decode`` returns the mean (features,); the std is fixed.
- ``gaussian()``: ``decode`` returns ``(mean, logvar)``, each (features,): a learned variance (for instance a
  per-pixel parameter of the tree, returned as it is), floored at ``MIN_OBS_LOGVAR``.

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


@dataclass(frozen=True)
class Bernoulli:
    """p(x | z) = prod_i Bernoulli(x_i | sigmoid(logit_i)); on grey levels in (0, 1) it is the cross-entropy."""

    name = "bernoulli"

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

    def __post_init__(self):
        if self.std is not None and (isinstance(self.std, bool) or not isinstance(self.std, (int, float))
                                     or not math.isfinite(self.std) or self.std <= 0):
            raise ValueError(f"the gaussian likelihood's std must be a finite number > 0, got {self.std!r}")

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


def bernoulli() -> Bernoulli:
    return Bernoulli()


def gaussian(std: float | None = None) -> Gaussian:
    """A fixed ``std``, or None for a variance the decoder returns (``decode`` gives ``(mean, logvar)``)."""
    if std is not None:
        # Checked before float(): float() would take True as 1.0 and "0.1" as 0.1.
        check_positive("the gaussian likelihood's std", std)
    return Gaussian(None if std is None else float(std))


def get(likelihood) -> Bernoulli | Gaussian:
    """A likelihood object from itself, a name ("bernoulli", "gaussian": learned variance) or ``to_dict()``."""
    if isinstance(likelihood, (Bernoulli, Gaussian)):
        return likelihood
    if isinstance(likelihood, dict):
        likelihood = dict(likelihood)
        name = likelihood.pop("name", None)
        if name == "bernoulli" and not likelihood:
            return bernoulli()
        if name == "gaussian" and set(likelihood) <= {"std"}:
            return gaussian(likelihood.get("std"))
        raise ValueError(f"not a likelihood description: {likelihood!r}")
    if likelihood == "bernoulli":
        return bernoulli()
    if likelihood == "gaussian":
        return gaussian()
    raise ValueError(f"likelihood must be 'bernoulli', 'gaussian' or an object from funcvae.likelihoods, "
                     f"got {likelihood!r}")

