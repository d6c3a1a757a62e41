"""Ctrl-C and SIGTERM become a request honoured at the next step boundary (where a checkpoint is
consistent), instead of an exception in the middle of a step."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; ``signum`` names the signal."""

    def __init__(self, signum: int, checkpoint: str):
        super().__init__(f"stopped by {signal.Signals(signum).name} at a step boundary; checkpoint saved to "
                         f"{checkpoint}; resume with resume=True")
        self.signum = signum
        self.checkpoint = checkpoint


@contextmanager
def deferred_signals(enabled: bool):
    """While active, SIGINT and SIGTERM are recorded instead of acted on; yields a list that holds the
    signal numbers received. Handlers are restored on exit. Off the main thread (where Python cannot set
    handlers) or when not ``enabled``, signals keep their usual effect."""
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
