"""Rate-distortion sweeps: one model per KL weight beta, all trained together as a stack in one vmapped step,
then each scored on held-out data by its rate (KL) and distortion (reconstruction), in nats per example.

At beta = 1 the objective is the negative ELBO; beta < 1 buys a lower distortion with a higher rate, beta > 1
the reverse (Alemi et al. 2018, "Fixing a Broken ELBO"). Whatever beta a model was trained with, it is scored
with beta = 1, so that rate + distortion = -ELBO and the points are comparable.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from funcvae import quality
from funcvae._moved import renamed_keyword
from funcvae.diagnostics import active_units
from funcvae.bounds import elbo
from funcvae.model import Params, some_leaf
from funcvae.contract import check_params
from funcvae.pictures import figure
from funcvae.stacks import stack, unstack
from funcvae.train import fit
from funcvae.checks import check_nonnegative
from funcvae.context import chosen
from funcvae.inputs import as_examples, read_labelled

#: The table's columns (``format_table``); the last is there when the rows hold a FID.
COLUMNS = ("beta", "rate KL", "distortion recon", "-ELBO", "active units", "FID samples")


def check_betas(betas: Sequence[float]) -> list[float]:
    """``betas`` as a list of floats; raises ValueError unless there are at least 2, each finite and >= 0,
    and no two equal (a repeated beta would train the same model twice)."""
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__iter__"):
        raise ValueError(f"betas must be a sequence of numbers, got {betas!r}")
    betas = list(betas)
    if len(betas) < 2:
        raise ValueError(f"a rate-distortion sweep needs at least 2 betas, got {betas}")
    for beta in betas:
        check_nonnegative("beta", beta)
    repeated = sorted({float(b) for b in betas if sum(float(c) == float(b) for c in betas) > 1})
    if repeated:
        raise ValueError(f"betas must be distinct, got {repeated} more than once in {betas}")
    return [float(b) for b in betas]


@renamed_keyword("network_name", "network")
def rate_distortion(params: Params, data, *, betas: Sequence[float], epochs: int, val_data, seed: int = 0,
                    batch_size: int = 128, lr: float | None = None, optimizer=None, free_bits: float | None = None,
                    scale: float | None = None, compile=None, progress: bool | None = None,
                    network=None, context=None, val_context=None) -> list[dict]:
    """Train one copy of ``params`` per beta (as ONE stacked model, one vmapped step) and score each on
    ``val_data``.

    Args:
      params: the starting model (from ``model.init`` or ``funcvae.init``); every beta starts from these same params.
      data: training examples, as for ``funcvae.fit``.
      betas: KL weights, at least 2, each >= 0, distinct.
      epochs, batch_size, compile, progress: as for ``funcvae.fit``.
      lr, optimizer: each model's optimiser, as for ``funcvae.fit``: Adam at ``lr`` (default 1e-3), or
        ``optimizer`` (from ``funcvae.optim``; one for all betas), not both.
      free_bits: a floor in nats on each latent dimension's KL, as for ``funcvae.fit`` (the objective is then
        ``funcvae.objectives.free_bits(elbo(beta), free_bits)``; needs a factorised prior).
      val_data: held-out examples, as for ``funcvae.fit``; the scores are computed on them.
      scale: what integer pixels of ``data`` and ``val_data`` are divided by, as for ``funcvae.fit`` (255 for
        8-bit pixels, which ``fit`` then holds as uint8).
      seed: ``fit``'s seed, the same for every beta (same batch order and noise: common random numbers),
        and the seed of the held-out noise (``funcvae.elbo``'s draw, also the same for every beta).
      network: a feature network of ``funcvae.quality`` (e.g. "fashion-mnist") or a feature function:
        each row then holds ``fid``, the FID of as many prior samples as ``val_data`` has against it (the
        perception axis of Blau & Michaeli's rate-distortion-perception trade-off); None: no FID.
      context, val_context: a conditional model's, as for ``funcvae.fit`` (labelled datasets give their labels).

    Returns:
      One dict per beta, in the order given: ``beta``; ``rate`` (mean KL) and ``distortion`` (mean recon)
      on ``val_data`` in nats per example, with their standard errors ``rate_se`` and ``distortion_se``;
      ``loss`` = rate + distortion = -ELBO (at beta = 1) and ``loss_se``; ``elbo`` = -loss;
      ``active_units`` (``funcvae.diagnostics.active_units`` on ``val_data``) out of ``latent``; ``fid`` (with
      ``network``); ``history``: that model's per-epoch records from ``fit``.

    Example:
      >>> rows = rate_distortion(funcvae.init(seed=0), x_train, betas=[0.1, 1, 10], epochs=5, val_data=x_test)
    """
    betas = check_betas(betas)
    check_params(params)
    if lr is not None and optimizer is not None:
        raise ValueError("pass either lr (Adam at that rate) or optimizer=, not both")
    if val_data is None:
        raise ValueError("val_data is required: the rate and distortion are measured on held-out data")
    held_out, labels = read_labelled(val_data, params.model, "val_data")  # read once: scored here and by fit
    x_val = as_examples(held_out, params.model, scale=scale, like=some_leaf(params), name="val_data")
    c_val = chosen(params.model, val_context, labels, x_val.shape[0], like=x_val, name="val_data", given="val_context")
    stacked, histories = fit(stack([params] * len(betas)), data, epochs=epochs, batch_size=batch_size, lr=lr,
                             optimizer=optimizer, seed=seed, beta=betas, free_bits=free_bits, val_data=held_out,
                             scale=scale, compile=compile, progress=progress, context=context, val_context=c_val)
    real = None if network is None else quality.embed(x_val, network=network)
    return [{"beta": beta, **score(model, x_val, seed=seed, context=c_val),
             **_perception(model, real, network, seed=seed), "history": history}
            for beta, model, history in zip(betas, unstack(stacked), histories)]


def _perception(params: Params, real, network, *, seed: int) -> dict:
    """``{"fid": ...}`` of prior samples against the embedded held-out images ``real`` ({} without them)."""
    if real is None:
        return {}
    with torch.no_grad():
        samples = quality.samples.prior_images(params, real.features.shape[0], seed=seed)
    return {"fid": quality.metrics.fid(real.features, quality.features(samples, network=network))}


def score(params: Params, x, *, seed: int, context=None) -> dict:
    """Rate, distortion and -ELBO (means and standard errors, nats per example) and active units of ONE
    model on ``x`` (a conditional model's ``context``), with ``funcvae.elbo``'s noise for ``seed`` at beta = 1
    (keys as ``rate_distortion``'s)."""
    terms = elbo(params, x, seed=seed, beta=1.0, context=context)
    active = active_units(params, x, context=context, seed=seed)
    (rate, rate_se), (distortion, distortion_se), (loss, loss_se) = (mean_se(terms[k]) for k in ("kl", "recon", "loss"))
    return {"rate": rate, "rate_se": rate_se, "distortion": distortion, "distortion_se": distortion_se, "loss": loss,
            "loss_se": loss_se, "elbo": -loss, "active_units": active.count, "latent": params.model.noise_size}


def mean_se(values: Tensor) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(N); 0 for one value) of (N,) per-example numbers."""
    n = values.shape[0]
    se = float(values.double().std() / math.sqrt(n)) if n > 1 else 0.0
    return float(values.double().mean()), se


def format_table(rows: list[dict]) -> str:
    """The sweep as a text table (header, then one line per beta), each cell right-aligned under its heading."""
    columns = COLUMNS if all("fid" in r for r in rows) else COLUMNS[:-1]
    widths = [max(len(c), 8) for c in columns]
    lines = [" | ".join(c.rjust(w) for c, w in zip(columns, widths))]
    for r in rows:
        cells = (f"{r['beta']:g}", f"{r['rate']:.2f}", f"{r['distortion']:.2f}", f"{r['loss']:.2f}",
                 f"{r['active_units']}/{r['latent']}", f"{r.get('fid', 0.0):.2f}")
        lines.append(" | ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)


def rate_distortion_plot(rows: list[dict], path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Distortion against rate, one point per beta labelled with it, joined in order of beta; the dotted
    line is rate + distortion = the best -ELBO of the sweep (points on it are equally good bounds). Rows
    with a ``fid`` add a second panel: the prior samples' FID (perception) against the rate.

    Args:
      rows: from ``rate_distortion``.
      path: the PNG to write.
      dpi: pixels per inch of the 6 x 4.5 inch figure.

    Returns:
      ``path``: a (6 dpi) x (4.5 dpi) pixel PNG.
    """
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    rows = sorted(rows, key=lambda r: r["beta"])
    perception = all("fid" in r for r in rows)
    fig = figure(12 if perception else 6, 4.5, dpi)
    ax, *other = fig.subplots(1, 2) if perception else [fig.subplots()]
    rate, distortion = [r["rate"] for r in rows], [r["distortion"] for r in rows]
    ax.plot(rate, distortion, marker="o")
    for r in rows:
        ax.annotate(f"β={r['beta']:g}", (r["rate"], r["distortion"]), textcoords="offset points", xytext=(5, 5))
    best = min(r["loss"] for r in rows)
    ends = [min(rate), max(rate)]
    ax.plot(ends, [best - e for e in ends], ls=":", color="grey", label=f"-ELBO = {best:.2f} (best)")
    ax.set(xlabel="rate: KL (nats per example)", ylabel="distortion: recon (nats per example)",
           title="rate-distortion on held-out data")
    ax.margins(x=0.15, y=0.1)  # room for the labels of the end points
    ax.legend()
    if perception:
        _perception_panel(other[0], rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _perception_panel(ax, rows: list[dict]) -> None:
    """The prior samples' FID against the rate, one labelled point per beta."""
    ax.plot([r["rate"] for r in rows], [r["fid"] for r in rows], marker="o", color="tab:red")
    for r in rows:
        ax.annotate(f"β={r['beta']:g}", (r["rate"], r["fid"]), textcoords="offset points", xytext=(5, 5))
    ax.set(xlabel="rate: KL (nats per example)", ylabel="perception: FID of prior samples (lower is better)",
           title="rate-perception on held-out data")
    ax.margins(x=0.15, y=0.1)
