"""Disentanglement: how well a representation's dimensions line up with a data set's known generative factors.

Five scores, computed as disentanglement_lib (Locatello et al. 2019) computes them, with the settings of its
unsupervised study as defaults: MIG, SAP and DCI are pure functions of ``codes`` (N, D) and ``factors`` (N, K);
the FactorVAE and beta-VAE scores draw batches of images with one factor held fixed, so they take a function
that represents images, the images and their factors. ``codes`` is a funcvae model's representation (posterior
means by default) and ``scores`` every score of a model at once.

Factors are integer indices, (N, K) (a tensor, an array, or a dict of (N,) columns keyed by the factors' names,
as ``funcvae.synthetic.shapes`` returns them), one row per image; their rows are the draws of a product grid,
every factor independent of the others. Every number is float64; mutual information and entropy are in nats.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from funcvae.checks import check_int, check_nonnegative, check_scale
from funcvae.codec import encode
from funcvae.context import examples_and_context
from funcvae.contract import check_params
from funcvae.model import Params, some_leaf
from funcvae.rng import derive_seed, generator

#: Images a representation function is given at once by the FactorVAE and beta-VAE scores.
REPRESENT_CHUNK = 4096
_SAMPLES = 1024  # fixed-factor batches reduced at once: 1024 x 64 x D float64 codes


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


def mig(codes, factors, *, bins: int = 20, names: Sequence[str] | None = None) -> dict:
    """The mutual information gap (Chen et al. 2018), as disentanglement_lib's ``discrete_mig``.

    Each code dimension is cut into ``bins`` equal-width bins over its own range (numpy's histogram edges, the
    last bin closed); the plug-in mutual information of each binned dimension with each factor is read from
    their contingency table. A factor's gap is the information of its most informative dimension less that of
    the second, over the factor's entropy; MIG is the mean gap. Equal-width bins make MIG invariant to a strictly
    increasing affine map of a dimension; a nonlinear monotone map moves values between bins. The plug-in
    estimate is biased upwards by about (bins - 1)(values - 1) / (2 N) nats for an independent pair.

    Args:
      codes: (N, D) real numbers, D >= 2 (disentanglement_lib: 10,000 rows).
      factors: (N, K) integers, each factor taking at least two values (see the module's docstring).
      bins: bins per code dimension, >= 2 (disentanglement_lib: 20).
      names: the factors' names (default: a dict's keys, else "factor 0", ...).

    Returns:
      ``{"mig", "per_factor" (K,), "mutual_information" (D, K) nats, "entropy" (K,) nats, "factors" (names)}``.
    """
    bins = check_int("bins", bins, minimum=2)
    z, y, names = _pair(codes, factors, names, rows=2, dims=2)
    binned = np.stack([np.digitize(z[:, d], np.histogram_bin_edges(z[:, d], bins)[:-1]) for d in range(z.shape[1])],
                      axis=1)
    info = np.array([[mutual_information(binned[:, d], y[:, k]) for k in range(y.shape[1])]
                     for d in range(z.shape[1])])
    h = np.array([entropy(y[:, k]) for k in range(y.shape[1])])
    top = np.sort(info, axis=0)[::-1]
    gaps = (top[0] - top[1]) / h
    return {"mig": float(gaps.mean()), "per_factor": gaps, "mutual_information": info, "entropy": h,
            "factors": names}


def mutual_information(a, b) -> float:
    """The plug-in mutual information of two label arrays (N,) in nats: sum p(i, j) log p(i, j) / (p(i) p(j)) over
    the cells of their contingency table."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if len(a) != len(b) or not len(a):
        raise ValueError(f"mutual_information needs two label arrays of one length >= 1, got {len(a)} and {len(b)}")
    ia, ib = (np.unique(v, return_inverse=True)[1].ravel() for v in (a, b))
    nb = int(ib.max()) + 1
    table = np.bincount(ia * nb + ib, minlength=(int(ia.max()) + 1) * nb).reshape(-1, nb).astype(np.float64)
    n = float(len(ia))
    expected = np.outer(table.sum(1), table.sum(0))
    seen = table > 0
    return max(0.0, float(np.sum(table[seen] / n * np.log(table[seen] * n / expected[seen]))))


def entropy(a) -> float:
    """The plug-in entropy of a label array (N,) in nats."""
    p = np.unique(np.asarray(a), return_counts=True)[1] / len(a)
    return float(-np.sum(p * np.log(p)))


def most_informative(mutual_information, *, minimum: float = 0.0) -> np.ndarray:
    """For each code dimension, the factor it holds most information about: (D,) int64 factor indices from a
    (D, K) matrix in nats (``mig(...)["mutual_information"]``), -1 where no factor has more than ``minimum``
    nats (a collapsed dimension; the plug-in bias, (bins - 1)(values - 1) / (2 N), is a fair ``minimum``).
    Ties go to the lower factor index."""
    m = np.asarray(mutual_information, dtype=np.float64)
    minimum = check_nonnegative("minimum", minimum)
    if m.ndim != 2 or m.shape[1] < 1 or not np.isfinite(m).all():
        raise ValueError(f"mutual_information must be a finite (D, K) matrix, got shape {m.shape}")
    return np.where(m.max(1) > minimum, m.argmax(1), -1).astype(np.int64)


def sap(codes, factors, *, train: int | None = None, names: Sequence[str] | None = None) -> dict:
    """The separated attribute predictability (Kumar et al. 2018), as disentanglement_lib's score of discrete
    factors (``continuous_factors=False``).

    For each code dimension and factor, a one-feature ``sklearn.svm.LinearSVC(C=0.01, class_weight="balanced")``
    (sklearn's defaults otherwise; with one feature its ``dual="auto"`` solves the primal, which draws no random
    numbers) learns the factor from the dimension on the first ``train`` rows; its accuracy on the remaining
    rows is the score. A factor's SAP is the gap between its two best dimensions' scores; SAP is the mean gap.
    The codes are not standardised and the SVM's intercept is penalised, so SAP changes under rescaling; it is
    invariant to permuting the dimensions.

    Args:
      codes: (N, D) real numbers, D >= 2; factors: (N, K) integers (see ``mig``).
      train: the number of leading rows that train, the rest scoring (give the rows in random order). Default:
        two thirds, the ratio of disentanglement_lib's 10,000 training and 5,000 test points.
      names: the factors' names.

    Returns:
      ``{"sap", "per_factor" (K,), "score_matrix" (D, K) held-out accuracies, "factors"}``.
    """
    z, y, names = _pair(codes, factors, names, rows=2, dims=2)
    t = _split(y, train)
    from sklearn.svm import LinearSVC  # imported here: sklearn takes a second to import

    score = np.zeros((z.shape[1], y.shape[1]))
    for d in range(z.shape[1]):
        for k in range(y.shape[1]):
            svm = LinearSVC(C=0.01, class_weight="balanced").fit(z[:t, d:d + 1], y[:t, k])
            score[d, k] = np.mean(svm.predict(z[t:, d:d + 1]) == y[t:, k])
    top = np.sort(score, axis=0)
    gaps = top[-1] - top[-2]
    return {"sap": float(gaps.mean()), "per_factor": gaps, "score_matrix": score, "factors": names}


def dci(codes, factors, *, train: int | None = None, seed: int = 0, names: Sequence[str] | None = None) -> dict:
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018), as disentanglement_lib's.

    For each factor, a ``sklearn.ensemble.GradientBoostingClassifier`` with sklearn's default settings (100
    stages of depth-3 trees, learning rate 0.1, no subsampling), ``random_state = derive_seed(seed, "dci") %
    2**32`` (it breaks ties between equally good splits), learns the factor from all dimensions on the first
    ``train`` rows. Its ``feature_importances_`` are the factor's column of the (D, K) importance matrix R.
    Disentanglement is 1 minus the entropy (base K) of each row of R, normalised, weighted by the row's share of
    R; completeness the same of each column (base D); informativeness the mean accuracy over the factors, on
    the training rows and on the rest. Trees split on the order of values: scaling a dimension by a power of two
    changes nothing; permuting dimensions permutes the rows of R and moves the scores only where a tree takes
    another of equally good splits (sklearn visits the features in a random order; ties come in nodes of a few
    rows).

    Args:
      codes: (N, D) real numbers, D >= 2; factors: (N, K) integers, K >= 2 (see ``mig``).
      train: the number of leading rows that train (default: two thirds, as ``sap``).
      seed: names the classifiers' random state.
      names: the factors' names.

    Returns:
      ``{"disentanglement", "completeness", "informativeness_train", "informativeness_test", "importance" (D, K),
      "factors"}``.
    """
    z, y, names = _pair(codes, factors, names, rows=2, dims=2, factor_count=2)
    t = _split(y, train)
    state = derive_seed(seed, "dci") % 2**32
    from sklearn.ensemble import GradientBoostingClassifier

    importance = np.zeros((z.shape[1], y.shape[1]))
    fit, held = np.zeros(y.shape[1]), np.zeros(y.shape[1])
    for k in range(y.shape[1]):
        trees = GradientBoostingClassifier(random_state=state).fit(z[:t], y[:t, k])
        importance[:, k] = np.abs(trees.feature_importances_)
        fit[k] = np.mean(trees.predict(z[:t]) == y[:t, k])
        held[k] = np.mean(trees.predict(z[t:]) == y[t:, k])
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    weights = weights / weights.sum()
    return {"disentanglement": float(np.sum((1 - _entropy_base(importance, axis=1)) * weights.sum(1))),
            "completeness": float(np.sum((1 - _entropy_base(importance, axis=0)) * weights.sum(0))),
            "informativeness_train": float(fit.mean()), "informativeness_test": float(held.mean()),
            "importance": importance, "factors": names}


def factor_vae_score(represent: Callable, images, factors, *, seed: int = 0, batch_size: int = 64,
                     train: int = 10000, eval: int = 5000, variance_estimate: int = 10000, prune: float = 0.05,
                     names: Sequence[str] | None = None) -> dict:
    """The FactorVAE score (Kim & Mnih 2018), as disentanglement_lib's, with its study's settings as defaults.

    Each dimension's variance is estimated on ``variance_estimate`` random images; dimensions whose standard
    deviation is below ``prune`` (or 0) are inactive. A vote draws a factor k, then a batch of ``batch_size``
    images with k held at one value (``_Grid``), and votes (k, d) for the active dimension d of least variance
    in the batch relative to its global variance. The majority vote classifier (each dimension's most voted
    factor, from ``train`` votes) is scored on ``eval`` new votes: the score. A representation with no active
    dimension scores 0, with a note, as in disentanglement_lib. On a finite data set, codes that ignore the
    factors score a little above chance 1/K: the classifier learns the variances of each value's own rows;
    negligible where each value has thousands of rows.

    Args:
      represent: images -> (n, D) codes, a function of each image alone, e.g. ``lambda x: codes(params, x)``;
        it is called on at most ``REPRESENT_CHUNK`` images at once, once for each distinct image of each draw
        (the variance images, the training votes', the eval votes').
      images: the data set's images, (N, ...) a tensor or array (a memory map is read only where drawn).
      factors: their (N, K) integer factors, K >= 2 (see the module's docstring).
      seed: names the draws.
      batch_size, train, eval, variance_estimate: images per vote (>= 2), votes that train and that score,
        images behind the global variances (>= 2).
      prune: the standard deviation below which a dimension is inactive (disentanglement_lib's study: 0.05).
      names: the factors' names.

    Returns:
      ``{"score" (= eval_accuracy), "train_accuracy", "eval_accuracy", "active" (dimensions), "note"}``.
    """
    y, names = factor_table(factors, names, rows=_length(images, "images"), factor_count=2)
    _check_represent(represent, images)
    batch_size = check_int("batch_size", batch_size, minimum=2)
    train, eval = check_int("train", train), check_int("eval", eval)
    variance_estimate = check_int("variance_estimate", variance_estimate, minimum=2)
    prune = check_nonnegative("prune", prune)
    grid = _Grid(y)
    spread = _Codes(represent, images, grid.rows(variance_estimate, generator(seed, "factor_vae", "variance")))
    variance = spread.of(np.arange(variance_estimate)).var(axis=0, ddof=1)
    active = np.flatnonzero((np.sqrt(variance) >= prune) & (variance > 0))
    if not len(active):
        return {"score": 0.0, "train_accuracy": 0.0, "eval_accuracy": 0.0, "active": 0, "factors": names,
                "note": f"no dimension has a standard deviation of at least prune={prune}: an empty representation "
                        "scores 0"}
    votes = [_votes(represent, images, grid, y.shape[1], count, batch_size, generator(seed, "factor_vae", part),
                    variance, active) for part, count in (("train", train), ("eval", eval))]
    majority = votes[0].argmax(0)
    train_acc, eval_acc = (float(v[majority, np.arange(v.shape[1])].sum() / v.sum()) for v in votes)
    return {"score": eval_acc, "train_accuracy": train_acc, "eval_accuracy": eval_acc, "active": len(active),
            "factors": names, "note": None}


def beta_vae_score(represent: Callable, images, factors, *, seed: int = 0, batch_size: int = 64,
                   train: int = 10000, eval: int = 5000, names: Sequence[str] | None = None) -> dict:
    """The beta-VAE score (Higgins et al. 2017), as disentanglement_lib's ``beta_vae_sklearn``.

    A point draws a factor k and ``batch_size`` pairs of images, each pair sharing its value of k (the first
    image at random, the second among the images with its value of k); its features are the mean absolute
    difference of the pairs' codes, (D,), and its label k. ``sklearn.linear_model.LogisticRegression`` with
    sklearn's defaults (L2, C=1, lbfgs, 100 iterations; ``random_state = derive_seed(seed, "beta_vae") % 2**32``)
    learns k from ``train`` points; its accuracy on ``eval`` new points is the score. Features that separate the
    factors exactly stop the solver at its iteration limit: ``converged`` says so (sklearn's warning is silenced).

    Args:
      represent, images, factors, seed, batch_size (>= 1), train (>= 2), eval, names: as ``factor_vae_score``.

    Returns:
      ``{"score" (= eval_accuracy), "train_accuracy", "eval_accuracy", "converged", "factors"}``.
    """
    y, names = factor_table(factors, names, rows=_length(images, "images"), factor_count=2)
    _check_represent(represent, images)
    batch_size = check_int("batch_size", batch_size)
    train, eval = check_int("train", train, minimum=2), check_int("eval", eval)
    grid = _Grid(y)
    points = [_pair_features(represent, images, grid, count, batch_size, generator(seed, "beta_vae", part))
              for part, count in (("train", train), ("eval", eval))]
    if len(np.unique(points[0][1])) < 2:
        raise ValueError(f"the {train} training points drew one factor only; the classifier needs two: raise train")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(random_state=derive_seed(seed, "beta_vae") % 2**32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(*points[0])
    _represented_like(points[1][0], points[0][0].shape[1])
    train_acc, eval_acc = (float(np.mean(model.predict(x) == k)) for x, k in points)
    return {"score": eval_acc, "train_accuracy": train_acc, "eval_accuracy": eval_acc,
            "converged": bool(np.max(model.n_iter_) < model.max_iter), "factors": names}


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


class _Grid:
    """A factor data set's rows by the value of each factor: draws of rows at random, and of rows that share one
    factor's value. A batch with factor k fixed is a value of k at random (uniform over its values, as a draw
    from the product grid is), then rows at random (with replacement) among those with that value."""

    def __init__(self, y: np.ndarray):
        n, count = y.shape
        orders, starts, sizes, inverses, first = [], [], [], [], [0]
        for k in range(count):
            order = np.argsort(y[:, k], kind="stable")
            _, start, size = np.unique(y[order, k], return_index=True, return_counts=True)
            orders.append(order)
            starts.append(start + k * n)
            sizes.append(size)
            inverses.append(np.unique(y[:, k], return_inverse=True)[1].ravel() + first[-1])
            first.append(first[-1] + len(size))
        self.rows_by_value = np.concatenate(orders)
        self.start, self.size = np.concatenate(starts), np.concatenate(sizes)
        self.first, self.value_of, self.n, self.count = np.array(first), np.stack(inverses, 1), n, count

    def rows(self, shape, gen: torch.Generator) -> np.ndarray:
        """Rows at random, with replacement: ``shape`` int64."""
        return _below(np.full(shape, self.n), gen)

    def factors(self, m: int, gen: torch.Generator) -> np.ndarray:
        """``m`` factor indices at random, (m,)."""
        return _below(np.full(m, self.count), gen)

    def among(self, values: np.ndarray, gen: torch.Generator) -> np.ndarray:
        """A row at random among those that hold each value (indices into the concatenated values of all
        factors), of ``values``' shape."""
        return self.rows_by_value[self.start[values] + _below(self.size[values], gen)]

    def fixed(self, ks: np.ndarray, size: int, gen: torch.Generator) -> np.ndarray:
        """For each factor of ``ks`` (m,), ``size`` rows with that factor at one value drawn at random: (m, size)."""
        values = self.first[ks] + _below(self.first[ks + 1] - self.first[ks], gen)
        return self.among(np.repeat(values[:, None], size, axis=1), gen)

    def pairs(self, ks: np.ndarray, size: int, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """For each factor of ``ks`` (m,), ``size`` rows at random and, for each, a row that shares its value of
        the factor: two (m, size)."""
        first = self.rows((len(ks), size), gen)
        return first, self.among(self.value_of[first, ks[:, None]], gen)


class _Codes:
    """The codes of the rows of an index array, each row represented once, in chunks."""

    def __init__(self, represent: Callable, images, rows: np.ndarray):
        unique, inverse = np.unique(rows.ravel(), return_inverse=True)
        parts = [_represented(represent, _take(images, unique[i:i + REPRESENT_CHUNK]))
                 for i in range(0, len(unique), REPRESENT_CHUNK)]
        for part in parts[1:]:
            _represented_like(part, parts[0].shape[1])
        self.table, self.where = np.concatenate(parts), inverse.reshape(rows.shape)

    def of(self, positions) -> np.ndarray:
        """The codes of ``rows[positions]`` (positions into the first axis of the rows): (..., D)."""
        return self.table[self.where[positions]]


def _votes(represent, images, grid: _Grid, factor_count: int, count: int, batch_size: int, gen: torch.Generator,
           variance: np.ndarray, active: np.ndarray) -> np.ndarray:
    """``count`` FactorVAE votes: (K, D) counts of (fixed factor, dimension of least relative variance)."""
    ks = grid.factors(count, gen)
    drawn = _Codes(represent, images, grid.fixed(ks, batch_size, gen))
    _represented_like(drawn.table, len(variance))
    votes = np.zeros((factor_count, len(variance)), np.int64)
    for s in range(0, count, _SAMPLES):
        local = drawn.of(slice(s, s + _SAMPLES)).var(axis=1, ddof=1)
        np.add.at(votes, (ks[s:s + _SAMPLES], active[np.argmin(local[:, active] / variance[active], axis=1)]), 1)
    return votes


def _pair_features(represent, images, grid: _Grid, count: int, batch_size: int,
                   gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` beta-VAE points: features (count, D), the mean |code difference| of each point's pairs, and
    labels (count,), the factor they share."""
    ks = grid.factors(count, gen)
    first, second = grid.pairs(ks, batch_size, gen)
    drawn = _Codes(represent, images, np.stack([first, second]))
    features = np.concatenate([np.abs(drawn.of((0, slice(s, s + _SAMPLES))) - drawn.of((1, slice(s, s + _SAMPLES))))
                               .mean(axis=1) for s in range(0, count, _SAMPLES)])
    return features, ks


def _below(high: np.ndarray, gen: torch.Generator) -> np.ndarray:
    """Integers uniform in [0, high) elementwise, int64 of ``high``'s shape."""
    u = torch.rand(high.shape, generator=gen, dtype=torch.float64).numpy()
    return np.minimum((u * high).astype(np.int64), high - 1)


def _pair(codes, factors, names, *, rows: int, dims: int, factor_count: int = 1):
    """``codes`` (N, D) float64 and ``factors`` (N, K) int64 checked against each other, and the names."""
    z = _code_array(codes, "codes")
    if z.shape[1] < dims:
        raise ValueError(f"codes has {z.shape[1]} dimension(s); the score compares the two best of each factor, "
                         f"so it needs at least {dims}")
    y, names = factor_table(factors, names, rows=len(z), factor_count=factor_count, least=rows)
    return z, y, names


def _code_array(codes, name: str) -> np.ndarray:
    """Codes as (N, D) float64, D >= 1, finite; a TypeError or ValueError that names the problem."""
    a = _array(codes, name)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be real numbers, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"{name} must be (N, D), one row per image, got shape {a.shape}")
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} holds {int(bad.sum())} NaN or Inf values (first at {first})")
    return a


def factor_table(factors, names: Sequence[str] | None = None, *, rows: int, factor_count: int = 1,
                 least: int = 2) -> tuple[np.ndarray, tuple[str, ...]]:
    """``factors`` (as the scores take them) checked and made (N, K) int64 for ``rows`` images (at least
    ``least``), with at least ``factor_count`` factors, each taking two values or more; and their names.

    Raises:
      TypeError, ValueError: the message names what is wrong (dtype, shape, rows, names, a constant factor).
    """
    if isinstance(factors, dict):
        if names is not None:
            raise ValueError("factors given as a dict are named by its keys; pass names= with an (N, K) array only")
        names = tuple(factors)
        columns = [_array(v, f"factors[{k!r}]") for k, v in factors.items()]
        if not columns or any(c.shape != (rows,) for c in columns):
            raise ValueError(f"factors as a dict must hold (N,) columns, one value per image ({rows}), got shapes "
                             f"{[c.shape for c in columns]}")
        y = np.stack(columns, axis=1)
    else:
        y = _array(factors, "factors")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"factors must be integers (each factor's value index), got dtype {y.dtype}")
    if y.ndim != 2:
        raise ValueError(f"factors must be (N, K), one row per image, got shape {y.shape}")
    if len(y) != rows:
        raise ValueError(f"factors has {len(y)} rows for {rows} images (or codes); give one row per image")
    if len(y) < least:
        raise ValueError(f"there are {len(y)} rows of codes and factors; the score needs at least {least}")
    if y.shape[1] < factor_count:
        raise ValueError(f"factors has {y.shape[1]} factor(s); the score tells {factor_count} or more apart")
    names = tuple(f"factor {k}" for k in range(y.shape[1])) if names is None else tuple(names)
    if len(names) != y.shape[1] or not all(isinstance(s, str) for s in names):
        raise ValueError(f"names must be {y.shape[1]} strings, one per factor, got {names!r}")
    lone = np.flatnonzero(y.min(0) == y.max(0))
    if len(lone):
        k = int(lone[0])
        raise ValueError(f"factor {k} ({names[k]!r}) takes the one value {y[0, k]} in every row: its entropy is 0, "
                         "so it has no information to score (MIG would divide by 0); drop it")
    return y.astype(np.int64), names


def _split(y: np.ndarray, train: int | None) -> int:
    """The number of leading training rows (default two thirds), each factor taking two values among them."""
    n = len(y)
    t = round(2 * n / 3) if train is None else check_int("train", train)
    if not 1 <= t < n:
        raise ValueError(f"train={t} leaves no rows to score of the {n}; give train < {n}")
    lone = np.flatnonzero(y[:t].min(0) == y[:t].max(0))
    if len(lone):
        raise ValueError(f"factor {int(lone[0])} takes one value in the first {t} rows, the training part; a "
                         "classifier needs two: give the rows in random order, or more of them")
    return t


def _array(value, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        if value.is_meta:
            raise ValueError(f"{name} is on the meta device (no values)")
        value = value.detach().cpu()
        return (value.double() if value.is_floating_point() else value).numpy()  # numpy has no bfloat16
    if isinstance(value, (np.ndarray, list, tuple)):
        return np.asarray(value)
    raise TypeError(f"{name} must be a tensor or an array, got {type(value).__name__}")


def _length(images, name: str) -> int:
    try:
        n = len(images)
    except TypeError:
        raise TypeError(f"{name} must be a tensor or an array of images, got {type(images).__name__}") from None
    if n < 1:
        raise ValueError(f"{name} holds no images")
    return n


def _check_represent(represent, images) -> None:
    if not callable(represent):
        raise TypeError(f"represent must be a function of images returning (n, D) codes, got "
                        f"{type(represent).__name__}")
    if not isinstance(images, (Tensor, np.ndarray)):
        raise TypeError(f"images must be a tensor or an array (its rows are drawn), got {type(images).__name__}")


def _take(images, rows: np.ndarray):
    """The images of ``rows`` (int64), in their own type (a memory map reads only those rows)."""
    if isinstance(images, Tensor):
        return images[torch.from_numpy(rows).to(images.device)]
    return images[rows]


def _represented(represent, images) -> np.ndarray:
    """``represent(images)`` checked: (len(images), D) finite floats, as float64."""
    out = represent(images)
    if not isinstance(out, (Tensor, np.ndarray)) or out.ndim != 2 or out.shape[0] != len(images):
        raise ValueError(f"represent must return (n, D) codes for n = {len(images)} images, got "
                         f"{type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))}")
    return _code_array(out, "represent's codes")


def _represented_like(table: np.ndarray, dims: int) -> None:
    if table.shape[1] != dims:
        raise ValueError(f"represent returned codes of {table.shape[1]} dimensions, after {dims} before; it must "
                         "give every image a code of the same size")


def _entropy_base(m: np.ndarray, *, axis: int) -> np.ndarray:
    """The entropy of each slice of ``m`` along ``axis`` (plus 1e-11, normalised, as disentanglement_lib), in the
    base of the slice's length."""
    p = m + 1e-11
    p = p / p.sum(axis=axis, keepdims=True)
    return -np.sum(p * np.log(p), axis=axis) / np.log(m.shape[axis])


def _json(value):
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, tuple)):
        return np.asarray(value).tolist()
    return value
