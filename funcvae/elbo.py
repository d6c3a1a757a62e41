"""The evidence lower bound, written for one example and batched with ``torch.func.vmap``.

Terms, all in nats per example: ``recon = -E_q[log p(x | z)]`` (a mean over the K samples in ``eps``),
``kl = KL(q(z | x) || N(0, I))`` in closed form, ``loss = recon + beta * kl`` (= -ELBO at beta = 1).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from funcvae import distributions as D
from funcvae.model import ModelSpec, Params, check_params, decode_one, encode_one, obs_logvar, with_matmul_dtype
from funcvae.rng import generator
from funcvae.validate import as_examples, check_int, check_nonnegative

TERMS = ("recon", "kl", "loss")


def log_likelihood(spec: ModelSpec, tree: dict, out: Tensor, x: Tensor) -> Tensor:
    """log p(x | z) summed over features, from the decoder output ``out``: (..., F) -> (...)."""
    if spec.likelihood == "bernoulli":
        return D.bernoulli_log_prob(out, x).sum(-1)
    return D.gaussian_log_prob(out, obs_logvar(spec, tree, out), x).sum(-1)


def example_terms(spec: ModelSpec, tree: dict, x: Tensor, eps: Tensor, beta: Tensor | float) -> dict:
    """The bound's terms for ONE example.

    Args:
      spec, tree: the model (``Params.spec``, ``Params.tree``).
      x: (features,) one flattened example.
      eps: (K, latent) standard normal noise; recon averages the K reparameterised samples.
      beta: weight of the KL term in ``loss``.

    Returns:
      ``{"recon", "kl", "loss"}``, 0-d tensors in nats, and ``"kl_dims"`` (latent,), the KL of each latent
      dimension (summing to ``kl``).
    """
    mean, logvar = encode_one(spec, tree, x)
    z = D.reparameterize(mean, logvar, eps)
    out = vmap(partial(decode_one, spec, tree))(z)
    recon = -log_likelihood(spec, tree, out, x).mean()
    kl_dims = D.kl_standard_normal(mean.unsqueeze(-1), logvar.unsqueeze(-1))
    kl = kl_dims.sum()
    return {"recon": recon, "kl": kl, "loss": recon + beta * kl, "kl_dims": kl_dims}


def batch_terms(spec: ModelSpec, tree: dict, x: Tensor, eps: Tensor, beta: Tensor | float) -> dict:
    """``example_terms`` over a batch: x (B, features), eps (B, K, latent) -> terms of shape (B,)."""
    return vmap(partial(example_terms, spec), in_dims=(None, 0, 0, None))(tree, x, eps, beta)


def objective(tree: dict, spec: ModelSpec, x: Tensor, eps: Tensor, beta: Tensor | float,
              weights: Tensor | None = None, count: Tensor | None = None, free_bits: float = 0.0,
              matmul_dtype: torch.dtype | None = None):
    """Mean loss over the batch (what gradients follow) and, as aux, the batch SUMS of each term.

    ``weights`` (B,) of 0s and 1s marks padding rows (0) that must not count: a short last batch is padded
    to the full size so that a compiled step keeps one static shape. The mean divides by ``count``, the
    real rows of the whole batch (default: ``weights.sum()``); a data-parallel shard passes the global count,
    so that the shards' gradients sum to the batch gradient.

    ``free_bits`` > 0 (Kingma et al. 2016) optimises ``recon + beta * sum_d max(free_bits, KL_d)`` with KL_d
    the batch-mean KL of latent dimension d: below the floor a dimension's KL exerts no pull towards the
    prior, so the encoder can start using it. The reported sums are the true terms.

    ``matmul_dtype`` (e.g. ``torch.bfloat16``): run the layers' matrix products in it (see
    ``model.with_matmul_dtype``); the terms, their sums and the gradients stay in the params' dtype.
    """
    terms = batch_terms(spec, with_matmul_dtype(tree, matmul_dtype), x, eps, beta)
    w = torch.ones_like(terms["recon"]) if weights is None else weights
    n = w.sum() if count is None else count
    sums = {k: (terms[k] * w).sum() for k in TERMS}
    if not free_bits:
        return sums["loss"] / n, sums
    kl_dims = (terms["kl_dims"] * w.unsqueeze(-1)).sum(0) / n
    return sums["recon"] / n + beta * torch.clamp(kl_dims, min=free_bits).sum(), sums


#: ``(grads, (mean_loss, sums)) = loss_and_grad(tree, spec, x, eps, beta, weights=None, count=None,
#: free_bits=0.0, matmul_dtype=None)``:
#: gradients w.r.t. ``tree``.
loss_and_grad = grad_and_value(objective, has_aux=True)


def elbo(params: Params, x, *, seed: int, k: int = 1, beta: float = 1.0, scale: float | None = None,
         chunk_size: int = 1024) -> dict[str, Tensor]:
    """Per-example ELBO terms of ``x`` under ``params``.

    Args:
      params: from ``funcvae.init`` or ``funcvae.fit``.
      x: examples as (N, F), (N, H, W) or (N, C, H, W); tensor, array, Dataset or DataLoader.
      seed: names the noise draw; the same seed gives the same numbers.
      k: reparameterised samples per example averaged in ``recon`` (k > 1 lowers its variance, not its mean).
      beta: KL weight in ``loss``.
      scale: divide integer pixel data by this (e.g. 255).
      chunk_size: examples evaluated at once; bounds the network's memory and changes the numbers by
        float rounding only (the noise is the same).

    Returns:
      ``{"recon", "kl", "loss"}``, each (N,) in nats per example; ``loss`` = -ELBO at beta = 1.
    """
    check_params(params)
    check_int("k", k)
    check_int("chunk_size", chunk_size)
    check_nonnegative("beta", beta)
    x = as_examples(x, params.spec, scale=scale, like=_some_leaf(params))
    return evaluate(params.spec, params.tree, x, generator(seed, "elbo", device=x.device), k=k, beta=beta,
                    chunk_size=chunk_size)


def evaluate(spec: ModelSpec, tree: dict, x: Tensor, gen: torch.Generator, *, k: int = 1, beta: float = 1.0,
             chunk_size: int = 1024) -> dict[str, Tensor]:
    """``elbo`` on validated (N, F) data with noise from ``gen``, in chunks; no input checks."""
    # All noise is drawn first (N * k * latent numbers), so the chunking cannot change a single draw.
    eps = torch.randn(x.shape[0], k, spec.latent, generator=gen, device=x.device, dtype=x.dtype)
    chunks = {name: [] for name in TERMS}
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk_size):
            stop = start + chunk_size
            terms = batch_terms(spec, tree, x[start:stop], eps[start:stop], beta)
            for name in TERMS:
                chunks[name].append(terms[name])
    return {name: torch.cat(values) for name, values in chunks.items()}


def _some_leaf(params: Params) -> Tensor:
    return params.tree["encoder"]["mean"]["kernel"]
