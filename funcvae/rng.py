"""Explicit randomness: integer seeds in the API, generators at the boundary.

A seed names a stream; independent streams (parameter init, shuffling, noise, validation noise) are
derived from it with NumPy's ``SeedSequence``, so adding a stream never shifts the numbers of another.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 64-bit seed for the stream named by ``keys`` under ``seed`` (a pure function of both)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    words = [int(seed)] + [_key_word(k) for k in keys]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])


def generator(seed: int, *keys: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded for the stream ``keys`` under ``seed``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))


def _key_word(key: int | str) -> int:
    # Strings become a stable integer (not Python's salted hash) so streams survive restarts.
    if isinstance(key, str):
        return int.from_bytes(key.encode(), "little") % (1 << 63)
    return int(key)
