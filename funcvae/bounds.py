"""The evidence lower bound of a trained model on data, per example.

Terms, all in nats per example: ``recon = -E_q[log p(x | z)]`` (a mean over the k samples), ``kl`` =
KL(q(z | x) || p(z)) (in closed form where the prior has one, else the Monte Carlo estimate
log q(z | x) - log p(z) over the same samples), ``loss = recon + beta * kl`` (= -ELBO at beta = 1). The
maths for one example is ``funcvae.objectives.elbo``'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from funcvae import objectives
from funcvae.model import Params
from funcvae.context import examples_and_context
from funcvae.rng import generator
from funcvae.checks import check_int, check_nonnegative

TERMS = ("recon", "kl", "loss")


def elbo(params: Params, x, *, seed: int, k: int = 1, beta: float = 1.0, scale: float | None = None,
         chunk_size: int = 1024, context=None) -> dict[str, Tensor]:
    """Per-example ELBO terms of ``x`` under ``params``.

    Args:
      params: from ``model.init``, ``funcvae.init`` or ``funcvae.fit``.
      x: examples as (N, F), (N, H, W) or (N, C, H, W); tensor, array, Dataset or DataLoader.
      seed: names the noise draw; the same seed gives the same numbers.
      k: reparameterised samples per example averaged in ``recon`` (k > 1 lowers its variance, not its mean).
      beta: KL weight in ``loss``.
      scale: divide integer pixel data by this (e.g. 255).
      chunk_size: examples evaluated at once; bounds the network's memory and changes the numbers by
        float rounding only (the noise is the same).
      context: a conditional model's context, (N,) integer labels or (N, K) vectors (or the labels of a
        labelled dataset ``x``): the terms are then those of log p(x | context).

    Returns:
      ``{"recon", "kl", "loss"}``, each (N,) in nats per example; ``loss`` = -ELBO at beta = 1. A model whose
      densities come per latent group adds ``"kl_groups"``, (N, groups) in the order of ``model.groups``.
    """
    check_int("k", k)
    check_int("chunk_size", chunk_size)
    check_nonnegative("beta", beta)
    x, c = examples_and_context(params, x, context, scale=scale, name="data")
    return evaluate(params, x, generator(seed, "elbo", device=x.device), k=k, beta=beta, chunk_size=chunk_size, c=c)


def evaluate(params: Params, x: Tensor, gen: torch.Generator, *, k: int = 1, beta: float = 1.0,
             chunk_size: int = 1024, c: Tensor | None = None) -> dict[str, Tensor]:
    """``elbo`` on validated (N, F) data (context (N, K) or None) with noise from ``gen``, in chunks; no
    input checks."""
    # All noise is drawn first (N * k * noise_size numbers), so the chunking cannot change a single draw.
    eps = torch.randn(x.shape[0], k, params.model.noise_size, generator=gen, device=x.device, dtype=x.dtype)
    objective = objectives.elbo(beta, samples=k)
    numbers = objective.schedule({name: v.to(x.device) for name, v in objective.init().items()}, None, x.dtype)
    names = TERMS + (("kl_groups",) if objectives.kl_groups(params.model) else ())
    chunks = {name: [] for name in names}
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk_size):
            stop = start + chunk_size
            terms = objectives.batch_terms(params, x[start:stop], eps[start:stop], numbers, objective,
                                           None if c is None else c[start:stop])
            for name in names:
                chunks[name].append(terms[name])
    return {name: torch.cat(values) for name, values in chunks.items()}
