"""Priors p(z) as small pure objects: log-density, sampling, and the KL to a diagonal Gaussian posterior
where a closed form exists.

- ``standard_normal()``: N(0, I); KL in closed form, per latent dimension.
- ``vamp(k)``: the VampPrior (Tomczak & Welling 2018), p(z) = (1/K) sum_k q(z | u_k), a mixture of the
  encoder's posteriors at K learned pseudo-inputs u_k. It has no closed-form KL (objectives use a Monte
  Carlo KL) and does not factorise over latent dimensions, so there is no per-dimension KL.

A prior with parameters of its own (the pseudo-inputs) keeps them in the params tree under ``"prior"``;
its functions take that tree and the model, since the VampPrior runs the model's encoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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

    def log_prob(self, tree: dict, model, z: Tensor) -> Tensor:
        """(..., latent) -> (...) nats."""
        return D.standard_normal_log_prob(z).sum(-1)

    def kl_dims(self, tree: dict, model, mean: Tensor, logvar: Tensor) -> Tensor:
        """KL(N(mean, exp(logvar)) || N(0, I)) of each latent dimension: (..., latent) -> (..., latent)."""
        return D.kl_standard_normal(mean.unsqueeze(-1), logvar.unsqueeze(-1))

    def sample(self, tree: dict, model, n: int, generator: torch.Generator, like: Tensor) -> Tensor:
        return torch.randn(n, model.latent, generator=generator, dtype=like.dtype, device=like.device)

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

    def log_prob(self, tree: dict, model, z: Tensor) -> Tensor:
        """(latent,) -> 0-d nats: logsumexp over the K components minus log K."""
        mean, logvar = self.components_of(tree, model)
        return torch.logsumexp(D.gaussian_log_prob(mean, logvar, z).sum(-1), dim=-1) - math.log(self.components)

    def kl_dims(self, tree: dict, model, mean: Tensor, logvar: Tensor) -> None:
        return None  # a mixture has no closed-form KL and does not split over latent dimensions

    def sample(self, tree: dict, model, n: int, generator: torch.Generator, like: Tensor) -> Tensor:
        mean, logvar = self.components_of(tree, model)
        pick = torch.randint(self.components, (n,), generator=generator, device=like.device)
        eps = torch.randn(n, model.latent, generator=generator, dtype=like.dtype, device=like.device)
        return D.reparameterize(mean[pick], logvar[pick], eps)

    def to_dict(self) -> dict:
        return {"name": self.name, "components": self.components}


def standard_normal() -> StandardNormal:
    return StandardNormal()


def vamp(components: int = 500) -> VampPrior:
    """The VampPrior with ``components`` pseudo-inputs."""
    return VampPrior(components)


def get(prior) -> StandardNormal | VampPrior:
    """A prior object from itself, a name ("normal", "vamp") or ``to_dict()``."""
    if isinstance(prior, (StandardNormal, VampPrior)):
        return prior
    if prior in ("normal", {"name": "normal"}):
        return standard_normal()
    if prior == "vamp":
        return vamp()
    if isinstance(prior, dict) and prior.get("name") == "vamp" and set(prior) <= {"name", "components"}:
        return vamp(prior.get("components", 500))
    raise ValueError(f"prior must be 'normal', 'vamp' or an object from funcvae.priors, got {prior!r}")
