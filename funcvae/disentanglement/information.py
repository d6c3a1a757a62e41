"""Scores read from mutual information: MIG (Chen et al. 2018), the plug-in estimates it rests on, and each
code dimension's most informative factor."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from funcvae.checks import check_int, check_nonnegative
from funcvae.disentanglement._tables import _pair


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
      factors: (N, K) integers, each factor taking at least two values (see ``funcvae.disentanglement``'s
        docstring).
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


def plugin_bias(values: int, rows: int, *, bins: int = 20) -> float:
    """The upward bias of ``mig``'s plug-in mutual information, in nats, for a code dimension cut into ``bins``
    bins and a factor of ``values`` values that are independent, over ``rows`` rows: (bins - 1)(values - 1)
    / (2 rows) (the leading term of the estimate's expectation)."""
    return (check_int("bins", bins, minimum=2) - 1) * (check_int("values", values) - 1) / (2 * check_int("rows", rows))


def most_informative(mutual_information, *, minimum: float = 0.0) -> np.ndarray:
    """For each code dimension, the factor it holds most information about: (D,) int64 factor indices from a
    (D, K) matrix in nats (``mig(...)["mutual_information"]``), -1 where no factor has more than ``minimum``
    nats (a collapsed dimension; ``plugin_bias`` of the factor with the most values is a fair ``minimum``).
    Ties go to the lower factor index."""
    m = np.asarray(mutual_information, dtype=np.float64)
    minimum = check_nonnegative("minimum", minimum)
    if m.ndim != 2 or m.shape[1] < 1 or not np.isfinite(m).all():
        raise ValueError(f"mutual_information must be a finite (D, K) matrix, got shape {m.shape}")
    return np.where(m.max(1) > minimum, m.argmax(1), -1).astype(np.int64)
