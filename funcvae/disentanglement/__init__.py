"""Disentanglement: how well a representation's dimensions line up with a data set's known generative factors.

Five scores, computed as disentanglement_lib (Locatello et al. 2019) computes them, with the settings of its
unsupervised study as defaults: MIG, SAP and DCI are pure functions of ``codes`` (N, D) and ``factors`` (N, K);
the FactorVAE and beta-VAE scores draw batches of images with one factor held fixed, so they take a function
that represents images, the images and their factors. ``codes`` is a funcvae model's representation (posterior
means by default) and ``scores`` every score of a model at once. Each kind of score has its module:
``information`` (MIG), ``predictors`` (SAP, DCI), ``interventions`` (FactorVAE, beta-VAE); all are here.

Factors are integer indices, (N, K) (a tensor, an array, or a dict of (N,) columns keyed by the factors' names,
as ``funcvae.synthetic.shapes`` returns them), one row per image; their rows are the draws of a product grid,
every factor independent of the others. Every number is float64; mutual information and entropy are in nats.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.func import vmap

from funcvae.checks import check_int, check_scale
from funcvae.codec import encode
from funcvae.context import examples_and_context
from funcvae.contract import check_params
from funcvae.disentanglement._tables import _json, _length, _take, factor_table
from funcvae.disentanglement.information import entropy, mig, most_informative, mutual_information, plugin_bias
from funcvae.disentanglement.interventions import REPRESENT_CHUNK, beta_vae_score, factor_vae_score
from funcvae.disentanglement.predictors import dci, sap
from funcvae.model import Params, some_leaf
from funcvae.rng import derive_seed, generator

__all__ = ["REPRESENT_CHUNK", "beta_vae_score", "codes", "dci", "entropy", "factor_table", "factor_vae_score", "mig",
           "most_informative", "mutual_information", "plugin_bias", "sap", "scores"]


def codes(params: Params, images, *, kind: str = "mean", seed: int = 0, scale: float | None = None,
          context=None, chunk_size: int = 1024) -> Tensor:
    """A model's representation of images: one code per image, (N, D) float64 on the CPU.

    The codes are posterior MEANS by default, as in the literature's scores (a trained beta-VAE's MIG of about
    0.5 on dSprites, Chen et al. 2018, Locatello et al. 2019). ``kind="sample"`` draws one z ~ q(z | x) per image
    instead: the posterior's noise then hides what the means hold, and a score of samples (worse still, of samples
    against the wrong factors) can come out near 0 for a well disentangled model.

    Args:
      params: one model.
      images: (N, F), (N, H, W) or (N, C, H, W), a tensor or an array (a memory map is read chunk by chunk).
      kind: "mean" (``funcvae.encode``'s mean: exact for a model given by ``encode``; for a posterior given as a
        draw, a Monte Carlo mean of ``codec.MOMENT_SAMPLES`` draws named by ``seed`` and the chunk's index), or
        "sample" (one draw per image named by ``seed``).
      seed: names the draws (unused by the means of a model given by ``encode``).
      scale: divide integer pixels by this (255 for 8-bit images).
      context: a conditional model's context of ``images``.
      chunk_size: images encoded at once: memory, not results (but for float rounding, and Monte Carlo means).

    Returns:
      (N, D) float64: D is the model's ``noise_size``; a hierarchical model's latent groups stand side by side,
      flattened in ``model.groups``' order (the README's ladder: z1's 32 dimensions, then z2's 8).

    Each chunk is validated (as ``funcvae.encode`` does) before it is encoded.
    """
    check_params(params)
    if kind not in ("mean", "sample"):
        raise ValueError(f"kind must be 'mean' (posterior means) or 'sample' (one posterior draw), got {kind!r}")
    derive_seed(seed)
    chunk_size, scale = check_int("chunk_size", chunk_size), check_scale(scale)
    n = _length(images, "images")
    model, like = params.model, some_leaf(params)
    eps = None
    if kind == "sample":
        eps = torch.randn(n, model.noise_size, generator=generator(seed, "codes", "sample", device=like.device),
                          dtype=like.dtype, device=like.device)
    out = []
    for i, start in enumerate(range(0, n, chunk_size)):
        part = slice(start, start + chunk_size)
        x, c = examples_and_context(params, images[part], None if context is None else context[part], scale=scale,
                                    name="images")
        with torch.no_grad():
            if kind == "mean":
                z, _ = encode(params, x, context=c, seed=derive_seed(seed, "codes", "mean", i))
            else:
                z = vmap(lambda xi, ei, ci: model.join(model.draw(params.tree, xi, ei, ci)[0]),
                         in_dims=(0, 0, None if c is None else 0))(x, eps[part], c)
        out.append(z.detach().to(device="cpu", dtype=torch.float64))
    return torch.cat(out)


def scores(params: Params, images, factors, *, seed: int = 0, n: int = 10000, kind: str = "mean",
           scale: float | None = None, bins: int = 20, batch_size: int = 64, train: int = 10000, eval: int = 5000,
           variance_estimate: int = 10000, prune: float = 0.05, chunk_size: int = 1024,
           names: Sequence[str] | None = None) -> dict:
    """Every score of a model on a factor data set, as JSON values.

    MIG, SAP and DCI score the ``codes`` of ``n`` random rows of the data set (distinct, in random order; SAP and
    DCI train on the first two thirds of them); the FactorVAE and beta-VAE scores represent the images they
    draw with the same ``codes``. disentanglement_lib draws 10,000 points for MIG and 10,000 + 5,000 for SAP and
    DCI; smaller settings suit a test or a CPU.

    Args:
      params: one unconditional model; images: (N, ...) a tensor or array; factors: their (N, K) integers.
      seed: names the rows, the draws and the classifiers' states.
      n: rows behind MIG, SAP and DCI, at most N.
      kind, scale, chunk_size: as ``codes``.
      bins: as ``mig``; batch_size, train, eval, variance_estimate, prune: as ``factor_vae_score`` (the first
        three as ``beta_vae_score`` too).
      names: the factors' names.

    Returns:
      ``{"n", "kind", "factors", "mig", "sap", "dci", "factor_vae", "beta_vae"}``: each score's dict, arrays as
      lists.
    """
    check_params(params)
    y, names = factor_table(factors, names, rows=_length(images, "images"), factor_count=2)
    n = check_int("n", n, minimum=3)
    if n > len(y):
        raise ValueError(f"n={n} rows asked for, but the data set has {len(y)}")
    represent = lambda x: codes(params, x, kind=kind, seed=seed, scale=scale, chunk_size=chunk_size)  # noqa: E731
    rows = torch.randperm(len(y), generator=generator(seed, "disentanglement", "rows"))[:n].numpy()
    z, y_n = represent(_take(images, rows)), y[rows]
    out = {"n": n, "kind": kind, "factors": list(names), "mig": mig(z, y_n, bins=bins, names=names),
           "sap": sap(z, y_n, names=names), "dci": dci(z, y_n, seed=seed, names=names),
           "factor_vae": factor_vae_score(represent, images, y, seed=seed, batch_size=batch_size, train=train,
                                          eval=eval, variance_estimate=variance_estimate, prune=prune, names=names),
           "beta_vae": beta_vae_score(represent, images, y, seed=seed, batch_size=batch_size, train=train, eval=eval,
                                      names=names)}
    return {key: _json(value) for key, value in out.items()}
