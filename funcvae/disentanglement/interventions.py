"""Scores that draw images with one factor held fixed: the FactorVAE score (Kim & Mnih 2018) and the beta-VAE
score (Higgins et al. 2017), over a sampler of the data set's factor grid."""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
import torch

from funcvae.checks import check_int, check_nonnegative
from funcvae.disentanglement._tables import (_check_represent, _length, _represented, _represented_like, _take,
                                             factor_table)
from funcvae.rng import derive_seed, generator

#: Images a representation function is given at once by the FactorVAE and beta-VAE scores.
REPRESENT_CHUNK = 4096
_SAMPLES = 1024  # fixed-factor batches reduced at once: 1024 x 64 x D float64 codes


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
      factors: their (N, K) integer factors, K >= 2 (see ``funcvae.disentanglement``'s docstring).
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
