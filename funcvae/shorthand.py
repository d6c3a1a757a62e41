"""Objectives and optimisers from shorthand settings: the one table of defaults (``DEFAULTS``) and the one
builder (``build``) that ``fit``, the command line and the tests all use.

    objs, opts = shorthand.build({"beta": 0.5, "kl_warmup": 2, "lr": 3e-3}, steps_per_epoch=469)
"""

from __future__ import annotations

from typing import NamedTuple

from funcvae import objectives, optim, schedules
from funcvae.config import per_model
from funcvae.checks import check_nonnegative, check_positive, plain

#: Every shorthand setting and what it means when left out (or None).
DEFAULTS = {"objective": "elbo", "k": 5, "beta": 1.0, "kl_warmup": 0.0, "free_bits": None, "mmd_weight": 1000.0,
            "optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-2,
            "clip_norm": None, "noise_multiplier": 0.0}
OBJECTIVE_KEYS = ("objective", "k", "beta", "kl_warmup", "free_bits", "mmd_weight")
OPTIMIZER_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "clip_norm", "noise_multiplier")
OBJECTIVES = ("elbo", "iwae", "beta-tcvae", "mmd")
OPTIMIZERS = ("adam", "adamw", "sgd")
#: The shorthand ``fit`` takes as keywords (the objective and optimiser it names are objects).
FIT_KEYS = ("lr", "beta", "kl_warmup", "free_bits", "clip_norm", "noise_multiplier")


class Built(NamedTuple):
    """One objective and one optimiser per model (one of each without a stack)."""

    objectives: list
    optimizers: list


def build(settings: dict, steps_per_epoch: int = 1, n_models: int | None = None, *, objective=None,
          optimizer=None, examples: int | None = None) -> Built:
    """Each model's objective and optimiser.

    Args:
      settings: shorthand, keys of ``DEFAULTS`` (a missing or None value takes the default; other keys are
        not read):
        ``objective`` "elbo" (the beta-ELBO ``recon + beta * kl``, its weight rising linearly over
        ``kl_warmup`` epochs), "iwae" (``k`` samples), "beta-tcvae" (``beta`` on the total correlation,
        over a training set of ``examples``) or "mmd" (InfoVAE's, ``mmd_weight`` on the MMD);
        ``free_bits``: a floor in nats per latent dimension;
        ``optimizer`` "adam", "adamw" (``weight_decay``) or "sgd" (``momentum``) at ``lr``, after DP-SGD's
        per-example clipping to ``clip_norm`` with noise of std ``noise_multiplier * clip_norm`` when
        ``clip_norm`` is set. For a stack, ``beta``, ``mmd_weight`` and ``lr`` may give one value per model.
      steps_per_epoch: turns ``kl_warmup`` epochs into steps.
      n_models: the size of a stack, or None for one model.
      objective, optimizer: objects (one, or one per model) that take the place of the shorthand for them.
      examples: the training set's size, which "beta-tcvae" needs.

    Returns:
      ``Built(objectives, optimizers)``, lists of ``n_models`` (or 1).

    Raises:
      ValueError: a number out of range, shorthand given beside the object it would build, a per-model list of
        the wrong length, noise without clipping, or clipping for a stack.
    """
    given = {k: settings[k] for k in DEFAULTS if settings.get(k) is not None}
    values = {**DEFAULTS, **given}
    if objective is not None:
        _refuse(given, OBJECTIVE_KEYS, "objective", "objectives.elbo(beta, warmup=...), objectives.free_bits(...)")
        objs = [_given(o, objectives.Objective, "objective", "objectives.elbo(beta), objectives.iwae(k)")
                for o in per_model(n_models, "objective", objective)]
    else:
        objs = _objectives(values, steps_per_epoch, n_models, examples)
    if optimizer is not None:
        _refuse(given, OPTIMIZER_KEYS, "optimizer", "optim.chain(optim.differentially_private_aggregate(...), "
                                                    "optim.adam(lr))")
        opts = [_given(o, optim.GradientTransformation, "optimizer", "optim.adam(1e-3), optim.chain(...)")
                for o in per_model(n_models, "optimizer", optimizer)]
    else:
        opts = _optimizers(values, n_models)
    return Built(objs, opts)


def _objectives(values: dict, steps_per_epoch: int, n_models: int | None, examples: int | None) -> list:
    name = values["objective"]
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {name!r}")
    if name in ("beta-tcvae", "mmd") and values["kl_warmup"]:
        raise ValueError(f"objective {name!r} has no KL warm-up; kl_warmup must be 0, got {values['kl_warmup']!r}")
    if name == "iwae":
        built = [objectives.iwae(values["k"])] * (n_models or 1)
    elif name == "beta-tcvae":
        if examples is None:
            raise ValueError("objective 'beta-tcvae' needs the training set's size: build(..., examples=N)")
        built = [objectives.beta_tcvae(plain(b), examples) for b in per_model(n_models, "beta", values["beta"])]
    elif name == "mmd":
        built = [objectives.mmd(plain(w)) for w in per_model(n_models, "mmd_weight", values["mmd_weight"])]
    else:
        betas = [check_nonnegative("beta", plain(b)) for b in per_model(n_models, "beta", values["beta"])]
        epochs = check_nonnegative("kl_warmup", plain(values["kl_warmup"]))
        warmup = schedules.warmup(epochs * steps_per_epoch) if epochs else None
        built = [objectives.elbo(b, warmup=warmup) for b in betas]
    floor = values["free_bits"]
    return built if floor is None else [objectives.free_bits(o, plain(floor)) for o in built]


def _optimizers(values: dict, n_models: int | None) -> list:
    lrs = [check_positive("lr", plain(lr)) for lr in per_model(n_models, "lr", values["lr"])]
    name = values["optimizer"]
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if name == "sgd":
        base = [optim.sgd(lr, momentum=values["momentum"]) for lr in lrs]
    elif name == "adamw":
        base = [optim.adamw(lr, weight_decay=values["weight_decay"]) for lr in lrs]
    else:
        base = [optim.adam(lr) for lr in lrs]
    noise = check_nonnegative("noise_multiplier", plain(values["noise_multiplier"]))
    if values["clip_norm"] is None:
        if noise:
            raise ValueError("noise_multiplier needs clip_norm: the noise is scaled to the clipping norm")
        return base
    clip_norm = check_positive("clip_norm", plain(values["clip_norm"]))
    if n_models is not None:
        raise ValueError("clip_norm (per-example clipping) trains one model at a time, not a stack")
    dp = optim.differentially_private_aggregate(clip_norm, noise)
    return [optim.chain(dp, o) for o in base]


def _given(value, kind: type, name: str, example: str):
    """``value`` if it is a ``kind``; else a TypeError saying what to pass."""
    if isinstance(value, kind):
        return value
    raise TypeError(f"{name} must be a funcvae {kind.__name__}, made by {example}; got {type(value).__name__} "
                    f"{value!r}")


def _refuse(given: dict, keys: tuple, name: str, example: str) -> None:
    clash = sorted(k for k in keys if k in given)
    if clash:
        raise ValueError(f"pass either {name}= or the shorthand {clash}, not both (put them in the {name}: "
                         f"{example})")
