"""Are a model's samples realistic and diverse? Its prior samples and its reconstructions, each scored against
held-out real images on a domain classifier's features, beside the same scores of real images against real
images (the floor every figure is read against); the verdicts that follow from them.

The three sets are made to be alike in all but what is measured: the held-out images are split into two
disjoint halves of ``n``; the first half is the reference, and the prior samples (``n`` draws), the
reconstructions of the second half and the second half itself are each compared with it. Every metric is
computed on sets of the same size, so their finite-sample biases (FID's grows as 1/n) are the same.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from funcvae.codec import decode, encode
from funcvae.context import as_context, examples_and_context
from funcvae.model import Params, some_leaf
from funcvae.contract import check_params, examples_of
from funcvae.sampling import balanced_context, decoded_images, prior_draws
from funcvae._moved import renamed_keyword
from funcvae.quality import metrics
from funcvae.quality import network as networks
from funcvae.rng import generator
from funcvae.checks import check_int

#: The sets ``sample_quality`` scores, in its table's order; "real" is the floor.
SETS = ("prior samples", "reconstructions", "real")
#: Prior samples are "not realistic" (a prior hole) when their FID is this many times the reconstructions'.
#: Every VAE's prior samples are somewhat worse than its reconstructions (the default model's are 2.1 times,
#: beta = 0.1's 4.2 times, on Fashion-MNIST): the verdict is for a hole that dominates the samples.
PRIOR_HOLE_RATIO = 3.0
#: Samples are "all the same" when they cover under this fraction of the real set's classes, or their class
#: histogram has under this fraction of the real one's entropy. Recall and coverage are shown beside them but
#: do not decide: on a VAE they measure blur as much as diversity (the default model's diverse samples reach
#: 0.29 and 0.34 of the real floor's, an undertrained model's 0.01 and 0.07, its reconstructions' 0.00).
COLLAPSE_FRACTION = 0.5
#: Memorisation: the share of samples nearer a training image than all but this share of held-out images are.
MEMORISED_QUANTILE = 0.01


class Embedded(NamedTuple):
    """Images as the feature network sees them: ``features`` (N, d) float64 and predicted ``classes`` (N,),
    or None for a feature function without a classifier."""

    features: Tensor
    classes: Tensor | None


@renamed_keyword("network_name", "network")
def embed(x, *, network: str | Callable = "fashion-mnist") -> Embedded:
    """``x`` (N, 784), (N, 28, 28) or (N, 1, 28, 28) images in [0, 1] through the feature network: a name of
    ``quality.network.NETWORKS`` or a function of the images returning (N, d) features, or (features, logits)."""
    x = _images(x, "x")
    if callable(network):
        feats, logits = _returned(network(x), x.shape[0])
    else:
        feats, logits = networks.features(network, x)
    return Embedded(feats.detach().double(), None if logits is None else logits.argmax(-1))


def _returned(out, n: int) -> tuple[Tensor, Tensor | None]:
    """A feature function's ``features`` or ``(features, logits)`` for ``n`` images, checked."""
    if isinstance(out, tuple) and len(out) != 2:
        raise ValueError(f"the feature function must return features, or (features, logits); got a tuple of "
                         f"{len(out)}")
    feats, logits = out if isinstance(out, tuple) else (out, None)
    if not (isinstance(feats, Tensor) and feats.ndim == 2 and feats.shape[0] == n and feats.shape[1] >= 1
            and feats.is_floating_point() and not feats.is_meta):
        raise ValueError(f"the feature function must return (N, d) floating-point torch features with values for "
                         f"N = {n} images, got {_what(feats)}")
    if not bool(torch.isfinite(feats).all()):
        raise ValueError("the feature function returned NaN or Inf features")
    classes = networks.CLASSES
    if logits is not None and not (isinstance(logits, Tensor) and logits.shape == (n, classes)
                                   and logits.is_floating_point() and not logits.is_meta
                                   and bool(torch.isfinite(logits).all())):
        raise ValueError(f"the feature function's logits must be finite (N, {classes}) floats, one score per "
                         f"class of the domain, for N = {n} images; got {_what(logits)}")
    return feats, logits


def _what(value) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype}, on {value.device}"
    return f"a {type(value).__name__}" + (f" of shape {value.shape}" if hasattr(value, "shape") else "")


@renamed_keyword("network_name", "network")
def features(x, *, network: str | Callable = "fashion-mnist") -> Tensor:
    """The domain features of images ``x`` (see ``embed``): (N, d) float64."""
    return embed(x, network=network).features


@renamed_keyword("network_name", "network")
def fid(x_a, x_b, *, network: str | Callable = "fashion-mnist") -> float:
    """The Fréchet distance between two sets of images on the domain features (``metrics.fid``)."""
    return metrics.fid(features(x_a, network=network), features(x_b, network=network))


def scores(real: Embedded, other: Embedded, *, seed: int) -> dict:
    """Every metric of ``other`` against the reference ``real`` (equal sizes), as JSON values: FID, KID mean
    and std, precision and recall (k=3), density and coverage (k=5), and with a classifier class coverage."""
    kid, kid_std = metrics.kid(real.features, other.features, seed=seed)
    out = {"fid": metrics.fid(real.features, other.features), "kid": kid, "kid_std": kid_std,
           **metrics.prdc(real.features, other.features), "classes": None}
    if real.classes is not None and other.classes is not None:
        out["classes"] = metrics.class_coverage(real.classes, other.classes, networks.CLASSES)
    return out


def prior_images(params: Params, n: int, *, seed: int) -> Tensor:
    """``n`` mean images of decoded draws from the model's prior, (n, features) in [0, 1]; a conditional
    model's draws take every class alike (``sampling.balanced_context``)."""
    like = some_leaf(params)
    c = balanced_context(params, n)
    z = prior_draws(params, n, generator(seed, "quality", "prior", device=like.device), c)
    return decoded_images(params, z, c).reshape(n, -1)


def reconstruction_images(params: Params, x: Tensor, *, seed: int = 0, context=None) -> Tensor:
    """The mean images of the decoded posterior means of ``x``, (N, features) in [0, 1] (a Monte Carlo mean
    named by ``seed`` for a posterior given as a draw; ``context``: a conditional model's, for x)."""
    mean, _ = encode(params, x, seed=seed, context=context)
    return params.model.likelihood.mean(decode(params, mean, context=context)).clamp(0.0, 1.0)


@renamed_keyword("network_name", "network")
def sample_quality(params: Params, x_real, *, n: int | None = None, seed: int = 0, x_train=None,
                   network: str | Callable = "fashion-mnist", context=None) -> dict:
    """Score a model's prior samples and reconstructions against held-out images, beside the floor.

    Args:
      params: one model, of images the feature network reads (1x28x28 for the shipped networks).
      x_real: held-out images, at least ``2 n``.
      n: the size of each set (default: half the held-out images); at least 6.
      seed: names the prior draws and KID's subsets.
      x_train: the training images, for the memorisation check (None: no check).
      network: the feature network (a name of ``quality.network.NETWORKS``) or a function (see ``embed``).
      context: a conditional model's context of ``x_real`` (or its labels, for a labelled dataset), for the
        reconstructions; its prior samples take every class alike.

    Returns:
      ``{"n", "network", "sets": {set: scores}, "memorisation": dict or None, "findings": [...]}``; the
      sets are ``SETS`` (each ``scores``); the findings are ``verdicts``.
    """
    check_params(params)
    x, c = examples_and_context(params, x_real, context, name="x_real")
    x = _images(x, "x_real")
    x_train = None if x_train is None else _images(examples_of(params, x_train, name="x_train"), "x_train")
    n = x.shape[0] // 2 if n is None else check_int("n", n, minimum=6)
    if n < 6 or 2 * n > x.shape[0]:
        raise ValueError(f"x_real has {x.shape[0]} images; sample_quality needs 2 n of them (n = {n} >= 6: the "
                         "reference half and the real half it is compared with)")
    reference, held = x[:n], x[n:2 * n]
    with torch.no_grad():
        recon = reconstruction_images(params, held, seed=seed, context=None if c is None else c[n:2 * n])
        made = {"prior samples": prior_images(params, n, seed=seed), "reconstructions": recon,
                "real": held}
        embedded = {name: embed(images, network=network) for name, images in made.items()}
        real = embed(reference, network=network)
        result = {"n": n, "network": network if isinstance(network, str) else _name(network),
                  "sets": {name: scores(real, embedded[name], seed=seed) for name in SETS}, "memorisation": None}
        if x_train is not None:
            train = embed(x_train, network=network)
            result["memorisation"] = memorisation(embedded["prior samples"], embedded["real"], train)
    result["findings"] = verdicts(result)
    return result


def conditional_quality(params: Params, x_real, labels, *, seed: int = 0, per_class: int = 100,
                        network: str | Callable = "fashion-mnist") -> dict:
    """A conditional model's samples against their condition: for each label k of the model's K, ``per_class``
    samples of p(x | k) (fewer where the held-out set has fewer images of k), labelled by the domain
    classifier.

    Args:
      params: a conditional model whose context is the classifier's classes (labels 0..K-1).
      x_real: held-out images; labels: their (N,) integer labels.
      seed: names the draws.
      per_class: samples (and at most as many real images) per label.
      network: the feature network, with a classifier.

    Returns:
      ``{"n_per_class", "accuracy", "accuracy_se" (binomial), "real_accuracy" (the classifier on the real
      images used: the ceiling), "fid_per_class" (each label's samples against its real images; FID is biased
      upwards at small n, so compare rows of one n)}``.
    """
    check_params(params)
    k = params.model.context
    if k is None:
        raise ValueError("conditional_quality needs a conditional model (Model(..., context=K))")
    x, c = examples_and_context(params, x_real, labels, name="x_real")
    y = c.argmax(-1)
    counts = [int((y == j).sum()) for j in range(k)]
    n = min(per_class, *counts)
    if n < 2:
        raise ValueError(f"the held-out images hold {min(counts)} image(s) of some label; conditional_quality needs "
                         "at least 2 of each")
    like = some_leaf(params)
    wanted = torch.arange(k).repeat_interleave(n)
    context = as_context(params.model, wanted, wanted.shape[0], like=like)
    with torch.no_grad():
        z = prior_draws(params, wanted.shape[0], generator(seed, "quality", "conditional", device=like.device), context)
        made = embed(decoded_images(params, z, context).reshape(wanted.shape[0], -1), network=network)
        real_idx = torch.cat([torch.nonzero(y == j).flatten()[:n] for j in range(k)]).to(x.device)
        real = embed(_images(x[real_idx], "x_real"), network=network)
    if made.classes is None:
        raise ValueError("conditional_quality needs a feature network with a classifier (features, logits)")
    hits = (made.classes.cpu() == wanted).double()
    fids = [metrics.fid(real.features[j * n:(j + 1) * n], made.features[j * n:(j + 1) * n]) for j in range(k)]
    accuracy = float(hits.mean())
    return {"n_per_class": n, "accuracy": accuracy, "accuracy_se": math.sqrt(accuracy * (1 - accuracy) / len(hits)),
            "real_accuracy": float((real.classes.cpu() == wanted).double().mean()), "fid_per_class": fids}


def memorisation(samples: Embedded, held: Embedded, train: Embedded) -> dict:
    """How near the training images the samples lie, against held-out real images (which the model never saw).

    Each sample's and each held-out image's nearest training image, in feature space. A model that copies
    its training images puts many samples nearer to one than almost any held-out image is: ``share`` is the
    fraction of samples nearer than the ``MEMORISED_QUANTILE`` quantile of the held-out distances, about
    that quantile when nothing is copied (its binomial standard error is ``share_se``).
    """
    d_samples, nearest = metrics.nearest(samples.features, train.features)
    d_held, _ = metrics.nearest(held.features, train.features)
    threshold = float(torch.quantile(d_held, MEMORISED_QUANTILE))
    share = float((d_samples < threshold).double().mean())
    n = d_samples.shape[0]
    return {"share": share, "expected": MEMORISED_QUANTILE,
            "share_se": math.sqrt(MEMORISED_QUANTILE * (1 - MEMORISED_QUANTILE) / n), "threshold": threshold,
            "median_samples": float(d_samples.median()), "median_held_out": float(d_held.median()),
            "nearest": nearest.tolist()}


def verdicts(result: dict) -> list[dict]:
    """Findings on sample quality, in ``diagnostics.diagnose``'s form (``name``, ``severity``, ``evidence``,
    ``advice``):

    - "prior hole": the prior samples' FID is over ``PRIOR_HOLE_RATIO`` times the reconstructions' (and the
      floor's): the decoder makes realistic images from the codes of real ones, but the prior puts its mass
      where the aggregate posterior is not;
    - "sample collapse": the prior samples cover under ``COLLAPSE_FRACTION`` of the real set's classes or of
      its class entropy (their recall and coverage, against the floor's, are its evidence too);
    - "memorisation": more samples than chance (4 standard errors above ``MEMORISED_QUANTILE``) lie nearer
      a training image than almost every held-out image does.
    """
    sets, out = result["sets"], []
    prior, recon, floor = sets["prior samples"], sets["reconstructions"], sets["real"]
    if prior["fid"] > PRIOR_HOLE_RATIO * max(recon["fid"], floor["fid"]):
        out.append({"name": "prior hole", "severity": "warning",
                    "evidence": {"fid_prior_samples": prior["fid"], "fid_reconstructions": recon["fid"],
                                 "fid_real": floor["fid"]},
                    "advice": "Samples are not realistic: the decoder draws realistic images from the codes of "
                              "real ones, but the aggregate posterior does not fill the prior, so prior draws land "
                              "where no code was trained (a KL weight too low leaves the latent space "
                              "unregularised). Sample from a richer prior: the VampPrior (prior=priors.vamp(500), "
                              "CLI --prior vamp), or a density fitted to the codes of the training set (ex-post "
                              "density estimation, Ghosh et al. 2020); with beta < 1, a KL weight nearer 1."})
    short = _collapsed(prior, floor)
    if short:
        out.append({"name": "sample collapse", "severity": "warning", "evidence": short,
                    "advice": "Samples are all the same: they miss much of the real set's variety. The decoder "
                              "ignores the code (posterior collapse: see the KL per dimension) or the prior's draws "
                              "map to a few modes. Lower the KL weight or warm it up (kl_warmup), use free bits, "
                              "or a weaker decoder."})
    memo = result["memorisation"]
    if memo is not None and memo["share"] > memo["expected"] + 4 * memo["share_se"]:
        out.append({"name": "memorisation", "severity": "warning",
                    "evidence": {"share": memo["share"], "expected": memo["expected"],
                                 "median_distance_samples": memo["median_samples"],
                                 "median_distance_held_out": memo["median_held_out"]},
                    "advice": "The model reproduces training images (low training loss, poor generation): more "
                              "samples lie nearer a training image than almost every held-out image does. Look "
                              "at the nearest-neighbour picture; train on more data, stop earlier (watch the "
                              "held-out loss), or regularise (a KL weight of 1, weight decay)."})
    return out


def _collapsed(prior: dict, floor: dict) -> dict:
    """The class figures of the prior samples that fall short of the real set's, with their recall and
    coverage beside the floor's ({} when the classes do not fall short, or there is no classifier)."""
    classes = prior["classes"]
    if classes is None or (classes["covered"] >= COLLAPSE_FRACTION
                           and classes["entropy"] >= COLLAPSE_FRACTION * classes["entropy_real"]):
        return {}
    return {"classes_covered": classes["classes_covered"], "classes_real": classes["classes_real"],
            "class_entropy": classes["entropy"], "class_entropy_real": classes["entropy_real"],
            "recall": prior["recall"], "recall_real": floor["recall"], "coverage": prior["coverage"],
            "coverage_real": floor["coverage"]}


def _images(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor of images, got {type(x).__name__}")
    if x.is_meta or not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must hold finite floating-point pixels in [0, 1]")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise ValueError(f"{name} must hold pixels in [0, 1], got values in [{low:g}, {high:g}]"
                         + (" (8-bit pixels: divide by 255)" if high > 1 and low >= 0 else ""))
    return x


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
