"""How a run of ``fit`` goes: one frozen ``FitConfig`` that validates itself, and per-model settings."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from funcvae.model import MATMUL_DTYPES
from funcvae.checks import check_bool, check_int, check_scale, plain

BINARIZE = (None, "dynamic")
ON_NONFINITE = ("raise", "skip")


@dataclass(frozen=True)
class FitConfig:
    """How ``fit`` runs; checked when made, so a bad setting fails before any work.

    Attributes:
      epochs: passes over the data.
      batch_size: examples per step; the last batch of an epoch may be smaller (no example is dropped).
      seed: names every random draw of the run (order, noise, binarisation); for a stack, one per model or
        one for all.
      binarize: "dynamic" draws binary pixels ~ Bernoulli(data) afresh for every batch (val data get one
        fixed draw).
      scale: divide integer pixel data by this (e.g. 255). Training data of integers in [0, 255] are held as
        uint8 and divided inside the step, exactly as ``(x.to(float64) / scale)`` in the params' dtype.
      matmul_dtype: ``torch.bfloat16`` (or "bfloat16"): the layers' matrix products in bfloat16.
      compile: None (compile where a GPU or a C++ compiler is present), True, False, or a backend.
      checkpoint_dir, resume, checkpoint_every: where and when to checkpoint, and whether to continue.
      overwrite: start afresh over a checkpoint already in ``checkpoint_dir`` (without it, and without
        ``resume``, such a checkpoint is refused before any work rather than replaced).
      accept_changed_code: resume a user's model whose functions' names or code changed since the checkpoint
        was written (refused by default).
      on_nonfinite: "raise" or "skip" a step with a non-finite loss term or gradient.
      progress: show a progress bar (default: when stderr is a terminal).
      share_cores: on a CPU, run the steps on the cores other processes leave free, rechecked every half
        second, on a thread count only once the step has given the same bits on it
        (``funcvae._runtime.threads``); False keeps torch's thread count throughout.
    """

    epochs: int
    batch_size: int = 128
    seed: int | tuple[int, ...] = 0
    binarize: str | None = None
    scale: float | None = None
    matmul_dtype: torch.dtype | None = None
    compile: bool | str | Callable | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    checkpoint_every: int | None = None
    overwrite: bool = False
    accept_changed_code: bool = False
    on_nonfinite: str = "raise"
    progress: bool | None = None
    share_cores: bool = True

    def __post_init__(self):
        # Every field becomes the plain Python value it stands for (numpy scalars, 0-d arrays and tensors
        # included), so the run's settings print, compare and save as JSON like the user's own numbers.
        seeds = _sequence(self.seed)
        fields = {
            "epochs": check_int("epochs", plain(self.epochs)),
            "batch_size": check_int("batch_size", plain(self.batch_size)),
            "seed": check_int("seed", plain(self.seed), minimum=0) if seeds is None
            else tuple(check_int("seed", plain(s), minimum=0) for s in seeds),
            "binarize": _one_of("binarize", self.binarize, BINARIZE, " (static binarisation is a data.load option)"),
            "scale": check_scale(self.scale),
            "matmul_dtype": as_matmul_dtype(self.matmul_dtype),
            "compile": _compile_setting(self.compile),
            "resume": check_bool("resume", self.resume),
            "checkpoint_every": None if self.checkpoint_every is None
            else check_int("checkpoint_every", plain(self.checkpoint_every)),
            "overwrite": check_bool("overwrite", self.overwrite),
            "accept_changed_code": check_bool("accept_changed_code", self.accept_changed_code),
            "on_nonfinite": _one_of("on_nonfinite", self.on_nonfinite, ON_NONFINITE, ""),
            "progress": None if self.progress is None else check_bool("progress", self.progress),
            "share_cores": check_bool("share_cores", self.share_cores),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs the checkpoint_dir to resume from")
        if self.resume and self.overwrite:
            raise ValueError("resume=True continues the checkpoint and overwrite=True replaces it: pass one")

    def replace(self, **changes) -> "FitConfig":
        return dataclasses.replace(self, **changes)


def as_matmul_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """A ``matmul_dtype`` setting as a dtype (a name such as "bfloat16" is looked up in torch); ValueError
    for one that is not allowed."""
    dtype = getattr(torch, value, None) if isinstance(value, str) else value
    if value is not None and dtype not in MATMUL_DTYPES:
        names = [str(d).removeprefix("torch.") for d in MATMUL_DTYPES]
        raise ValueError(f"matmul_dtype must be None or one of {names} (float16 would need loss scaling), got {value!r}")
    return dtype


def per_model(n_models: int | None, name: str, value) -> list:
    """``value`` as a list with one entry per model (one entry without a stack)."""
    values = _sequence(value)
    if values is not None:
        if n_models is None or len(values) != n_models:
            where = "a stack of that many models" if n_models is None else f"the stack's {n_models} models"
            raise ValueError(f"{name} has {len(values)} values; a sequence needs {where}")
        return values
    return [value] * (n_models or 1)


def _sequence(value) -> list | None:
    """A setting's values, one per model, when it gives several: a list, a tuple (not a named tuple, which is
    an Objective or a transform) or a 1-D numpy array or tensor (``np.logspace(-4, -2, 5)``); else None."""
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return list(value)
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1 and not getattr(value, "is_meta", False):
        return value.tolist()
    return None


def _one_of(name: str, value, choices: tuple, note: str):
    """``value`` as the member of ``choices`` it equals (a numpy string becomes the plain one)."""
    if isinstance(value, (str, type(None))) and value in choices:
        return choices[choices.index(value)]
    raise ValueError(f"{name} must be one of {choices}{note}, got {value!r}")


def _compile_setting(value):
    """``compile`` as None, a bool, a backend name or a backend function."""
    value = plain(value) if isinstance(value, np.generic) else value  # a numpy bool or string as the plain one
    if value is None or isinstance(value, (bool, str)) or callable(value):
        return value
    raise ValueError(f"compile must be None, True, False, a backend name or a backend function, got {value!r}")


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
