"""Pictures of a VAE, saved as PNG: reconstructions, prior samples, their nearest training images,
interpolations, latent traversals, and the loss curves of a run.

Decoder outputs are shown as their mean image (the likelihood's ``mean``: sigmoid(logits) for the Bernoulli
likelihood, the mean for the Gaussian one), clamped to [0, 1]; no pixel noise is drawn. A grid is torchvision's
``make_grid`` with a 2-pixel white border, each pixel drawn as ``SCALE`` x ``SCALE`` screen pixels, under a
title band and beside a column of row labels: the grid itself, (2 + c (W + 2)) x (2 + r (H + 2)) image pixels
for r rows and c columns of H x W images, fills the picture's bottom-right corner. Functions that draw noise
take an explicit seed; each returns the path written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid

from funcvae.codec import decode, encode
from funcvae.diagnostics import active_units
from funcvae.model import Params, some_leaf
from funcvae.context import examples_and_context
from funcvae.contract import check_params, examples_of
from funcvae.rng import generator
from funcvae.sampling import balanced_context, decoded_images, mean_images, prior_draws
from funcvae.checks import check_int, check_positive

PADDING = 2
#: Screen pixels per image pixel: a 28 x 28 image is drawn 84 x 84, large enough to see.
SCALE = 3
_TEXT = 14  # the labels' font size, in pixels
_MARGIN = 6


def save_grid(images: Tensor, path, nrow: int, *, title: str | None = None, row_labels=None) -> Path:
    """Images (N, C, H, W) in [0, 1] as a PNG grid of ``nrow`` per row, each pixel ``SCALE`` x ``SCALE``,
    under ``title`` and beside ``row_labels`` (one per row of the grid, or None); ``path``."""
    from PIL import Image, ImageDraw, ImageFont

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=PADDING, pad_value=1.0)
    grid = grid.repeat_interleave(SCALE, 1).repeat_interleave(SCALE, 2)
    pixels = grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # as save_image rounds
    font = ImageFont.load_default(size=_TEXT)
    labels = [] if row_labels is None else [str(label) for label in row_labels]
    left = max((int(font.getlength(label)) + 2 * _MARGIN for label in labels), default=0)
    top = 0 if title is None else _TEXT + 2 * _MARGIN
    canvas = Image.new("RGB", (left + pixels.shape[1], top + pixels.shape[0]), "white")
    canvas.paste(Image.fromarray(pixels).convert("RGB"), (left, top))
    draw = ImageDraw.Draw(canvas)
    if title is not None:
        draw.text((_MARGIN, _MARGIN), title, fill="black", font=font)
    cell = (images.shape[-2] + PADDING) * SCALE
    for r, label in enumerate(labels):
        draw.text((left - _MARGIN, top + PADDING * SCALE + r * cell + cell // 2), label, fill="black", font=font,
                  anchor="rm")
    canvas.save(path)
    return path


def _examples(params: Params, x, name: str) -> Tensor:
    return examples_of(params, x, name=name)


def reconstructions(params: Params, x, path: str | os.PathLike, *, context=None, seed: int = 0) -> Path:
    """Inputs (top row) above their reconstructions from the posterior mean code (bottom row).

    Args:
      params: the model.
      x: (N, ...) examples, as for ``funcvae.encode``; one column each.
      path: the PNG to write.
      context, seed: as for ``funcvae.encode`` (a conditional model's context; the draws behind a Monte Carlo
        posterior mean).

    Returns:
      ``path``: a 2 x N grid.
    """
    images = reconstruction_images(params, x, context=context, seed=seed)
    return save_grid(images, path, nrow=images.shape[0] // 2, title="reconstructions from the posterior mean code",
                     row_labels=("input", "reconstruction"))


def reconstruction_images(params: Params, x, *, context=None, seed: int = 0) -> Tensor:
    """``reconstructions``' images: the N inputs, then their reconstructions from the posterior mean code,
    (2N, C, H, W) in [0, 1]."""
    x, c = examples_and_context(params, x, context)
    mean, _ = encode(params, x, context=c, seed=seed)
    shown = x.clamp(0.0, 1.0).reshape(-1, *params.model.input_shape)
    return torch.cat([shown, mean_images(params, decode(params, mean, context=c))])


def prior_samples(params: Params, path: str | os.PathLike, *, n: int = 64, nrow: int = 8, seed: int) -> Path:
    """Decoded draws z ~ p(z) from the model's prior.

    Args:
      params: the model.
      path: the PNG to write.
      n: number of samples.
      nrow: images per row.
      seed: names the draw of z; the same seed gives the same picture.

    Returns:
      ``path``: ceil(n / nrow) rows of ``nrow`` images; a conditional model's rows cycle through its classes
      (sample i has label i mod K).
    """
    check_int("nrow", nrow)
    return save_grid(prior_images(params, n, seed=seed), path, nrow=nrow, title=f"{n} prior samples (seed {seed})")


def prior_images(params: Params, n: int, *, seed: int) -> Tensor:
    """``prior_samples``' images: ``n`` decoded draws z ~ p(z) named by ``seed``, (n, C, H, W) in [0, 1]; a
    conditional model's sample i has label i mod K."""
    check_int("n", n)
    check_params(params)
    like = some_leaf(params)
    c = balanced_context(params, n)
    z = prior_draws(params, n, generator(seed, "pictures", "prior", device=like.device), c)
    return decoded_images(params, z, c)


def nearest_training_images(params: Params, samples: Tensor, neighbours: Tensor, path: str | os.PathLike) -> Path:
    """Samples (top row) above the training image nearest to each in feature space (bottom row): what a
    memorising model shows as pairs of near copies.

    Args:
      params: the model (for the image shape).
      samples, neighbours: (N, features) images in [0, 1], paired by row.
      path: the PNG to write.

    Returns:
      ``path``: a 2 x N grid.
    """
    shape = params.model.input_shape
    rows = [t.detach().clamp(0.0, 1.0).reshape(-1, *shape) for t in (samples, neighbours)]
    return save_grid(torch.cat(rows), path, nrow=samples.shape[0], title="samples and their nearest training images",
                     row_labels=("sample", "nearest"))


def interpolations(params: Params, x_from, x_to, path: str | os.PathLike, *, steps: int = 10, seed: int = 0) -> Path:
    """Straight lines in latent space between the posterior mean codes of pairs of inputs, decoded.

    Args:
      params: the model.
      x_from, x_to: (M, ...) examples; row m goes from x_from[m] (left) to x_to[m] (right).
      path: the PNG to write.
      steps: images per row, both ends included (>= 2).
      seed: names the draws behind a Monte Carlo posterior mean (a posterior given as a draw).

    Returns:
      ``path``: M rows of ``steps`` images.
    """
    check_int("steps", steps, minimum=2)
    if params.model.context is not None:
        raise ValueError("interpolations are drawn for unconditional models; a conditional model's images also "
                         "depend on the context, which a line between two codes does not say")
    a, _ = encode(params, _examples(params, x_from, "x_from"), seed=seed)
    b, _ = encode(params, _examples(params, x_to, "x_to"), seed=seed)
    if a.shape != b.shape:
        raise ValueError(f"x_from and x_to must hold as many examples, got {a.shape[0]} and {b.shape[0]}")
    t = torch.linspace(0.0, 1.0, steps, dtype=a.dtype, device=a.device)[None, :, None]  # (1, steps, 1)
    z = (a[:, None] + t * (b - a)[:, None]).reshape(-1, a.shape[1])  # row-major: pair, then step
    return save_grid(mean_images(params, decode(params, z)), path, nrow=steps,
                     title="interpolations between posterior mean codes", row_labels=[f"pair {m}" for m in range(len(a))])


def traversal(params: Params, x, path: str | os.PathLike, *, dims: int = 8, steps: int = 9, span: float = 3.0,
              context=None, seed: int = 0, names: Sequence[str] | None = None) -> Path:
    """A latent traversal grid: row i sets latent dim i to each of ``steps`` values in [-span, span] (prior
    standard deviations), the other dims held at the mean code of ``x``. For models whose latent is an int
    (a hierarchy's upper groups are not standard normal given the lower ones, so their traversal means
    nothing); a conditional model's images all take the context of x's first example.

    Args:
      params: the model.
      x: (N, ...) examples; their posterior means give the base code and rank the dims by variance.
      path: the PNG to write.
      dims: how many dims to show, those whose posterior mean varies most over ``x`` first.
      steps: values per dim.
      span: the values run from -span to span.
      context, seed: as for ``funcvae.encode``.
      names: a label for each latent dim, shown after its index (e.g. the generative factor it is most
        informative about, ``funcvae.disentanglement.most_informative``); None: the index alone.

    Returns:
      ``path``: min(dims, latent) rows of ``steps`` images.
    """
    check_int("dims", dims)
    check_int("steps", steps)
    check_positive("span", span)
    if params.model.groups is not None:
        raise ValueError(f"a traversal sets one latent dimension against the prior's N(0, 1); {params.model} has "
                         f"latent groups {list(params.model.groups)}, whose upper groups shape the lower ones' prior")
    x, c = examples_and_context(params, x, context)
    mean, _ = encode(params, x, context=c, seed=seed)
    if names is not None and len(names) != mean.shape[1]:
        raise ValueError(f"names must give one label per latent dim ({mean.shape[1]}), got {len(names)}")
    ranked = torch.argsort(active_units(params, x, context=c, seed=seed).variance, descending=True)[:dims]
    values = torch.linspace(-span, span, steps, dtype=mean.dtype, device=mean.device)
    z = mean.mean(0).repeat(len(ranked), steps, 1)  # (rows, steps, latent)
    z[torch.arange(len(ranked))[:, None], torch.arange(steps)[None, :], ranked[:, None]] = values
    z = z.reshape(-1, mean.shape[1])
    held = None if c is None else c[:1].expand(z.shape[0], -1)
    labels = [f"z{int(d)}" + ("" if names is None else f" {names[int(d)]}") for d in ranked]
    return save_grid(mean_images(params, decode(params, z, context=held)), path, nrow=steps,
                     title=f"traversals from {-span:g} to {span:g} prior std", row_labels=labels)


def loss_curves(history: list[dict], path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Train and held-out reconstruction, KL and total loss per epoch, three panels side by side.

    Args:
      history: ``fit``'s per-epoch records; held-out lines are drawn where ``val_*`` are present.
      path: the PNG to write.
      dpi: pixels per inch of the 12 x 3.5 inch figure.

    Returns:
      ``path``: a (12 dpi) x (3.5 dpi) pixel PNG.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    from matplotlib.ticker import MaxNLocator

    fig = figure(12, 3.5, dpi)
    epochs = [h["epoch"] for h in history]
    for ax, (key, title) in zip(fig.subplots(1, 3), (("recon", "reconstruction"), ("kl", "KL"), ("loss", "total"))):
        ax.plot(epochs, [h[key] for h in history], marker="o", label="train")
        val = [h.get(f"val_{key}") for h in history]
        if any(v is not None for v in val):
            ax.plot(epochs, [float("nan") if v is None else v for v in val], marker="s", ls="--", label="held-out")
        ax.set(title=f"{title} (nats per example)", xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def figure(width: float, height: float, dpi: int):
    """A matplotlib Figure of ``width`` x ``height`` inches drawn by Agg: no display and no global pyplot
    state (matplotlib is imported only when a plot is made)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig
