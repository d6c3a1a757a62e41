"""How good are samples? Numbers comparing a set of generated (fake) features with a set of real ones.

Every function takes (N, d) feature matrices (tensors or numpy arrays, one row per image) and works in
float64 on the first argument's device:

- ``fid``: the Fréchet distance between Gaussians fitted to the two sets (Heusel et al. 2017), closed form
  ``frechet_distance``;
- ``kid``: the unbiased squared MMD under a cubic polynomial kernel, over random subsets (Bińkowski et al. 2018);
- ``precision_recall``: how much of the fakes lies on the real manifold and vice versa (Kynkäänniemi et al. 2019);
- ``density_coverage``: the same, robust to outliers (Naeem et al. 2020); ``prdc``: all four at once;
- ``class_coverage``: which classes a classifier finds in the fakes, against the real histogram;
- ``confusion`` and ``class_shares``: the classifier's confusion on real images, estimated from its
  probabilities, and the true class shares behind predicted classes through it;
- ``nearest``, ``nearest_other``: each query's nearest reference row (a fake that sits on a training image is
  memorised), each row's nearest other row; ``distinct``: how many rows are not repeats of earlier ones.

The k-NN metrics use exact pairwise distances (differences, not the |a|^2 + |b|^2 - 2ab expansion), so a
point's distance to itself is exactly 0 and equal pairs give equal distances; they work in row blocks of at
most ``_BLOCK`` distances, so 10k x 10k sets need ~128 MiB, not 800.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from funcvae.rng import generator
from funcvae.checks import check_int

_BLOCK = 1 << 24  # distances per block: 128 MiB in float64
#: Eigenvalues of a d x d covariance below d times this times its largest are roundoff, taken as 0 (the rank
#: tolerance of LAPACK and numpy's ``matrix_rank``: float64's machine epsilon).
_RANK_TOLERANCE = torch.finfo(torch.float64).eps


def fid(real, fake) -> float:
    """FID: the ``frechet_distance`` of the feature sets' means and unbiased covariances (Heusel et al. 2017
    with Inception features; here any features).

    Args:
      real: (N, d) features, N >= 2.
      fake: (M, d) features, M >= 2.

    Returns:
      The distance in squared feature units, >= 0; 0 up to roundoff for identical sets. Its estimate is biased
      upwards by O(d/N) (the fitted means alone add tr(cov_real)/N + tr(cov_fake)/M), so compare FIDs at
      equal sample sizes.
    """
    real, fake = _pair(real, fake, rows=2)
    return frechet_distance(real.mean(0), torch.cov(real.T), fake.mean(0), torch.cov(fake.T))


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Squared 2-Wasserstein (Fréchet) distance between N(mu1, cov1) and N(mu2, cov2):
    |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2).

    The cross term tr((cov1^1/2 cov2 cov1^1/2)^1/2) is the sum of the singular values of cov1^1/2 cov2^1/2, so
    no square root is taken of a product of covariances: roundoff of order eps |cov|^2 in a product would
    become an error of order sqrt(eps) |cov| in its root. Each covariance root comes from a symmetric
    eigendecomposition whose eigenvalues below ``_RANK_TOLERANCE`` (d eps times the largest, float64's eps:
    what ``eigh`` cannot tell from 0) are set to 0, and the traces are the sums of the kept eigenvalues, so
    feature units that are constant on both sets (a ReLU unit dead on every image) add nothing, not the
    square roots of their roundoff. A Gaussian's distance to itself is then 0 within d eps |cov| (about
    1e-14 of tr(cov)); the result is clamped at 0 against that remainder.

    Args:
      mu1, mu2: (d,) means.
      cov1, cov2: (d, d) covariances (symmetric positive semi-definite).

    Returns:
      The distance in squared units of the means, >= 0.
    """
    return max(float(_frechet(mu1, cov1, mu2, cov2)), 0.0)


def _frechet(mu1, cov1, mu2, cov2) -> Tensor:
    """``frechet_distance`` before its clamp at 0, validated, as a float64 scalar tensor."""
    mu1 = _tensor(mu1, "mu1", ndim=1)
    device, d = mu1.device, mu1.shape[0]
    mu2 = _tensor(mu2, "mu2", ndim=1, shape=(d,), device=device)
    cov1 = _tensor(cov1, "cov1", ndim=2, shape=(d, d), device=device)
    cov2 = _tensor(cov2, "cov2", ndim=2, shape=(d, d), device=device)
    (root1, trace1), (root2, trace2) = _root(cov1), _root(cov2)
    cross = torch.linalg.svdvals(root1 @ root2).sum()
    return (mu1 - mu2).square().sum() + trace1 + trace2 - 2 * cross


def kid(real, fake, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): the unbiased estimate of MMD^2 between the sets under
    k(x, y) = (x.y / d + 1)^3, on ``subsets`` random subsets of each set.

    Each subset draws min(subset_size, N, M) rows of each set without replacement, from the stream
    ``funcvae.rng.generator(seed, "kid")``; where that is every row of both sets, each subset is both whole
    sets, so their one estimate is computed once (std 0). The estimate is unbiased, so it is ~0 (and can be
    negative) for samples of the same distribution.

    Args:
      real: (N, d) features, N >= 2.
      fake: (M, d) features, M >= 2.
      subsets: how many subsets.
      subset_size: rows per subset and set, >= 2.
      seed: names the subsets.

    Returns:
      (mean, std) of the subsets' estimates; the std over subsets (population, ddof 0, as common implementations
      report it) is their spread, not the standard error of the mean.
    """
    real, fake = _pair(real, fake, rows=2)
    subsets = check_int("subsets", subsets)
    size = min(check_int("subset_size", subset_size, minimum=2), real.shape[0], fake.shape[0])
    if size == real.shape[0] == fake.shape[0]:
        return float(_mmd2(real, fake)), 0.0
    draws = generator(seed, "kid")
    estimates = torch.stack([_mmd2(_subset(real, size, draws), _subset(fake, size, draws)) for _ in range(subsets)])
    return float(estimates.mean()), float(estimates.std(correction=0))


def precision_recall(real, fake, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls.

    Each point's ball is centred on it with radius the distance to its k-th nearest other point of its own set;
    balls are open (a point at exactly the radius is outside), as in the reference code of Naeem et al. 2020.
    Ties matter only for repeated points: k+1 copies of a point give it a ball of radius 0, which holds nothing.

    Args:
      real: (N, d) features, N >= k + 1.
      fake: (M, d) features, M >= k + 1.
      k: the neighbour that sets the radii.

    Returns:
      (precision, recall): the fraction of fake points inside some real point's ball, and the fraction of real
      points inside some fake point's ball; each in [0, 1].
    """
    k = check_int("k", k)
    real, fake = _pair(real, fake, rows=k + 1)
    fake_in_real = _inside(fake, real, *_radii(real, k))[0]
    real_in_fake = _inside(real, fake, *_radii(fake, k))[0]
    return float((fake_in_real > 0).double().mean()), float((real_in_fake > 0).double().mean())


def density_coverage(real, fake, *, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020), with the open k-NN balls of ``precision_recall`` around the
    real points only.

    Args:
      real: (N, d) features, N >= k + 1.
      fake: (M, d) features, M >= 1.
      k: the neighbour that sets the radii.

    Returns:
      (density, coverage): density = (1 / (k M)) sum_j #{real balls holding fake j}, >= 0 and unbounded
      above, with expectation 1 when the fakes are drawn like the reals (exactly 1 for fake = real without
      ties: each ball holds its centre and k - 1 others); coverage = the fraction of real balls that hold
      some fake point, in [0, 1].
    """
    k = check_int("k", k)
    real = _features(real, "real", rows=k + 1)
    fake = _features(fake, "fake", rows=1, like=("real", real))
    counts, hit = _inside(fake, real, *_radii(real, k))
    return int(counts.sum()) / (k * fake.shape[0]), float(hit.double().mean())


def prdc(real, fake, *, k_pr: int = 3, k_dc: int = 5) -> dict:
    """``precision_recall(real, fake, k=k_pr)`` and ``density_coverage(real, fake, k=k_dc)`` together, the same
    numbers from one pass over each distance matrix (real-real, fake-fake, fake-real) instead of six: what
    scoring one set of samples needs. The fake-real distances serve the recall too, as exact distances are
    symmetric to the bit.

    Returns:
      ``{"precision", "recall", "density", "coverage"}``.
    """
    k_pr, k_dc = check_int("k_pr", k_pr), check_int("k_dc", k_dc)
    real = _features(real, "real", rows=max(k_pr, k_dc) + 1)
    fake = _features(fake, "fake", rows=k_pr + 1, like=("real", real))
    real_pr, real_dc = _radii(real, k_pr, k_dc)
    (fake_pr,) = _radii(fake, k_pr)
    precise = torch.zeros(fake.shape[0], dtype=torch.bool, device=real.device)
    recalled, covered = (torch.zeros(real.shape[0], dtype=torch.bool, device=real.device) for _ in range(2))
    held = 0
    for rows in _blocks(fake.shape[0], real.shape[0]):
        d = _distances(fake[rows], real)  # (block of fakes, reals)
        precise[rows] = (d < real_pr).any(1)
        recalled |= (d < fake_pr[rows, None]).any(0)
        inside = d < real_dc
        held += int(inside.sum())
        covered |= inside.any(0)
    return {"precision": float(precise.double().mean()), "recall": float(recalled.double().mean()),
            "density": held / (k_dc * fake.shape[0]), "coverage": float(covered.double().mean())}


def class_coverage(real_classes, fake_classes, classes: int) -> dict:
    """How the predicted classes of the fakes cover those of the real images.

    Args:
      real_classes: (N,) integer class ids in [0, classes) of real images (a classifier's predictions).
      fake_classes: (M,) the same for the fakes.
      classes: how many classes there are.

    Returns:
      ``covered``: the fraction of the classes present in real that are present in fake, in [0, 1];
      ``classes_covered``, ``classes_real``: those two counts;
      ``kl``: KL(fake histogram || real histogram) in nats. This direction is finite whenever the fakes use
      only classes the real images have, so a generator that drops classes gets a finite number (the other
      direction would be infinite); it is ``inf`` when the fakes use a class the real images lack;
      ``entropy``, ``entropy_real``: the entropies of the fake and real histograms in nats (log(classes) for
      a uniform histogram, 0 for one class).
    """
    classes = check_int("classes", classes)
    real = _histogram(real_classes, "real_classes", classes)
    fake = _histogram(fake_classes, "fake_classes", classes)
    present = real > 0
    covered = int((present & (fake > 0)).sum())
    kl = torch.where(fake > 0, fake * (fake.log() - real.log()), 0.0).sum()
    return {"covered": covered / int(present.sum()), "classes_covered": covered, "classes_real": int(present.sum()),
            "kl": float(kl), "entropy": _entropy(fake), "entropy_real": _entropy(real)}


def nearest(queries, reference, *, chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """The nearest reference row of each query, by Euclidean distance (the first one on ties).

    Args:
      queries: (Q, d) rows, Q >= 1.
      reference: (R, d) rows, R >= 1.
      chunk: queries per block; None: as many as keep a block at ``_BLOCK`` distances (128 MiB).

    Returns:
      (distances, indices): (Q,) float64 distances in feature units and (Q,) int64 rows of ``reference``.
    """
    queries = _features(queries, "queries", rows=1)
    reference = _features(reference, "reference", rows=1, like=("queries", queries))
    step = None if chunk is None else check_int("chunk", chunk)
    blocks = _blocks(queries.shape[0], reference.shape[0], step)
    parts = [_distances(queries[rows], reference).min(1) for rows in blocks]
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


def nearest_other(x) -> Tensor:
    """(N,) each row's distance to its nearest other row of ``x`` (N >= 2; 0 for a repeated row)."""
    return _radii(_features(x, "x", rows=2), 1)[0]


def distinct(x, radius: float) -> int:
    """How many rows of ``x`` (N, d) are distinct: have no earlier row within ``radius`` (inclusive, exact
    distances), so k copies of one row count once."""
    x = _features(x, "x", rows=1)
    earlier = [(_distances(x[rows], x[:rows.stop]) <= radius).tril(rows.start - 1).any(1)
               for rows in _blocks(x.shape[0], x.shape[0])]
    return x.shape[0] - int(torch.cat(earlier).sum())


def confusion(probabilities) -> Tensor:
    """A classifier's confusion matrix estimated from its class probabilities on real images, without labels.

    Row t, column j estimates P(predicted j | true class t) as sum_i p_i(t) [argmax p_i = j] / sum_i p_i(t):
    exact in expectation for a calibrated classifier (one whose p(t | x) is the share of class t among images
    like x). A row of a class the images hold no probability of is that class predicted right.

    Args:
      probabilities: (N, K) class probabilities of N real images (rows summing to 1).

    Returns:
      (K, K) float64, rows summing to 1.
    """
    p = _features(probabilities, "probabilities", rows=1)
    predicted = torch.nn.functional.one_hot(p.argmax(1), p.shape[1]).double()
    weight = p.sum(0)
    rows = (p.T @ predicted) / weight.clamp(min=torch.finfo(torch.float64).tiny)[:, None]
    return torch.where((weight > 0)[:, None], rows, torch.eye(p.shape[1], dtype=p.dtype, device=p.device))


def class_shares(classes, confusion_matrix, *, steps: int = 1000) -> Tensor:
    """The shares of the true classes behind predicted class ids, through the classifier's confusion.

    A set of images of true class shares pi is predicted with class shares pi @ C (C: ``confusion``); the
    maximum-likelihood pi of the predicted counts is found by expectation-maximisation (the label-shift
    estimate of Saerens et al. 2002, on counts). Misclassification alone puts predictions in classes the
    images do not hold (about 10% of shirts are called T-shirts); the estimate gives those classes ~0.

    Args:
      classes: (M,) predicted class ids in [0, K).
      confusion_matrix: (K, K) P(predicted j | true t), rows summing to 1.
      steps: EM steps from the uniform shares.

    Returns:
      (K,) float64 shares summing to 1.
    """
    c = _tensor(confusion_matrix, "confusion_matrix", ndim=2)
    k = c.shape[0]
    if c.shape[1] != k:
        raise ValueError(f"confusion_matrix must be square (K, K), got shape {tuple(c.shape)}")
    counts = _histogram(classes, "classes", k).to(c.device)
    shares = torch.full((k,), 1 / k, dtype=torch.float64, device=c.device)
    for _ in range(check_int("steps", steps)):
        predicted = (shares @ c).clamp(min=torch.finfo(torch.float64).tiny)
        shares = shares * (c @ (counts / predicted))
    return shares / shares.sum()


def _mmd2(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 between (m, d) samples ``x`` and ``y`` under the cubic kernel: off-diagonal means within
    each set, minus twice the mean across."""
    m = x.shape[0]
    within = [_kernel(a, a) for a in (x, y)]
    same = sum((kk.sum() - kk.diagonal().sum()) / (m * (m - 1)) for kk in within)
    return same - 2 * _kernel(x, y).mean()


def _kernel(x: Tensor, y: Tensor) -> Tensor:
    """(m, n) cubic polynomial kernel (x.y / d + 1)^3 of Bińkowski et al."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _subset(x: Tensor, size: int, draws: torch.Generator) -> Tensor:
    """``size`` rows of ``x`` drawn without replacement."""
    return x[torch.randperm(x.shape[0], generator=draws)[:size].to(x.device)]


def _distances(a: Tensor, b: Tensor) -> Tensor:
    """(n, m) exact Euclidean distances (from differences: 0 for equal rows, the same for equal pairs)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _blocks(rows: int, columns: int, step: int | None = None):
    """Row slices of an (rows, columns) distance matrix, ``step`` rows each (None: ``_BLOCK`` distances)."""
    step = step or max(1, _BLOCK // columns)
    return [slice(start, start + step) for start in range(0, rows, step)]


def _radii(x: Tensor, *ks: int) -> tuple[Tensor, ...]:
    """For each k of ``ks``, (N,) distance from each row to its k-th nearest other row (row itself, at distance 0,
    skipped); one pass over the distances serves every k."""
    n = x.shape[0]
    nearest = torch.cat([_distances(x[rows], x).topk(max(ks) + 1, dim=1, largest=False).values
                         for rows in _blocks(n, n)])
    return tuple(nearest[:, k] for k in ks)


def _inside(points: Tensor, centres: Tensor, radii: Tensor) -> tuple[Tensor, Tensor]:
    """For open balls (``centres``, ``radii``): (P,) how many balls hold each point, (C,) whether each ball
    holds some point."""
    counts, hit = [], torch.zeros(centres.shape[0], dtype=torch.bool, device=centres.device)
    for rows in _blocks(points.shape[0], centres.shape[0]):
        inside = _distances(points[rows], centres) < radii
        counts.append(inside.sum(1))
        hit |= inside.any(0)
    return torch.cat(counts), hit


def _entropy(histogram: Tensor) -> float:
    """Entropy in nats of a histogram of probabilities (empty bins contribute 0)."""
    return 0.0 - float(torch.where(histogram > 0, histogram * histogram.log(), 0.0).sum())  # 0.0, never -0.0


def _histogram(ids, name: str, classes: int) -> Tensor:
    """(classes,) float64 frequencies of the integer class ids ``ids``; ValueError naming ``name`` unless they
    are a non-empty 1-D integer array with values in [0, classes)."""
    ids = _as_tensor(ids, name)
    if ids.ndim != 1 or ids.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of class ids, got shape {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class ids, got dtype {ids.dtype}")
    ids = ids.to(torch.int64)
    if int(ids.min()) < 0 or int(ids.max()) >= classes:
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ValueError(f"{name} must lie in [0, {classes}) (classes={classes}), got class id {bad}")
    return torch.bincount(ids, minlength=classes).double() / ids.shape[0]


def _pair(real, fake, *, rows: int) -> tuple[Tensor, Tensor]:
    """Both feature sets validated (``rows`` rows at least, the same width), on ``real``'s device."""
    real = _features(real, "real", rows=rows)
    return real, _features(fake, "fake", rows=rows, like=("real", real))


def _features(x, name: str, *, rows: int, like: tuple[str, Tensor] | None = None) -> Tensor:
    """``x`` as an (N, d) float64 tensor; ValueError naming ``name`` unless it is 2-D with N >= ``rows``,
    d >= 1 and finite, and (given ``like``, a name and a tensor) as wide as that tensor and moved to its device."""
    other, device = (None, None) if like is None else (like[0], like[1].device)
    x = _tensor(x, name, ndim=2, device=device)
    if x.shape[0] < rows or x.shape[1] == 0:
        raise ValueError(f"{name} must be an (N, d) feature matrix with N >= {rows} and d >= 1, "
                         f"got shape {tuple(x.shape)}")
    if like is not None and x.shape[1] != like[1].shape[1]:
        raise ValueError(f"{name} has {x.shape[1]} features per row but {other} has {like[1].shape[1]}")
    return x


def _tensor(x, name: str, *, ndim: int, shape: tuple | None = None, device=None) -> Tensor:
    """``x`` as a finite float64 tensor of ``ndim`` dims (and ``shape``), on ``device`` (None: its own)."""
    x = _as_tensor(x, name)
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.ndim != ndim or (shape is not None and tuple(x.shape) != shape):
        want = f"shape {shape}" if shape is not None else f"{ndim} dimensions"
        raise ValueError(f"{name} must have {want}, got shape {tuple(x.shape)}")
    x = x.to(dtype=torch.float64, device=device)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or Inf")
    return x


def _as_tensor(x, name: str) -> Tensor:
    """A tensor (detached) or numpy array as a tensor; TypeError naming ``name`` for anything else."""
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray) and x.dtype.kind in "biuf":
        return torch.tensor(x)
    raise TypeError(f"{name} must be a torch.Tensor or a numeric numpy array, got {type(x).__name__}"
                    + (f" of dtype {x.dtype}" if isinstance(x, np.ndarray) else ""))


def _root(cov: Tensor) -> tuple[Tensor, Tensor]:
    """The symmetric square root of a covariance and its trace, from the eigenvalues of its symmetric part that
    exceed ``_RANK_TOLERANCE`` times the largest (the rest, roundoff around 0, are taken as 0)."""
    values, vectors = torch.linalg.eigh((cov + cov.T) / 2)
    values = torch.where(values > _RANK_TOLERANCE * cov.shape[0] * values.abs().max(), values, 0.0)
    return (vectors * values.sqrt()) @ vectors.T, values.sum()
