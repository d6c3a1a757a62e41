"""The verdicts on sample quality and the rules behind them: sample collapse, memorisation and a prior hole,
each with its threshold and the sets of known truth it was calibrated on (``tests/test_verdicts.py``;
figures in docs/evaluation.md). ``samples.assess`` scores image sets and calls ``verdicts`` on the result."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from funcvae.quality import metrics

#: The sets ``sample_quality`` scores, in its table's order; "real" is the floor.
SETS = ("prior samples", "reconstructions", "real")
#: A prior hole: the prior samples' FID is over this many times the reconstructions' (and the floor's)...
#: Every VAE's prior samples are somewhat worse than its reconstructions (the default model's are 2.1 times,
#: beta = 0.1's 4.2 times, on Fashion-MNIST): the verdict is for a hole that dominates the samples.
PRIOR_HOLE_RATIO = 3.0
#: ...and over the reconstructions' (or floor's) by this fraction of the reference's spread, tr(cov) of its
#: features (the FID of a set collapsed onto the reference's mean). A ratio alone calls near-real samples a hole
#: beside perfect reconstructions: real images with Gaussian noise of 0.05 are 0.017 of the spread above them,
#: with noise of 0.1 0.08; blends of two real images are 0.22, a blur of 1 pixel 0.27, and the shipped model's
#: samples 0.11 above its reconstructions (at a ratio of 2.1). Not in units of the floor's FID, which shrinks
#: as 1/n: the same samples would be more floors away in a larger set.
PRIOR_HOLE_GAP = 0.15
#: Sample collapse: the samples hold under this fraction of the reference's effective number of classes (the
#: exponential of the entropy of the true class shares, the classifier's confusion taken out), or under this
#: fraction of its share of distinct images. Sets of 1, 2 and 4 classes and of 90% one class hold 4.1 classes
#: or fewer, against the real set's 10; every class, held-out images blurred by 1 pixel or noised by 0.05,
#: and the shipped model's samples 9.4 or more.
COLLAPSE_FRACTION = 0.5
#: Memorisation: the share of samples relatively nearer a training image than all but this share of held-out
#: images are (see ``memorisation``)... Of 1000 copies of training images, exact, with noise of 0.05 or
#: blurred by 0.5 or 1.5 pixels, 62% to 100% are; of fresh images among which 5% are copies (exact or blurred
#: by 1), 6.6%; of fresh images, blurred or noised or not, 0.7% to 1.7% (flagged above 2.8%).
MEMORISED_QUANTILE = 0.01
#: ...compared on thumbnails: images blurred by a Gaussian of this many pixels, then averaged over squares of
#: this many pixels a side (28x28 to 7x7). A VAE's copies are blurred; blurred again they match their source,
#: and the averaging takes out pixel noise.
THUMBNAIL_BLUR = 2.0
THUMBNAIL_POOL = 4
#: A share counts as above its chance rate when it exceeds it by this many standard errors.
SIGNIFICANT = 4.0


def memorisation(samples: Tensor, held: Tensor, train: Tensor) -> dict:
    """How much nearer the training images the samples lie than fresh images do: images (as ``embed`` takes
    them) of samples, held-out real images (which the model never saw) and training images.

    Each image is compared on its thumbnail (``THUMBNAIL_BLUR``, ``THUMBNAIL_POOL``), where a blurred or noisy
    copy still matches its source, and scored by the ratio of its distance to the nearest training image to
    its distance to the nearest held-out one (another one, for a held-out image): a copy is far nearer its
    source than any held-out image, however degraded, while a fresh image, or a fresh image degraded alike,
    is about as near both sets. ``share`` is the fraction of samples whose ratio is at most the
    ``MEMORISED_QUANTILE`` quantile of the held-out images' (the ``threshold``), ``expected`` the held-out
    images' own fraction (about that quantile): they differ by chance by ``share_se`` (binomial, both sets).

    Returns:
      ``{"share", "expected", "share_se", "threshold", "median_samples", "median_held_out"`` (thumbnail
      distances to the nearest training image), ``"median_ratio_samples", "median_ratio_held_out",
      "nearest"`` (each sample's nearest training image, a row of ``train``)``}``.
    """
    s, h, t = (_thumbnails(x) for x in (samples, held, train))
    d_samples, nearest = metrics.nearest(s, t)
    d_held = metrics.nearest(h, t)[0]
    ratio = _ratio(d_samples, metrics.nearest(s, h)[0])
    ratio_held = _ratio(d_held, metrics.nearest_other(h))
    threshold = float(torch.quantile(ratio_held, MEMORISED_QUANTILE))
    expected = float((ratio_held <= threshold).double().mean())
    return {"share": float((ratio <= threshold).double().mean()), "expected": expected,
            "share_se": math.sqrt(expected * (1 - expected) * (1 / len(ratio) + 1 / len(ratio_held))),
            "threshold": threshold, "median_samples": float(d_samples.median()),
            "median_held_out": float(d_held.median()), "median_ratio_samples": float(ratio.median()),
            "median_ratio_held_out": float(ratio_held.median()), "nearest": nearest.tolist()}


def _ratio(to_train: Tensor, to_held: Tensor) -> Tensor:
    """Distances to the nearest training image over those to the nearest held-out one (inf where only the
    held-out one is 0; 1 where both are: an image in both sets)."""
    both = (to_train == 0) & (to_held == 0)
    return torch.where(both, 1.0, to_train / to_held)


def verdicts(result: dict) -> list[dict]:
    """Findings on sample quality, in ``diagnostics.diagnose``'s form (``name``, ``severity``, ``evidence``,
    ``advice``):

    - "prior hole": the prior samples' FID is over ``PRIOR_HOLE_RATIO`` times the reconstructions' (and the
      floor's) and above them by over ``PRIOR_HOLE_GAP`` of the reference's spread: the decoder makes
      realistic images from the codes of real ones, but the prior puts its mass where the aggregate posterior
      is not;
    - "sample collapse": the samples hold under ``COLLAPSE_FRACTION`` of the reference's effective number of
      classes or of its share of distinct images (their recall and coverage, against the floor's, are its
      evidence too);
    - "memorisation": more samples than chance (``SIGNIFICANT`` standard errors above the held-out images'
      share) lie relatively nearer a training image than almost every held-out image does.
    """
    sets, out = result["sets"], []
    hole = _prior_hole(sets, result["spread"])
    if hole:
        out.append({"name": "prior hole", "severity": "warning", "evidence": hole,
                    "advice": "Samples are not realistic: the decoder draws realistic images from the codes of "
                              "real ones, but the aggregate posterior does not fill the prior, so prior draws land "
                              "where no code was trained (a KL weight too low leaves the latent space "
                              "unregularised). Sample from a richer prior: the VampPrior (prior=priors.vamp(500), "
                              "CLI --prior vamp), or a density fitted to the codes of the training set (ex-post "
                              "density estimation, Ghosh et al. 2020); with beta < 1, a KL weight nearer 1."})
    short = _collapsed(sets["prior samples"], sets["real"])
    if short:
        out.append({"name": "sample collapse", "severity": "warning", "evidence": short,
                    "advice": "Samples are all the same: they miss much of the real set's variety. The decoder "
                              "ignores the code (posterior collapse: see the KL per dimension) or the prior's draws "
                              "map to a few modes. Lower the KL weight or warm it up (kl_warmup), use free bits, "
                              "or a weaker decoder."})
    memo = result["memorisation"]
    if memo is not None and memo["share"] > memo["expected"] + SIGNIFICANT * memo["share_se"]:
        out.append({"name": "memorisation", "severity": "warning",
                    "evidence": {"share": memo["share"], "expected": memo["expected"],
                                 "median_distance_samples": memo["median_samples"],
                                 "median_distance_held_out": memo["median_held_out"]},
                    "advice": "The model reproduces training images (low training loss, poor generation): more "
                              "samples lie nearer a training image than almost every held-out image does. Look "
                              "at the nearest-neighbour picture; train on more data, stop earlier (watch the "
                              "held-out loss), or regularise (a KL weight of 1, weight decay)."})
    return out


def _prior_hole(sets: dict, spread: float) -> dict:
    """The FIDs that show a prior hole, with the gap in units of the reference's spread ({} when they do not,
    or there are no reconstructions)."""
    if "reconstructions" not in sets:
        return {}
    prior, recon, floor = (sets[name]["fid"] for name in SETS)
    base = max(recon, floor)
    gap = (prior - base) / spread if spread > 0 else math.inf
    if prior <= PRIOR_HOLE_RATIO * base or gap <= PRIOR_HOLE_GAP:
        return {}
    return {"fid_prior_samples": prior, "fid_reconstructions": recon, "fid_real": floor, "gap": gap}


def _collapsed(prior: dict, floor: dict) -> dict:
    """The diversity figures of the prior samples that fall short of the reference's, with their recall and
    coverage beside the floor's ({} when they do not fall short)."""
    classes = prior["classes"] or {}
    few = classes.get("effective") is not None and (classes["effective"]
                                                     < COLLAPSE_FRACTION * classes["effective_real"])
    same = prior["distinct"] < COLLAPSE_FRACTION * prior["distinct_real"]
    if not (few or same):
        return {}
    return {"effective_classes": classes.get("effective"), "effective_classes_real": classes.get("effective_real"),
            "classes_covered": classes.get("classes_covered"), "classes_real": classes.get("classes_real"),
            "distinct": prior["distinct"], "distinct_real": prior["distinct_real"],
            "recall": prior["recall"], "recall_real": floor["recall"], "coverage": prior["coverage"],
            "coverage_real": floor["coverage"]}


def _thumbnails(x: Tensor) -> Tensor:
    """(N, C h w) float64 thumbnails of images: each channel blurred by a Gaussian of ``THUMBNAIL_BLUR`` pixels
    (edges repeated), then averaged over ``THUMBNAIL_POOL``-pixel squares, as two fixed matrices on the rows and
    columns. Images of no known grid ((N, D) with D not a square) are their pixels as they are."""
    x = x.detach()
    if x.ndim == 2 and math.isqrt(x.shape[1]) ** 2 != x.shape[1]:
        return x.double()
    if x.ndim == 2:
        x = x.reshape(x.shape[0], math.isqrt(x.shape[1]), -1)
    rows, columns = (_shrink(size).to(x.device) for size in x.shape[-2:])
    return torch.cat([torch.einsum("ij,...jk,lk->...il", rows, chunk.double(), columns).flatten(1)
                      for chunk in x.split(4096)])


def _shrink(size: int) -> Tensor:
    """(ceil(size / pool), size) float64: the Gaussian blur of one axis, then its pooling, as one matrix."""
    reach = math.ceil(3 * THUMBNAIL_BLUR)
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float64)
    kernel = torch.exp(-offsets.square() / (2 * THUMBNAIL_BLUR**2))
    blur = torch.zeros(size, size, dtype=torch.float64)
    for i in range(size):
        blur[i].index_add_(0, (i + offsets.long()).clamp(0, size - 1), kernel / kernel.sum())
    pool = torch.zeros(math.ceil(size / THUMBNAIL_POOL), size, dtype=torch.float64)
    for j in range(pool.shape[0]):
        pool[j, j * THUMBNAIL_POOL:(j + 1) * THUMBNAIL_POOL] = 1.0
    return (pool / pool.sum(1, keepdim=True)) @ blur
