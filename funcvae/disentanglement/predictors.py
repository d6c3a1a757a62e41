"""Scores read from classifiers that predict each factor from the codes: SAP (Kumar et al. 2018) and DCI
(Eastwood & Williams 2018)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from funcvae.disentanglement._tables import _pair, _split
from funcvae.rng import derive_seed


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


def _entropy_base(m: np.ndarray, *, axis: int) -> np.ndarray:
    """The entropy of each slice of ``m`` along ``axis`` (plus 1e-11, normalised, as disentanglement_lib), in the
    base of the slice's length."""
    p = m + 1e-11
    p = p / p.sum(axis=axis, keepdims=True)
    return -np.sum(p * np.log(p), axis=axis) / np.log(m.shape[axis])
