"""Metric records as strict JSON. A metric can be NaN or infinite (an epoch whose every step was skipped,
a run that diverged), and JSON has no such numbers: they are written as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` (the names JavaScript and Python's own lenient JSON give them), which
every JSON parser accepts, and read back as floats."""

from __future__ import annotations

import json
import math

NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def dumps(value, **kwargs) -> str:
    """``value`` as strict JSON, non-finite floats as their names (``json.dumps``'s keywords pass through)."""
    return json.dumps(encode(value), allow_nan=False, **kwargs)


def loads(text: str | bytes):
    """What ``dumps`` wrote, the names of non-finite floats read back as floats."""
    return decode(json.loads(text))


def encode(value):
    """``value`` with every non-finite float replaced by its name (dicts, lists and tuples walked)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def decode(value):
    """The inverse of ``encode``: the names of non-finite floats become floats again."""
    if isinstance(value, str):
        return NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value
