"""Schedules, optax-style: a function of the step count (a 0-d int64 tensor: steps taken before this one)
that returns a 0-d float64 tensor. Learning rates (``funcvae.optim``) and the KL warm-up of an objective
(``funcvae.objectives.elbo(warmup=...)``) take them. They run inside the compiled step, on the device.

Each is a frozen dataclass: equal settings give equal, hashable schedules, so a compiled step is reused.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from funcvae.checks import check_nonnegative, check_positive, check_unit


def _count(count: Tensor) -> Tensor:
    return count.to(torch.float64)


class _Named:
    """``name``: how the schedule is written, ``warmup(steps=5.0)``, recorded with a run's settings."""

    @property
    def name(self) -> str:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()
        args = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))
        return f"{snake}({args})"


@dataclass(frozen=True)
class Constant(_Named):
    value: float

    def __call__(self, count: Tensor) -> Tensor:
        return torch.full_like(_count(count), self.value)


@dataclass(frozen=True)
class Linear(_Named):
    init: float
    end: float
    steps: float

    def __call__(self, count: Tensor) -> Tensor:
        frac = (_count(count) / self.steps).clamp(0.0, 1.0)
        return self.init + (self.end - self.init) * frac


@dataclass(frozen=True)
class Warmup(_Named):
    steps: float

    def __call__(self, count: Tensor) -> Tensor:
        return ((_count(count) + 1.0) / self.steps).clamp(max=1.0)


@dataclass(frozen=True)
class CosineDecay(_Named):
    init: float
    steps: float
    alpha: float

    def __call__(self, count: Tensor) -> Tensor:
        frac = (_count(count) / self.steps).clamp(0.0, 1.0)
        return self.init * ((1.0 - self.alpha) * 0.5 * (1.0 + torch.cos(math.pi * frac)) + self.alpha)


def constant(value: float) -> Constant:
    """``value`` at every step."""
    check_nonnegative("value", value)
    return Constant(float(value))


def linear(init: float, end: float, steps: int) -> Linear:
    """From ``init`` at count 0 linearly to ``end`` at count ``steps``, then ``end`` (optax's
    ``linear_schedule``)."""
    check_nonnegative("init", init)
    check_nonnegative("end", end)
    check_positive("steps", steps)
    return Linear(float(init), float(end), float(steps))


def warmup(steps: float) -> Warmup:
    """A warm-up factor: ``(count + 1) / steps`` up to 1, so the first step already has a small weight and
    step number ``steps`` has the full one (the KL warm-up of Bowman et al. 2016 and Sønderby et al. 2016,
    step by step; ``steps`` may be fractional, e.g. 2.5 epochs' worth)."""
    check_positive("steps", steps)
    return Warmup(float(steps))


def cosine_decay(init: float, steps: int, alpha: float = 0.0) -> CosineDecay:
    """From ``init`` down a half cosine to ``alpha * init`` at count ``steps`` (optax's
    ``cosine_decay_schedule``)."""
    check_positive("init", init)
    check_positive("steps", steps)
    check_unit("alpha", alpha, closed=True)  # above 1 the rate would rise, not decay
    return CosineDecay(float(init), float(steps), float(alpha))
