"""A top-down hierarchical VAE: the Ladder VAE (Sønderby et al. 2016), as pure functions of ONE example.

Latent groups z1 (next to x) ... zL (top), named ``"z1"``, ``"z2"``, ...; z, eps and the per-group log-densities
are dicts keyed by those names, in that order. The generative model is p(zL) = N(0, I),
p(z_i | z_{i+1}) = N(mu_p, var_p) from an MLP of z_{i+1}, and Bernoulli p(x | z1).

The posterior is the paper's: a bottom-up pass d_i = act(dense(d_{i-1})), d_0 = x, gives each group a Gaussian
N(mu_hat_i, var_hat_i); then, top down, q(zL | x) = N(mu_hat_L, var_hat_L) and q(z_i | z_{i+1}, x) is the
precision-weighted merge of N(mu_hat_i, var_hat_i) with the top-down prior N(mu_p, var_p):
1/var_q = 1/var_hat + 1/var_p, mu_q = (mu_hat/var_hat + mu_p/var_p) var_q. The merge is computed in log space,
logvar_q = -logaddexp(-logvar_hat, -logvar_p), so it is finite for every clamped pair of log-variances.

What differs from the paper: one dense layer per deterministic block (the paper's blocks are deeper MLPs);
variances are exp of a clamped log-variance head rather than a softplus; no batch normalisation, since every
function sees one example; the paper's KL warm-up and free bits belong to the trainer. Every head's
log-variance is clamped to ``LOGVAR_RANGE``; a merged one is not clamped again, and lies at most log 2 below
the smaller of its two (so exp() of it stays finite).

The structural sizes are keyword-only (``hidden``, ``latents``, ``activation``) so a model builder binds them
once with ``functools.partial`` and every function keeps the contract's positional arguments.
"""

from __future__ import annotations

import torch
from torch import Tensor

from funcvae import distributions as D
from funcvae import nn
from funcvae.model import LOGVAR_RANGE



def groups(latents: tuple[int, ...]) -> dict[str, int]:
    """{"z1": latents[0], ..., "zL": latents[L-1]}: the group names and sizes, bottom to top."""
    return {f"z{i + 1}": int(size) for i, size in enumerate(latents)}


def _head(generator: torch.Generator, n_in: int, width: int, latent: int) -> dict:
    return {"hidden": nn.dense_init(generator, n_in, width), "mean": nn.dense_init(generator, width, latent),
            "logvar": nn.dense_init(generator, width, latent)}


def init(generator: torch.Generator, features: int, hidden: tuple[int, ...], latents: tuple[int, ...],
         activation: str) -> dict:
    """Params of a Ladder VAE.

    Args:
      features: numbers in one flattened example.
      hidden: deterministic width of each stochastic layer, bottom to top (e.g. (512, 256)).
      latents: latent size of each group, bottom to top (e.g. (64, 32)); same length as ``hidden``.
      activation: a key of ``funcvae.nn.ACTIVATIONS`` (checked here; applied by the other functions).

    Returns:
      ``{"encoder": {"z1": ..., "zL": ...}, "top_down": {"z1": ..., "z{L-1}": ...}, "decoder": {...}}``. Each
      group's encoder entry is a block ``hidden`` on d_{i-1} and its ``mean``/``logvar`` heads; ``top_down``
      holds p(z_i | z_{i+1}) (absent for L = 1: an empty subtree would not survive a save); ``decoder`` is
      z1 -> hidden[0] -> features.
    """
    if len(hidden) != len(latents) or not latents:
        raise ValueError(f"hidden and latents need one size per stochastic layer, got {hidden} and {latents}")
    if activation not in nn.ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(nn.ACTIVATIONS)}, got {activation!r}")
    names = list(groups(latents))
    encoder, width = {}, features
    for name, h, z in zip(names, hidden, latents):
        encoder[name] = _head(generator, width, h, z)
        width = h
    tree = {"encoder": encoder}
    top_down = {names[i]: _head(generator, latents[i + 1], hidden[i], latents[i]) for i in range(len(names) - 1)}
    if top_down:
        tree["top_down"] = top_down
    tree["decoder"] = {"hidden": nn.dense_init(generator, latents[0], hidden[0]),
                       "out": nn.dense_init(generator, hidden[0], features)}
    return tree


def _gaussian(head: dict, d: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, logvar) of a head's Gaussian from its input features d; logvar clamped."""
    return nn.dense(head["mean"], d), torch.clamp(nn.dense(head["logvar"], d), *LOGVAR_RANGE)


def _top_down(tree: dict, name: str, z_above: Tensor, act) -> tuple[Tensor, Tensor]:
    """(mean, logvar) of p(z_name | z_above)."""
    head = tree["top_down"][name]
    return _gaussian(head, act(nn.dense(head["hidden"], z_above)))


def bottom_up(tree: dict, x: Tensor, *, hidden, latents, activation) -> dict[str, tuple[Tensor, Tensor]]:
    """{"z1": (mu_hat, logvar_hat), ...}: the bottom-up Gaussians, each (latent_i,), from x (features,)."""
    act, d, out = nn.ACTIVATIONS[activation], x, {}
    for name in groups(latents):
        head = tree["encoder"][name]
        d = act(nn.dense(head["hidden"], d))
        out[name] = _gaussian(head, d)
    return out


def merge(mean_hat: Tensor, logvar_hat: Tensor, mean_p: Tensor, logvar_p: Tensor) -> tuple[Tensor, Tensor]:
    """The precision-weighted product of N(mean_hat, exp(logvar_hat)) and N(mean_p, exp(logvar_p)).

    Returns:
      (mean_q, logvar_q): 1/var_q = 1/var_hat + 1/var_p and mean_q the precision-weighted mean, elementwise.
    """
    logvar_q = -torch.logaddexp(-logvar_hat, -logvar_p)
    # The weights var_q / var_hat and var_q / var_p lie in (0, 1] and sum to 1: no 1/var is ever formed.
    return mean_hat * torch.exp(logvar_q - logvar_hat) + mean_p * torch.exp(logvar_q - logvar_p), logvar_q


def posterior(tree: dict, x: Tensor, eps: dict, *, hidden, latents, activation) -> tuple[dict, dict]:
    """One reparameterised draw of q(z | x), top down, and its log-density per group.

    Args:
      x: (features,) one flattened example.
      eps: {"z1": (latents[0],), ...} standard-normal noise.

    Returns:
      z {"z1": (latents[0],), ...} and log_q {"z1": 0-d, ...} in nats: log q(zL | x) for the top group,
      log q(z_i | z_{i+1}, x) below it; their sum is log q(z | x).
    """
    act, names = nn.ACTIVATIONS[activation], list(groups(latents))
    up = bottom_up(tree, x, hidden=hidden, latents=latents, activation=activation)
    z, log_q = {}, {}
    for i in reversed(range(len(names))):
        name = names[i]
        mean, logvar = up[name]
        if i < len(names) - 1:
            mean, logvar = merge(mean, logvar, *_top_down(tree, name, z[names[i + 1]], act))
        z[name] = D.reparameterize(mean, logvar, eps[name])
        log_q[name] = D.gaussian_log_prob(mean, logvar, z[name]).sum()
    return {n: z[n] for n in names}, {n: log_q[n] for n in names}


def log_prior(tree: dict, z: dict, *, hidden, latents, activation) -> dict:
    """{"z1": log p(z1 | z2), ..., "zL": log N(zL; 0, I)}, each 0-d nats; their sum is log p(z)."""
    act, names = nn.ACTIVATIONS[activation], list(groups(latents))
    out = {}
    for i, name in enumerate(names):
        if i == len(names) - 1:
            out[name] = D.standard_normal_log_prob(z[name]).sum()
        else:
            mean, logvar = _top_down(tree, name, z[names[i + 1]], act)
            out[name] = D.gaussian_log_prob(mean, logvar, z[name]).sum()
    return out


def sample_prior(tree: dict, eps: dict, *, hidden, latents, activation) -> dict:
    """An ancestral draw of p(z): zL = eps["zL"], then z_i = mu_p + exp(logvar_p / 2) eps["z_i"] downwards."""
    act, names = nn.ACTIVATIONS[activation], list(groups(latents))
    z = {names[-1]: eps[names[-1]]}
    for i in reversed(range(len(names) - 1)):
        mean, logvar = _top_down(tree, names[i], z[names[i + 1]], act)
        z[names[i]] = D.reparameterize(mean, logvar, eps[names[i]])
    return {n: z[n] for n in names}


def decode(tree: dict, z: dict, *, hidden, latents, activation) -> Tensor:
    """Bernoulli logits (features,) of p(x | z1); only z["z1"] is read."""
    dec = tree["decoder"]
    return nn.dense(dec["out"], nn.ACTIVATIONS[activation](nn.dense(dec["hidden"], z["z1"])))
