"""Progress bars on long work (an epoch's steps, IWAE, feature extraction): tqdm on stderr, shown where stderr is
a terminal or where asked, and by one process of a data-parallel run only, so logs stay clean."""

from __future__ import annotations

import contextvars
import os
import sys
from contextlib import contextmanager

from tqdm.auto import tqdm

_SILENCED = contextvars.ContextVar("funcvae_progress_silenced", default=False)


def shown(progress: bool | None) -> bool:
    """Whether to draw a bar: ``progress``, or where it is None whether stderr is a terminal; never inside
    ``silenced()``, nor on a process of rank other than 0 under torchrun (``RANK``), whose bar would repeat rank
    0's."""
    wanted = sys.stderr.isatty() if progress is None else bool(progress)
    return wanted and not _SILENCED.get() and os.environ.get("RANK", "0") == "0"


@contextmanager
def silenced():
    """No bar inside: the command line's ``--quiet``, which reaches work deep inside a command (the feature
    network's passes) that takes no ``progress`` argument of its own."""
    token = _SILENCED.set(True)
    try:
        yield
    finally:
        _SILENCED.reset(token)


def bar(iterable=None, *, total: int | None = None, desc: str, progress: bool | None = None, unit: str = "it"):
    """A tqdm bar over ``iterable`` (or updated by hand up to ``total``) that vanishes when done; a silent one
    where ``shown(progress)`` is False."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
                disable=not shown(progress), dynamic_ncols=True)
