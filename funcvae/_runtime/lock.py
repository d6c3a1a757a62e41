"""One writer per folder: an advisory lock (``flock``) on a file in the folder, held for as long as a run
writes there. The kernel releases it when its holder exits, however it exits, so a killed run leaves no stale
lock behind (only an unlocked file, which the next run takes over); the lock file names its holder, so a
refused run can say who holds it. POSIX only; on network
file systems without ``flock`` support the lock is not enforced."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".funcvae.lock"

# Folders this process holds, and how many times: a run folder's command (the CLI) and the fit inside it
# take the same lock, and a second flock on a new descriptor would refuse its own process.
_held: dict[Path, int] = {}


class FolderLocked(RuntimeError):
    """Another process holds the folder; ``holder`` is what its lock file says about it (pid, host, command,
    since when)."""

    def __init__(self, folder: Path, holder: dict):
        who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "since", "command") if k in holder) or "unknown"
        super().__init__(f"{folder} is in use by another run ({who}); wait for it to finish, or write elsewhere")
        self.folder = folder
        self.holder = holder


@contextmanager
def hold(folder: str | os.PathLike):
    """Hold ``folder``'s lock while the block runs (the folder must exist); re-entrant within a process.

    Raises:
      FolderLocked: another process holds it (at once: this never waits).
    """
    key = Path(folder).resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = _acquire(key / LOCK_FILE)
    try:
        _describe_holder(fd)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            (key / LOCK_FILE).unlink(missing_ok=True)  # while still held: a run that opens it from now on retries (_acquire)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(path: Path) -> int:
    """A descriptor of ``path`` holding its lock. The holder removes the file as it finishes, so a lock taken
    on a file that is no longer at ``path`` is one that just ended: try again on the new file."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderLocked(path.parent, holder) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _describe_holder(fd: int) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
          "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)


def _holder(fd: int) -> dict:
    """What the holder wrote; {} while it has not yet written (it takes the lock first) or for a foreign file."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}
