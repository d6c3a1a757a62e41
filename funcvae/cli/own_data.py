"""``train --data PATH [--val-data PATH]``: images of one's own (a folder of image files, a .npy or a .npz file)
for train and eval, and what config.json's "data" records of them (path, shape, dtype, SHA-256), so that a
resumed run and eval refuse other data rather than train or score on it unnoticed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import funcvae
from funcvae import images
from funcvae.cli.folder import RunError


def read(path, *, labels: bool) -> tuple:
    """The images of ``path`` as (N, C, H, W) (a folder decoded into a uint8 tensor, a .npy memory-mapped, a .npz
    read whole; (N, H, W) as one channel), and their labels when ``labels`` ((N,) int64), else None.

    Raises:
      ValueError, or FileNotFoundError for a missing path: the message names the file and what is wrong.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder or file")
    got = funcvae.data.folder(path, labels=labels) if path.is_dir() else funcvae.data.array(path, labels=labels)
    x, y = got if labels else (got, None)
    if x.ndim == 3:
        x = x.reshape(x.shape[0], 1, *x.shape[1:])
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"{path} holds an array of shape {tuple(x.shape)}; expected images (N, C, H, W) or (N, H, W)")
    return x, y


def scale(x) -> int | None:
    """What ``fit`` divides ``x`` by: 255 for integers (8-bit levels 0..255), None for floats and bools (values)."""
    kind = np.dtype(str(x.dtype).removeprefix("torch.")).kind
    return 255 if kind in "iu" else None


def record(path, x) -> dict:
    """config.json's record of data ``x`` read from ``path``: the absolute path, shape, dtype and SHA-256 of the
    bytes (``images.sha256``, read in chunks)."""
    return {"path": str(Path(path).resolve()), "shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch."),
            "sha256": images.sha256(x)}


def difference(recorded: dict, now: dict) -> str | None:
    """What tells the data of record ``now`` from those of record ``recorded`` (``record``'s), or None when they are
    the same (their bytes, shape and dtype; the path may differ)."""
    if now == {**recorded, "path": now["path"]}:
        return None
    return (f"{now['path']} holds other data than the run's {recorded['path']} did: sha256 {now['sha256']}, shape "
            f"{now['shape']}, {now['dtype']}; the run's: sha256 {recorded['sha256']}, shape {recorded['shape']}, "
            f"{recorded['dtype']}")


def held_out(config: dict, labels: bool) -> tuple:
    """What eval scores a ``--data`` run on, as ``read`` gives it: ``(x, y, split)`` for the run's ``--val-data``
    (split "val"), else its training data (split "train": scores that flatter the model, said so by eval).

    Raises:
      RunError: the file is gone, unreadable, or holds other data than config.json records.
    """
    split = "val" if config["data"]["val"] is not None else "train"
    kept = config["data"][split]
    try:
        x, y = read(kept["path"], labels=labels)
    except (OSError, ValueError) as e:
        raise RunError(f"the run's {'--val-data' if split == 'val' else '--data'}: {e}") from None
    problem = difference(kept, record(kept["path"], x))
    if problem:
        raise RunError(f"{problem}; it changed since the run was trained")
    return x, y, split


def values(x) -> Tensor:
    """(N, F) float32 of images ``x`` (a slice of ``read``'s): integer levels divided by 255."""
    x = x if isinstance(x, Tensor) else torch.from_numpy(np.array(x))  # a copy: a memory map is read-only
    divisor = scale(x)
    x = x.reshape(x.shape[0], -1).to(torch.float32)
    return x if divisor is None else x / divisor
