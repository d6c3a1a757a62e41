"""An exact linear-Gaussian VAE: a model whose log p(x), posterior and expected ELBO are known in closed form.

    p(z) = N(0, I_d),   p(x | z) = N(W z + b, sigma^2 I_D),   so   p(x) = N(b, W W^T + sigma^2 I_D)

and the posterior is p(z | x) = N(M^-1 W^T (x - b), sigma^2 M^-1) with M = W^T W + sigma^2 I_d. When W's
columns are orthogonal, M is diagonal and the exact posterior is a diagonal Gaussian whose mean is linear
in x: a funcvae MLP with no hidden layer represents it exactly (``exact_params``). Estimators (ELBO, IWAE,
gradients, diagnostics) can then be checked against exact numbers. Everything here is float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import vmap

from funcvae import distributions as D
from funcvae import models
from funcvae.model import Params
from funcvae.contract import check_params
from funcvae.rng import generator
from funcvae.checks import check_int, check_positive


class LinearGaussian(NamedTuple):
    """The decoder of a linear-Gaussian model: W (D, d), b (D,), sigma (the observation std)."""

    W: Tensor
    b: Tensor
    sigma: float


def linear_gaussian(seed: int, *, features: int, latent: int, sigma: float,
                    norms: Tensor | list[float] | None = None) -> LinearGaussian:
    """A random linear-Gaussian decoder whose W has orthogonal columns (so the exact posterior is diagonal).

    Args:
      seed: names the draw.
      features: D, the data dimension (>= latent).
      latent: d.
      sigma: observation std (> 0).
      norms: (d,) the column norms of W; default: drawn uniformly in [0.25, 2.5], so the latent dims carry
        different amounts of information (a zero norm makes a dimension carry none).

    Returns:
      ``LinearGaussian(W, b, sigma)`` in float64; b ~ N(0, 1).
    """
    check_int("latent", latent)
    check_int("features", features, minimum=latent)
    check_positive("sigma", sigma)
    gen = generator(seed, "oracle")
    q, _ = torch.linalg.qr(torch.randn(features, latent, generator=gen, dtype=torch.float64))
    if norms is None:
        norms = 0.25 + 2.25 * torch.rand(latent, generator=gen, dtype=torch.float64)
    norms = torch.as_tensor(norms, dtype=torch.float64)
    if norms.shape != (latent,) or bool((norms < 0).any()):
        raise ValueError(f"norms must be {latent} non-negative numbers, got {norms.tolist()}")
    b = torch.randn(features, generator=gen, dtype=torch.float64)
    return LinearGaussian(q * norms, b, float(sigma))


def sample(W: Tensor, b: Tensor, sigma: float, n: int, *, seed: int) -> Tensor:
    """n draws x = W z + b + sigma * noise from the model: -> (n, D) float64."""
    gen = generator(seed, "oracle-sample")
    z = torch.randn(n, W.shape[1], generator=gen, dtype=W.dtype)
    return z @ W.T + b + sigma * torch.randn(n, W.shape[0], generator=gen, dtype=W.dtype)


def log_marginal(W: Tensor, b: Tensor, sigma: float, x: Tensor) -> Tensor:
    """The exact log p(x) = log N(x; b, W W^T + sigma^2 I), through a Cholesky factor, in float64.

    Args:
      W: (D, d) any decoder kernel (orthogonal columns not needed).
      b: (D,) decoder bias.
      sigma: observation std.
      x: (N, D) examples.

    Returns:
      (N,) log p(x) in nats per example, float64.
    """
    W, b, x = W.to(torch.float64), b.to(torch.float64), x.to(torch.float64)
    cov = W @ W.T + sigma**2 * torch.eye(W.shape[0], dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    white = torch.linalg.solve_triangular(chol, (x - b).T, upper=False)  # L^-1 (x - b), (D, N)
    log_det = 2.0 * torch.log(torch.diagonal(chol)).sum()
    return -0.5 * (W.shape[0] * D.LOG_2PI + log_det + (white**2).sum(0))


def exact_encoder(W: Tensor, b: Tensor, sigma: float) -> dict:
    """The encoder subtree (``mean``, ``logvar`` dense heads) that outputs the exact posterior p(z | x).

    Mean kernel M^-1 W^T, mean bias -M^-1 W^T b, logvar kernel 0, logvar bias log diag(sigma^2 M^-1),
    with M = W^T W + sigma^2 I diagonal. Raises ValueError when W's columns are not orthogonal (the
    posterior would then have a full covariance, which a diagonal encoder cannot represent).
    """
    gram = W.T @ W
    off = gram - torch.diag(torch.diagonal(gram))
    if float(off.abs().max()) > 1e-9 * (float(gram.abs().max()) + sigma**2):
        raise ValueError("W's columns must be orthogonal for the exact posterior to be diagonal")
    m = torch.diagonal(gram) + sigma**2  # (d,)
    kernel = W.T / m[:, None]
    return {"mean": {"kernel": kernel, "bias": -(kernel @ b)},
            "logvar": {"kernel": torch.zeros_like(kernel), "bias": torch.log(sigma**2 / m)}}


def vae_params(W: Tensor, b: Tensor, sigma: float, encoder: dict) -> Params:
    """A funcvae ``Params`` (MLP, no hidden layer, Gaussian likelihood with obs_std = sigma, inputs shaped
    (1, 1, D)) whose decoder is exactly W, b and whose encoder is ``encoder`` (dense ``mean``/``logvar``)."""
    features, latent = W.shape
    model = models.mlp(input_shape=(1, 1, features), hidden=(), latent=latent, likelihood="gaussian",
                       obs_std=float(sigma))
    params = Params(model, {"encoder": encoder, "decoder": {"out": {"kernel": W, "bias": b}}})
    check_params(params)
    return params


def exact_params(W: Tensor, b: Tensor, sigma: float) -> Params:
    """``vae_params`` with the exact-posterior encoder: then ELBO = IWAE_k = log p(x) for every sample."""
    return vae_params(W, b, sigma, exact_encoder(W, b, sigma))


def perturbed_params(W: Tensor, b: Tensor, sigma: float, *, seed: int, shift: float = 0.5,
                     widen: float = 0.5) -> Params:
    """A deliberately wrong encoder: the exact posterior with its mean moved by ``shift`` posterior standard
    deviations times N(0, 1) draws (one per latent dim) and its log-variance raised by ``widen``.

    ``widen >= 0`` keeps q(z | x) wider than p(z | x) in every dimension, so the importance weights
    p(z | x) / q(z | x) are bounded and IWAE_k converges to log p(x) at the 1/k rate.
    """
    enc = exact_encoder(W, b, sigma)
    sd = torch.exp(0.5 * enc["logvar"]["bias"])
    moves = torch.randn(sd.shape, generator=generator(seed, "oracle-perturb"), dtype=sd.dtype)
    enc["mean"]["bias"] = enc["mean"]["bias"] + shift * sd * moves
    enc["logvar"]["bias"] = enc["logvar"]["bias"] + widen
    return vae_params(W, b, sigma, enc)


def expected_elbo_one(params: Params, x: Tensor) -> Tensor:
    """E_q[log p(x | z)] - KL(q || p) in closed form for ONE example of a linear-Gaussian model (any
    encoder; decoder ``out`` dense with fixed obs_std): x (D,) -> 0-d, differentiable in ``tree``."""
    tree = params.tree
    mean, logvar = params.model.encode_one(tree, x)
    W, b = tree["decoder"]["out"]["kernel"], tree["decoder"]["out"]["bias"]
    var = params.model.spec.obs_std**2
    resid = x - b - W @ mean
    spread = (W**2 * torch.exp(logvar)).sum()  # E|W (z - mean)|^2 = tr(W diag(s^2) W^T)
    expected_ll = -0.5 * (x.shape[0] * math.log(2 * math.pi * var) + (resid @ resid + spread) / var)
    return expected_ll - D.kl_standard_normal(mean, logvar)


def expected_elbo(params: Params, x: Tensor) -> Tensor:
    """The exact expected ELBO (no Monte Carlo) of a linear-Gaussian ``params`` (from ``vae_params``):
    x (N, D) -> (N,) nats per example. log p(x) minus it is KL(q(z | x) || p(z | x)) >= 0."""
    spec = params.model.spec
    if not (spec is not None and spec.arch == "mlp" and spec.hidden == () and spec.likelihood == "gaussian"
            and spec.obs_std and spec.prior == "normal"):
        raise ValueError(f"expected_elbo needs a linear-Gaussian model (see vae_params), got {params.model}")
    x = x.reshape(x.shape[0], -1).to(params.tree["decoder"]["out"]["kernel"].dtype)
    return vmap(expected_elbo_one, in_dims=(None, 0))(params, x)
