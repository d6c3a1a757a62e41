"""What a run of ``fit`` is: one frozen ``FitConfig`` that validates itself, and the objective and optimiser
of each model, built from ``fit``'s shorthand settings (``lr``, ``beta``, ``kl_warmup``, ``free_bits``,
``clip_norm``, ``noise_multiplier``) when they are not given as objects."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from funcvae import objectives, optim, schedules
from funcvae.model import MATMUL_DTYPES
from funcvae.validate import check_int, check_nonnegative, check_positive

BINARIZE = (None, "dynamic")
ON_NONFINITE = ("raise", "skip")
#: fit's shorthand settings and their defaults (used when no objective or optimiser object is passed).
OBJECTIVE_SETTINGS = {"beta": 1.0, "kl_warmup": 0.0, "free_bits": 0.0}
OPTIMIZER_SETTINGS = {"lr": 1e-3, "clip_norm": None, "noise_multiplier": 0.0}


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
      scale: divide integer pixel data by this (e.g. 255).
      matmul_dtype: ``torch.bfloat16`` (or "bfloat16"): the layers' matrix products in bfloat16.
      compile: None (compile where a GPU or a C++ compiler is present), True, False, or a backend.
      checkpoint_dir, resume, checkpoint_every: where and when to checkpoint, and whether to continue.
      on_nonfinite: "raise" or "skip" a step with a non-finite loss term or gradient.
      progress: show a progress bar (default: when stderr is a terminal).
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
    on_nonfinite: str = "raise"
    progress: bool | None = None

    def __post_init__(self):
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size)
        seeds = self.seed if isinstance(self.seed, (list, tuple)) else [self.seed]
        for s in seeds:
            check_int("seed", s, minimum=0)
        object.__setattr__(self, "seed", tuple(int(s) for s in seeds) if isinstance(self.seed, (list, tuple))
                           else int(self.seed))
        object.__setattr__(self, "epochs", int(self.epochs))
        object.__setattr__(self, "batch_size", int(self.batch_size))
        if self.binarize not in BINARIZE:
            raise ValueError(f"binarize must be one of {BINARIZE} (static binarisation is a data.load option), "
                             f"got {self.binarize!r}")
        if self.on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {self.on_nonfinite!r}")
        if self.checkpoint_every is not None:
            check_int("checkpoint_every", self.checkpoint_every)
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs the checkpoint_dir to resume from")
        object.__setattr__(self, "matmul_dtype", as_matmul_dtype(self.matmul_dtype))

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
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):  # not an Objective or a transform
        if n_models is None or len(value) != n_models:
            where = "a stack of that many models" if n_models is None else f"the stack's {n_models} models"
            raise ValueError(f"{name} has {len(value)} values; a sequence needs {where}")
        return list(value)
    return [value] * (n_models or 1)


def objectives_of(n_models: int | None, objective, steps_per_epoch: int, settings: dict) -> list:
    """Each model's objective: ``objective`` (one, or one per model) or, without one, the beta-ELBO that
    ``fit``'s shorthand settings describe (``kl_warmup`` in epochs, made a step schedule here)."""
    if objective is not None:
        _refuse_shorthand("objective", settings, "objectives.elbo(beta, warmup=...), objectives.free_bits(...)")
        return per_model(n_models, "objective", objective)
    values = {**OBJECTIVE_SETTINGS, **{k: v for k, v in settings.items() if v is not None}}
    betas = per_model(n_models, "beta", values["beta"])
    for b in betas:
        check_nonnegative("beta", b)
    check_nonnegative("kl_warmup", values["kl_warmup"])
    check_nonnegative("free_bits", values["free_bits"])
    warmup = schedules.warmup(values["kl_warmup"] * steps_per_epoch) if values["kl_warmup"] else None
    built = [objectives.elbo(_plain(b), warmup=warmup) for b in betas]
    if values["free_bits"]:
        built = [objectives.free_bits(o, _plain(values["free_bits"])) for o in built]
    return built


def optimizers_of(n_models: int | None, optimizer, settings: dict) -> list:
    """Each model's optimiser: ``optimizer`` (one, or one per model) or, without one, Adam at ``lr``, after
    DP-SGD's per-example clipping and noise when ``clip_norm`` is set."""
    if optimizer is not None:
        _refuse_shorthand("optimizer", settings, "optim.chain(optim.differentially_private_aggregate(...), "
                                                 "optim.adam(lr))")
        return per_model(n_models, "optimizer", optimizer)
    values = {**OPTIMIZER_SETTINGS, **{k: v for k, v in settings.items() if v is not None}}
    lrs = per_model(n_models, "lr", values["lr"])
    for lr in lrs:
        check_positive("lr", lr)
    check_nonnegative("noise_multiplier", values["noise_multiplier"])
    if values["clip_norm"] is None:
        if values["noise_multiplier"]:
            raise ValueError("noise_multiplier needs clip_norm: the noise is scaled to the clipping norm")
        return [optim.adam(_plain(lr)) for lr in lrs]
    check_positive("clip_norm", values["clip_norm"])
    if n_models is not None:
        raise ValueError("clip_norm (per-example clipping) trains one model at a time, not a stack")
    dp = optim.differentially_private_aggregate(_plain(values["clip_norm"]), _plain(values["noise_multiplier"]))
    return [optim.chain(dp, optim.adam(_plain(lr))) for lr in lrs]


def _refuse_shorthand(name: str, settings: dict, example: str) -> None:
    given = sorted(k for k, v in settings.items() if v is not None)
    if given:
        raise ValueError(f"pass either {name}= or the shorthand {given}, not both (put them in the {name}: "
                         f"{example})")


def _plain(value):
    """A numpy scalar as the Python number it holds (so it prints, hashes and saves as one)."""
    return value.item() if isinstance(value, np.generic) else value


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
