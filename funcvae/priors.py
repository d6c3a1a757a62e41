"""Priors p(z) as small pure objects: log-density, sampling, and the KL to a diagonal Gaussian posterior
where a closed form exists.

- ``standard_normal()``: N(0, I); KL in closed form, per latent dimension. With latent groups (a dict
  ``latent``), N(0, I) on each group, its log-density per group.
- ``vamp(k)``: the VampPrior (Tomczak & Welling 2018), p(z) = (1/K) sum_k q(z | u_k), a mixture of the
  encoder's posteriors at K learned pseudo-inputs u_k. It has no closed-form KL (objectives use a Monte
  Carlo KL) and does not factorise over latent dimensions, so there is no per-dimension KL.

A prior with parameters of its own (the pseudo-inputs) keeps them in the params tree under ``"prior"``;
its functions take that tree and the model, since the VampPrior runs the model's encoder.

- ``custom(log_prob, sample)``: a prior of the model's own, as pure functions of ONE latent:
  ``log_prob(tree, z) -> log p(z)`` (0-d nats, or a dict per latent group) and ``sample(tree, eps) -> z``
  (ancestral sampling from standard normal noise shaped like the latent); both take the context last in a
  conditional model. A hierarchy's top-down prior p(z_L) p(z_L-1 | z_L) ... is one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.func import vmap

from funcvae import distributions as D


@dataclass(frozen=True)
class StandardNormal:
    """p(z) = N(0, I)."""

    name = "normal"
    factorised = True

    def init(self, generator: torch.Generator, model) -> None:
        return None

    def log_prob(self, tree: dict, model, z, c: Tensor | None = None):
        """(..., latent) -> (...) nats; a dict of groups -> a dict of their log-densities."""
        if isinstance(z, dict):
            return {name: D.standard_normal_log_prob(v).sum(-1) for name, v in z.items()}
        return D.standard_normal_log_prob(z).sum(-1)

    def kl_dims(self, tree: dict, model, mean: Tensor, logvar: Tensor) -> Tensor:
        """KL(N(mean, exp(logvar)) || N(0, I)) of each latent dimension: (..., latent) -> (..., latent)."""
        return D.kl_standard_normal(mean.unsqueeze(-1), logvar.unsqueeze(-1))

    def sample(self, tree: dict, model, n: int, generator: torch.Generator, like: Tensor, c: Tensor | None = None):
        """n draws in the model's structure, (n, latent) or a dict of (n, size)."""
        return model.split(torch.randn(n, model.noise_size, generator=generator, dtype=like.dtype, device=like.device))

    def to_dict(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class VampPrior:
    """p(z) = (1/K) sum_k q(z | u_k) with K learned pseudo-inputs u_k (Tomczak & Welling 2018).

    The pseudo-inputs start as N(0.05, 0.01^2) pixels (the paper's initialisation) and are trained with the
    rest of the model. Their K encodings do not depend on the example, so under ``vmap`` over a batch they
    are computed once per step, not once per example.
    """

    components: int = 500
    name = "vamp"
    factorised = False

    def __post_init__(self):
        if isinstance(self.components, bool) or not isinstance(self.components, int) or self.components < 1:
            raise ValueError(f"the VampPrior needs an int >= 1 of pseudo-inputs, got {self.components!r}")

    def init(self, generator: torch.Generator, model) -> dict:
        u = torch.empty(self.components, model.features).normal_(0.05, 0.01, generator=generator)
        return {"pseudo_inputs": u}

    def components_of(self, tree: dict, model) -> tuple[Tensor, Tensor]:
        """(mean, logvar), each (K, latent): the posteriors of the pseudo-inputs."""
        return vmap(model.encode_one, in_dims=(None, 0))(tree, tree["prior"]["pseudo_inputs"])

    def log_prob(self, tree: dict, model, z: Tensor, c: Tensor | None = None) -> Tensor:
        """(latent,) -> 0-d nats: logsumexp over the K components minus log K."""
        mean, logvar = self.components_of(tree, model)
        return torch.logsumexp(D.gaussian_log_prob(mean, logvar, z).sum(-1), dim=-1) - math.log(self.components)

    def kl_dims(self, tree: dict, model, mean: Tensor, logvar: Tensor) -> None:
        return None  # a mixture has no closed-form KL and does not split over latent dimensions

    def sample(self, tree: dict, model, n: int, generator: torch.Generator, like: Tensor,
               c: Tensor | None = None) -> Tensor:
        mean, logvar = self.components_of(tree, model)
        pick = torch.randint(self.components, (n,), generator=generator, device=like.device)
        eps = torch.randn(n, model.latent, generator=generator, dtype=like.dtype, device=like.device)
        return D.reparameterize(mean[pick], logvar[pick], eps)

    def to_dict(self) -> dict:
        return {"name": self.name, "components": self.components}


@dataclass(frozen=True)
class Custom:
    """A prior of the model's own (``custom``): its functions take ONE latent, in the model's structure."""

    log_prob_fn: Callable
    sample_fn: Callable
    name = "custom"
    factorised = False

    def init(self, generator: torch.Generator, model) -> None:
        return None  # its parameters, if any, are the model's own, made by the model's init

    def log_prob(self, tree: dict, model, z, c: Tensor | None = None):
        return self.log_prob_fn(tree, z, *model._with(c))

    def kl_dims(self, tree: dict, model, mean: Tensor, logvar: Tensor) -> None:
        return None

    def sample(self, tree: dict, model, n: int, generator: torch.Generator, like: Tensor, c: Tensor | None = None):
        eps = torch.randn(n, model.noise_size, generator=generator, dtype=like.dtype, device=like.device)
        one = (lambda e: self.sample_fn(tree, model.split(e))) if c is None else (
            lambda e, ci: self.sample_fn(tree, model.split(e), ci))
        return vmap(one)(eps) if c is None else vmap(one)(eps, c)

    def to_dict(self) -> dict:
        return {"name": self.name, "log_prob": _qualname(self.log_prob_fn), "sample": _qualname(self.sample_fn)}


def custom(log_prob: Callable, sample: Callable) -> Custom:
    """A prior of the model's own: ``log_prob(tree, z) -> log p(z)`` (0-d nats, or a dict of 0-d per latent
    group) and ``sample(tree, eps) -> z`` (eps standard normal noise shaped like the latent), each for ONE
    latent, with the context last in a conditional model."""
    for name, fn in (("log_prob", log_prob), ("sample", sample)):
        if not callable(fn):
            raise TypeError(f"priors.custom's {name} must be a function, got {type(fn).__name__}")
    return Custom(log_prob, sample)


def check(prior, layout, *, gaussian: bool, context: int | None) -> None:
    """Raise ValueError when ``prior`` cannot serve a model with this latent ``layout`` (an int or group pairs),
    posterior form and context."""
    if isinstance(prior, VampPrior):
        if not gaussian or not isinstance(layout, int):
            raise ValueError("the VampPrior is a mixture of the encoder's Gaussian posteriors at its pseudo-inputs, so "
                             "it needs a model given by encode= with an int latent; a posterior given as a draw has "
                             "no density at another point (use priors.custom for a prior of the model's own)")
        if context is not None:
            raise ValueError("the VampPrior's pseudo-inputs carry no context; a conditional model needs "
                             "'normal' or priors.custom(log_prob, sample) taking the context")


def _qualname(fn) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def standard_normal() -> StandardNormal:
    return StandardNormal()


def vamp(components: int = 500) -> VampPrior:
    """The VampPrior with ``components`` pseudo-inputs."""
    return VampPrior(components)


def get(prior) -> StandardNormal | VampPrior | Custom:
    """A prior object from itself, a name ("normal", "vamp") or ``to_dict()`` (a custom prior's functions are
    the model's code: it is passed as the object)."""
    if isinstance(prior, (StandardNormal, VampPrior, Custom)):
        return prior
    if prior in ("normal", {"name": "normal"}):
        return standard_normal()
    if prior == "vamp":
        return vamp()
    if isinstance(prior, dict) and prior.get("name") == "vamp" and set(prior) <= {"name", "components"}:
        return vamp(prior.get("components", 500))
    raise ValueError(f"prior must be 'normal', 'vamp' or an object from funcvae.priors (priors.custom(log_prob, "
                     f"sample) for one of the model's own), got {prior!r}")
