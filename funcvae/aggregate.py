"""Minibatch estimates about the aggregate posterior q(z) = (1/N) sum_n q(z | x_n) of a training set of N
examples, from the M real rows of a batch (padding rows, weighted 0, are not members of it):

- ``log_weights``: how much each row's posterior counts in the estimate of q at another row's draw, by
  minibatch-weighted sampling (MWS) or minibatch-stratified sampling (MSS) (Chen et al. 2018, appendix C);
- ``log_aggregate``: with those weights, log q(z_i) and log prod_d q(z_id) at each row's draw;
- ``mmd2``: the squared maximum mean discrepancy between draws of q(z) and of p(z) (Gretton et al. 2012),
  unbiased, with one of ``KERNELS``.

Pure tensor functions of one batch, all in nats; no branch on a value, so ``vmap`` takes them over a stack.
"""

from __future__ import annotations

import torch
from torch import Tensor

from funcvae import distributions as D

#: ``kernel``'s kernels: "gaussian", InfoVAE's (Zhao et al. 2017), and "imq", WAE's (Tolstikhin et al. 2018).
KERNELS = ("gaussian", "imq")


def log_weights(weights: Tensor, dataset_size: Tensor, stratified: bool = False) -> Tensor:
    """(B, B) log-weights: row i's estimate of q(z_i) is sum_j exp(w_ij) q(z_i | x_j).

    MWS: every real row 1/(N·M), as the paper writes it (row i's weights sum to 1/N). MSS: row i itself 1/N,
    one other real row (the next, cyclically) (N - M + 1)/(N·(M - 1)) and the M - 2 others 1/(M - 1): an
    unbiased estimate of q(z_i) whose weights sum to 1. With one real row MSS is MWS (1/N). Padding columns
    are -inf; padding rows are left finite.

    Args:
      weights: (B,) 1 for real rows and 0 for padding.
      dataset_size: 0-d, N in ``weights``' dtype.
      stratified: MSS instead of MWS.
    """
    real = weights > 0
    m = real.sum()
    log_n = torch.log(dataset_size)
    if not stratified:
        log_w = (-log_n - torch.log(m.to(weights.dtype))).expand(weights.shape[0], weights.shape[0])
    else:
        others = (m - 1).to(weights.dtype)
        k = others.clamp(min=1)
        rank = torch.cumsum(real.to(torch.int64), 0) - 1
        stratum = rank.unsqueeze(0) == ((rank + 1) % m.clamp(min=1)).unsqueeze(1)  # [i, j]: j is i's other stratum
        # A training set smaller than the batch has no room for the other stratum: its weight is 0.
        log_stratum = torch.log((dataset_size - others).clamp(min=0)) - log_n - torch.log(k)
        log_w = torch.where(stratum, log_stratum, -torch.log(k))
        eye = torch.eye(weights.shape[0], dtype=torch.bool, device=weights.device)
        log_w = torch.where(eye, -log_n, log_w)
    return torch.where(real.unsqueeze(0), log_w, torch.full_like(log_w, -torch.inf))


def log_aggregate(z: Tensor, mean: Tensor, logvar: Tensor, log_w: Tensor) -> tuple[Tensor, Tensor]:
    """log q(z_i) and sum_d log q(z_id), each (B,), at each row's draw z (B, D), from the rows' diagonal
    Gaussian posteriors (mean, logvar), (B, D) each, weighted by ``log_weights``' (B, B)."""
    pairs = D.gaussian_log_prob(mean.unsqueeze(0), logvar.unsqueeze(0), z.unsqueeze(1))  # [i, j, d]: log q(z_id | x_j)
    log_qz = torch.logsumexp(log_w + pairs.sum(-1), dim=1)
    log_dims = torch.logsumexp(log_w.unsqueeze(-1) + pairs, dim=1).sum(-1)
    return log_qz, log_dims


def kernel(a: Tensor, b: Tensor, name: str = "gaussian") -> Tensor:
    """(A, B) kernel values between the rows of a (A, D) and b (B, D). "gaussian": exp(-|a - b|² / D²), the
    RBF exp(-|a - b|² / (2σ²)) with 2σ² = D², as InfoVAE's released code writes it (the mean squared difference
    over the D dimensions, divided by D). "imq": C / (C + |a - b|²) with C = 2D, WAE's inverse multiquadratic
    for a N(0, I) prior (C = 2·D·σ², σ² = 1)."""
    d = a.shape[-1]
    square = ((a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2).sum(-1)
    if name == "imq":
        return 2 * d / (2 * d + square)
    return torch.exp(-square / d**2)


def mmd2(q: Tensor, p: Tensor, weights: Tensor, name: str = "gaussian") -> Tensor:
    """0-d: the unbiased estimate of MMD²(q, p) from the real rows of q (B, D) and p (B, D) (``weights`` (B,)
    1 or 0): the means of k over distinct pairs within q and within p, less twice its mean over all pairs
    across. Its expectation is 0 when q and p are draws of one distribution. One real row has no pair: 0."""
    real = (weights > 0).to(q.dtype)
    m = real.sum()
    both = real.unsqueeze(0) * real.unsqueeze(1)
    distinct = both * (1 - torch.eye(q.shape[0], dtype=q.dtype, device=q.device))
    within = ((kernel(q, q, name) + kernel(p, p, name)) * distinct).sum() / (m * (m - 1)).clamp(min=1)
    estimate = within - 2 * (kernel(q, p, name) * both).sum() / (m * m)
    return torch.where(m > 1, estimate, torch.zeros_like(estimate))
