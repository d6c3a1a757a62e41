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
import threading
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".funcvae.lock"

# Folders this process holds: the thread that holds each and how many times. A run folder's command (the
# CLI) and the fit inside it take the same lock in one thread, and a second flock on a new descriptor would
# refuse its own process; another thread of the process is another writer, and is refused.
_held: dict[Path, list] = {}
_guard = threading.Lock()


class FolderLocked(RuntimeError):
    """Another process holds the folder; ``holder`` is what its lock file says about it (pid, host, command,
    since when)."""

    def __init__(self, folder: Path, holder: dict):
        keys = ("pid", "thread", "host", "since", "command")
        who = ", ".join(f"{k} {holder[k]}" for k in keys if k in holder) or "unknown"
        super().__init__(f"{folder} is in use by another run ({who}); wait for it to finish, or write elsewhere")
        self.folder = folder
        self.holder = holder


@contextmanager
def hold(folder: str | os.PathLike):
    """Hold ``folder``'s lock while the block runs (the folder must exist); re-entrant within a thread.

    Raises:
      FolderLocked: another process, or another thread of this one, holds it (at once: this never waits).
    """
    key, me = Path(folder).resolve(), threading.get_ident()
    with _guard:
        entry = _held.get(key)
        if entry is not None and entry[0] != me:
            raise FolderLocked(key, {**_holder_of(key), "thread": entry[0]})
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield
        finally:
            with _guard:
                entry[1] -= 1
        return
    fd = _acquire(key / LOCK_FILE)  # another thread taking it at once is refused by flock itself
    try:
        _describe_holder(fd)
        with _guard:
            _held[key] = [me, 1]
        try:
            yield
        finally:
            with _guard:
                del _held[key]
            (key / LOCK_FILE).unlink(missing_ok=True)  # while still held: a run that opens it from now on retries (_acquire)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _holder_of(folder: Path) -> dict:
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return {}
    try:
        return _holder(fd)
    finally:
        os.close(fd)


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
