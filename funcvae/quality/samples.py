"""Are a model's samples realistic and diverse? Its prior samples and its reconstructions, each scored against
held-out real images on a domain classifier's features, beside the same scores of real images against real
images (the floor every figure is read against); the verdicts that follow from them (``rules``).

``assess`` scores sets of images, whatever made them; ``sample_quality`` makes a model's sets and assesses
them. The sets are made to be alike in all but what is measured: the real images are split into two
disjoint halves of ``n``; the first half is the reference, and the samples (``n``), the reconstructions of
the second half and the second half itself are each compared with it. Every metric is computed on sets of
the same size, so their finite-sample biases (FID's grows as 1/n) are the same.

Each verdict's rule and threshold, set on image sets whose truth is known, is in ``funcvae.quality.rules``.
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
from funcvae.quality.rules import memorisation, verdicts
from funcvae.rng import generator
from funcvae.checks import check_int

#: Two images are the same (duplicates) when their features lie within this fraction of the reference's median
#: distance from an image to its nearest other one: on Fashion-MNIST the copies of an image with Gaussian
#: noise of 0.005 lie at 0.04 of it, two distinct real images at 0.3 or more, two distinct images blurred
#: into blobs (4 pixels) at 0.04 or more.
DUPLICATE_RADIUS = 0.02


class Embedded(NamedTuple):
    """Images as the feature network sees them: ``features`` (N, d) float64, predicted ``classes`` (N,) and
    class ``probabilities`` (N, K) float64, or None for a feature function without a classifier."""

    features: Tensor
    classes: Tensor | None
    probabilities: Tensor | None = None


@renamed_keyword("network_name", "network")
def embed(x, *, network: str | Callable = "fashion-mnist") -> Embedded:
    """``x`` (N, 784), (N, 28, 28) or (N, 1, 28, 28) images in [0, 1] through the feature network: a name of
    ``quality.network.NETWORKS`` or a function of the images returning (N, d) features, or (features, logits)."""
    x = _images(x, "x")
    if callable(network):
        feats, logits = _returned(network(x), x.shape[0])
    else:
        feats, logits = networks.features(network, x)
    if logits is None:
        return Embedded(feats.detach().double(), None)
    return Embedded(feats.detach().double(), logits.argmax(-1), logits.detach().double().softmax(-1))


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
    and std, precision and recall (k=3), density and coverage (k=5), the shares of ``distinct`` images in
    both (``DUPLICATE_RADIUS``); with a classifier, ``classes``: ``metrics.class_coverage`` of the predicted
    classes, and the true class ``shares`` behind them (``metrics.class_shares``, through the confusion
    estimated from the classifier's probabilities on ``real``) with their ``effective`` number of classes, the
    exponential of their entropy, in both (k for k equal classes)."""
    return _scores(real, other, _Reference.of(real), seed=seed)


class _Reference(NamedTuple):
    """What ``scores`` reads of the reference alone, found once for all the sets scored against it."""

    radius: float  # within which two images are duplicates
    distinct: float  # the reference's share of distinct images
    confusion: Tensor | None  # the classifier's, estimated from its probabilities on the reference
    effective: float | None  # the reference's effective number of classes

    @staticmethod
    def of(real: Embedded) -> _Reference:
        radius = DUPLICATE_RADIUS * float(metrics.nearest_other(real.features).median())
        distinct = metrics.distinct(real.features, radius) / real.features.shape[0]
        if real.probabilities is None:
            return _Reference(radius, distinct, None, None)
        confusion = metrics.confusion(real.probabilities)
        return _Reference(radius, distinct, confusion, _effective(metrics.class_shares(real.classes, confusion)))


def _scores(real: Embedded, other: Embedded, known: _Reference, *, seed: int) -> dict:
    """``scores``, with the figures of the reference alone already ``known``."""
    kid, kid_std = metrics.kid(real.features, other.features, seed=seed)
    out = {"fid": metrics.fid(real.features, other.features), "kid": kid, "kid_std": kid_std,
           **metrics.prdc(real.features, other.features),
           "distinct": metrics.distinct(other.features, known.radius) / other.features.shape[0],
           "distinct_real": known.distinct, "classes": None}
    if real.classes is not None and other.classes is not None:
        shares = None if known.confusion is None else metrics.class_shares(other.classes, known.confusion)
        out["classes"] = {**metrics.class_coverage(real.classes, other.classes, networks.CLASSES),
                          "shares": None if shares is None else shares.tolist(),
                          "effective": None if shares is None else _effective(shares),
                          "effective_real": known.effective}
    return out


def _effective(shares: Tensor) -> float:
    """The effective number of classes of class shares: the exponential of their entropy (k for k equal)."""
    return math.exp(-float(torch.where(shares > 0, shares * shares.log(), 0.0).sum()))


def assess(samples, real, *, reconstructions=None, train=None, seed: int = 0,
           network: str | Callable = "fashion-mnist") -> dict:
    """Score image sets and judge them: samples against real images, beside reconstructions and the floor.

    ``real`` is split into a reference half ``real[:n]`` and a floor half ``real[n:2 n]``, with
    ``n = min(len(samples), len(real) // 2)``; the first ``n`` samples, the reconstructions of the floor half
    and the floor half itself are each scored against the reference.

    Args:
      samples: (M, ...) generated images in [0, 1], as ``embed`` takes them.
      real: (N, ...) held-out real images, N >= 12.
      reconstructions: the reconstructions of ``real`` row for row (N images), or of its floor half alone
        (n images); None: not scored, and no prior-hole verdict.
      train: the training images, for the memorisation check (None: no check).
      seed: names KID's subsets.
      network: the feature network (a name of ``quality.network.NETWORKS``) or a function (see ``embed``).

    Returns:
      ``{"n", "network", "spread" (tr(cov) of the reference's features), "sets": {set: scores},
      "memorisation": dict or None, "verdicts": [...]}``; the sets are ``SETS`` (each ``scores``; no
      "reconstructions" without them); the verdicts are ``verdicts``'.
    """
    samples, real = _images(samples, "samples"), _images(real, "real")
    n = min(samples.shape[0], real.shape[0] // 2)
    if n < 6:
        raise ValueError(f"assess needs 6 samples and 12 real images at least (sets of n >= 6: the reference "
                         f"half, the floor half); got {samples.shape[0]} and {real.shape[0]}")
    made = {"prior samples": samples[:n]}
    if reconstructions is not None:
        made["reconstructions"] = _floor_half(_images(reconstructions, "reconstructions"), real.shape[0], n)
    made["real"] = real[n:2 * n]
    with torch.no_grad():
        reference = embed(real[:n], network=network)
        known = _Reference.of(reference)
        embedded = {name: embed(images, network=network) for name, images in made.items()}
        result = {"n": n, "network": network if isinstance(network, str) else _name(network),
                  "spread": float(torch.cov(reference.features.T).trace()),
                  "sets": {name: _scores(reference, e, known, seed=seed) for name, e in embedded.items()},
                  "memorisation": None}
        if train is not None:
            result["memorisation"] = memorisation(made["prior samples"], made["real"], _images(train, "train"))
    result["verdicts"] = verdicts(result)
    return result


def _floor_half(recon: Tensor, real: int, n: int) -> Tensor:
    """The reconstructions of the floor half: rows n:2n of reconstructions of all ``real`` images, or all n."""
    if recon.shape[0] == real:
        return recon[n:2 * n]
    if recon.shape[0] == n:
        return recon
    raise ValueError(f"reconstructions must be of the real images row for row ({real}) or of their floor half "
                     f"real[{n}:{2 * n}] ({n}); got {recon.shape[0]}")


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
      ``assess``'s result with the verdicts as ``"findings"``: ``{"n", "network", "spread", "sets":
      {set: scores}, "memorisation": dict or None, "findings": [...]}``.
    """
    check_params(params)
    x, c = examples_and_context(params, x_real, context, name="x_real")
    x = _images(x, "x_real")
    x_train = None if x_train is None else _images(examples_of(params, x_train, name="x_train"), "x_train")
    n = x.shape[0] // 2 if n is None else check_int("n", n, minimum=6)
    if n < 6 or 2 * n > x.shape[0]:
        raise ValueError(f"x_real has {x.shape[0]} images; sample_quality needs 2 n of them (n = {n} >= 6: the "
                         "reference half and the real half it is compared with)")
    with torch.no_grad():
        recon = reconstruction_images(params, x[n:2 * n], seed=seed, context=None if c is None else c[n:2 * n])
        made = prior_images(params, n, seed=seed)
    result = assess(made, x[:2 * n], reconstructions=recon, train=x_train, seed=seed, network=network)
    result["findings"] = result.pop("verdicts")
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
