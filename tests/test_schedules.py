"""Schedules: their values against closed forms (optax's formulas), and equal settings give equal, hashable ones."""

import math

import pytest
import torch

from funcvae import schedules

COUNTS = [0, 1, 2, 7, 9, 10, 11, 25, 1000]


def at(schedule, count):
    value = schedule(torch.tensor(count, dtype=torch.int64))
    assert value.dtype == torch.float64 and value.ndim == 0
    return float(value)


@pytest.mark.parametrize("init, end, steps", [(1.0, 0.0, 10), (0.1, 0.5, 7), (2.0, 2.0, 3)])
def test_linear_is_optax_linear_schedule(init, end, steps):
    schedule = schedules.linear(init, end, steps)
    for count in COUNTS:
        # optax.linear_schedule: (init - end) * (1 - clip(count, 0, steps) / steps) + end
        expected = (init - end) * (1.0 - min(count, steps) / steps) + end
        assert at(schedule, count) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("init, steps, alpha", [(1.0, 10, 0.0), (3e-3, 25, 0.1), (0.5, 1, 0.5)])
def test_cosine_decay_is_optax_cosine_decay_schedule(init, steps, alpha):
    schedule = schedules.cosine_decay(init, steps, alpha)
    for count in COUNTS:
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(count, steps) / steps))
        expected = init * ((1.0 - alpha) * cosine + alpha)
        assert at(schedule, count) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert at(schedule, 0) == pytest.approx(init, rel=1e-12)
    assert at(schedule, steps) == pytest.approx(alpha * init, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("steps", [1, 4, 2.5, 10])
def test_warmup_is_min_one_count_plus_one_over_steps(steps):
    schedule = schedules.warmup(steps)
    for count in COUNTS:
        assert at(schedule, count) == pytest.approx(min(1.0, (count + 1) / steps), rel=1e-12)


def test_constant():
    for count in COUNTS:
        assert at(schedules.constant(0.25), count) == 0.25


def test_schedules_are_elementwise_over_a_batch_of_counts():
    counts = torch.arange(12)
    schedule = schedules.cosine_decay(1.0, 10, 0.2)
    torch.testing.assert_close(schedule(counts), torch.stack([schedule(c) for c in counts]), rtol=0, atol=0)


@pytest.mark.parametrize("make, same, other", [
    (lambda: schedules.linear(1.0, 0.0, 10), lambda: schedules.linear(1, 0, 10),
     lambda: schedules.linear(1.0, 0.0, 11)),
    (lambda: schedules.cosine_decay(1e-3, 100), lambda: schedules.cosine_decay(1e-3, 100, 0.0),
     lambda: schedules.cosine_decay(1e-3, 100, 0.1)),
    (lambda: schedules.warmup(5), lambda: schedules.warmup(5.0), lambda: schedules.warmup(6)),
    (lambda: schedules.constant(1.0), lambda: schedules.constant(1), lambda: schedules.constant(2.0)),
])
def test_equal_settings_give_equal_hashable_schedules(make, same, other):
    a, b, c = make(), same(), other()
    assert a == b and hash(a) == hash(b) and a.name == b.name
    assert a != c and a.name != c.name
    assert len({a, b, c}) == 2
    with pytest.raises(AttributeError):
        a.steps = 3  # frozen: a compiled step keyed on it cannot go stale


@pytest.mark.parametrize("make", [
    lambda: schedules.linear(1.0, 0.0, 0), lambda: schedules.linear(-1.0, 0.0, 10),
    lambda: schedules.warmup(0), lambda: schedules.warmup(float("nan")),
    lambda: schedules.cosine_decay(0.0, 10), lambda: schedules.cosine_decay(1.0, 10, -0.1),
    lambda: schedules.constant(-1.0),
])
def test_bad_settings_are_refused(make):
    with pytest.raises(ValueError):
        make()
