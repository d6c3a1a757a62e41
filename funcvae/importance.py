"""The importance-weighted bound (Burda, Grosse & Salakhutdinov 2016), streamed over chunks of samples.

For one example, with z_j ~ q(z | x) and log-weights log w_j = log p(x | z_j) + log p(z_j) - log q(z_j | x),

    IWAE_k(x) = log (1/k) sum_j w_j   (nats),   ELBO = E[IWAE_1] <= E[IWAE_k] <= E[IWAE_k+1] <= log p(x),

and IWAE_k -> log p(x) as k grows. The log-weight is written for ONE example and ONE sample and batched
with ``vmap`` (over samples, then over examples); chunks of samples are combined with a streaming
logsumexp, so memory grows with ``batch_size * chunk_size``, never with ``k``.

Noise layout: sample j of example i is row ``j % BLOCK`` of a (BLOCK, latent) standard normal draw from
the stream ``funcvae.rng.generator(seed, "iwae", i, j // BLOCK)``. Each sample therefore has fixed noise
whatever ``chunk_size``, ``batch_size`` or ``k``: the same seed gives the same bound up to float rounding
however the work is split, and IWAE_k and IWAE_k' (k < k') share their first k samples (common random
numbers). The noise of example i depends on its index i in ``x``, not on the other examples.
"""

from __future__ import annotations

import math
import torch
from torch import Tensor
from torch.func import vmap

from funcvae import objectives
from funcvae.context import examples_and_context
from funcvae.model import Params
from funcvae.rng import derive_seed, generator
from funcvae.checks import check_int
from funcvae._runtime.progress import bar

#: Samples per noise stream (see the module docstring); chunk sizes that are multiples of it draw each
#: block once, others redraw the blocks they straddle (same numbers, a little more work).
BLOCK = 128


def example_log_weights(params: Params, x: Tensor, eps: Tensor, c: Tensor | None = None) -> Tensor:
    """The log-weights log p(x | z_j) + log p(z_j) - log q(z_j | x) of ONE example: x (features,), eps
    (K, noise_size), c (K_context,) or None -> (K,) in nats. Work that depends on x alone (a Gaussian
    model's encoding, any posterior's bottom-up pass) is done once, not once per sample: under ``vmap`` over
    the samples it is unbatched."""
    d = objectives.draws(params, x, eps, c)
    return d.log_px_z - objectives.log_ratios(params, d, c)[0]


def batch_log_weights(params: Params, x: Tensor, eps: Tensor, c: Tensor | None = None) -> Tensor:
    """``example_log_weights`` over a batch: x (B, features), eps (B, K, noise_size), c (B, K_context) or None
    -> (B, K); pure, so it can be differentiated (``funcvae.objectives.iwae`` is the training objective built on
    the same maths)."""
    return vmap(example_log_weights, in_dims=(None, 0, 0, None if c is None else 0))(params, x, eps, c)


def noise(seed: int, rows: range, start: int, stop: int, latent: int, *, like: Tensor) -> Tensor:
    """Standard normal noise of samples ``start:stop`` for the examples ``rows``, laid out as the module
    docstring says: -> (len(rows), stop - start, latent) in ``like``'s dtype and device."""
    first, last = start // BLOCK, (stop - 1) // BLOCK
    out = []
    for i in rows:
        blocks = [torch.randn(BLOCK, latent, generator=generator(seed, "iwae", i, b, device=like.device),
                              device=like.device, dtype=like.dtype) for b in range(first, last + 1)]
        out.append(torch.cat(blocks)[start - first * BLOCK: stop - first * BLOCK])
    return torch.stack(out)


def iwae(params: Params, x, *, k: int = 5000, seed: int, chunk_size: int = 4 * BLOCK, batch_size: int = 16,
         scale: float | None = None, context=None, progress: bool | None = None) -> Tensor:
    """Per-example importance-weighted bound IWAE_k of ``x`` under ``params``.

    Args:
      params: from ``model.init``, ``funcvae.init`` or ``funcvae.fit``.
      x: examples as (N, F), (N, H, W) or (N, C, H, W); tensor, array, Dataset or DataLoader.
      k: importance samples per example (k = 1 is an unbiased ELBO estimate with a Monte Carlo KL).
      seed: names the noise; the same seed gives the same numbers whatever chunk_size and batch_size.
      chunk_size: samples per example evaluated at once.
      batch_size: examples evaluated at once; one step holds batch_size * chunk_size decoder outputs.
      scale: divide integer pixel data by this (e.g. 255).
      context: a conditional model's context: (N,) integer labels or (N, K) vectors (or the labels of a
        labelled dataset ``x``); the bound is then on log p(x | context).
      progress: a bar of the examples done, with an ETA (None: where stderr is a terminal).

    Returns:
      (N,) IWAE_k in nats per example: a lower bound on log p(x) (in expectation), >= the ELBO.

    Example:
      >>> bound = funcvae.iwae(params, x_test[:100], k=5000, seed=0)   # log p(x) >= bound.mean()
    """
    for name, value in (("k", k), ("chunk_size", chunk_size), ("batch_size", batch_size)):
        check_int(name, value)
    derive_seed(seed)  # a bad seed fails here, before any work
    x, c = examples_and_context(params, x, context, scale=scale, name="data")
    out = []
    with torch.no_grad(), bar(total=x.shape[0], desc=f"IWAE_{k}", progress=progress, unit="example") as shown:
        for a in range(0, x.shape[0], batch_size):
            out.append(_stream(params, x, c, range(a, min(a + batch_size, x.shape[0])), seed=seed, k=k,
                               chunk_size=chunk_size))
            shown.update(out[-1].shape[0])
    return torch.cat(out)


def _stream(params: Params, x: Tensor, c: Tensor | None, rows: range, *, seed: int, k: int,
            chunk_size: int) -> Tensor:
    """IWAE_k of the examples ``rows`` of validated (N, F) ``x`` (context ``c``), one chunk of samples at a
    time: (len(rows),)."""
    xb, cb = x[rows.start:rows.stop], None if c is None else c[rows.start:rows.stop]
    total = xb.new_full((len(rows),), -math.inf)  # running log sum_j w_j
    for start in range(0, k, chunk_size):
        eps = noise(seed, rows, start, min(start + chunk_size, k), params.model.noise_size, like=x)
        total = torch.logaddexp(total, torch.logsumexp(batch_log_weights(params, xb, eps, cb), dim=-1))
    return total - math.log(k)


def log_weights(params: Params, x, *, k: int, seed: int, scale: float | None = None, context=None) -> Tensor:
    """All log-weights behind ``iwae`` (the same noise for the same seed), for diagnostics such as the
    effective sample size; holds N * k numbers at once.

    Args:
      params, x, seed, scale, context: as for ``iwae``.
      k: samples per example.

    Returns:
      (N, k) log w in nats; ``logsumexp(., -1) - log k`` is ``iwae(params, x, k=k, seed=seed)``.
    """
    check_int("k", k)
    derive_seed(seed)
    x, c = examples_and_context(params, x, context, scale=scale, name="data")
    with torch.no_grad():
        eps = noise(seed, range(x.shape[0]), 0, k, params.model.noise_size, like=x)
        return batch_log_weights(params, x, eps, c)
