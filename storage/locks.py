"""An OS file lock (``fcntl.flock``) held for a block: one writer at a time per resource.

A second process that wants the same lock waits, is told once who holds it (the holder
writes its pid into the lock file), and gives up with :class:`LockTimeout` after the
timeout. The OS releases the lock when its holder dies, so a killed process never leaves
a resource locked, and a lock file left behind is harmless (it holds no state).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator

DEFAULT_TIMEOUT_S = 600.0


class LockTimeout(TimeoutError):
    """The lock stayed held by another process for longer than the timeout."""


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike,
    what: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    on_wait: Callable[[str], None] | None = None,
    holder: str = "another process",
) -> Iterator[None]:
    """Hold the lock on ``path`` (created if absent) for the block. ``what`` names the
    resource and ``holder`` the kind of process that may hold it, in messages."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, what, holder, timeout_s, on_wait)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(
    fd: int, path: Path, what: str, holder: str, timeout_s: float, on_wait: Callable[[str], None] | None
) -> None:
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if not told and on_wait is not None:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            on_wait(f"{what}: {holder} (pid {pid}) holds {path}; waiting up to {timeout_s:g} s")
            told = True
        if time.monotonic() >= deadline:
            raise LockTimeout(
                f"{what}: {holder} held {path} for more than {timeout_s:g} s; "
                "wait for it to finish (or stop it) and try again"
            )
        time.sleep(0.05)


def is_held(path: str | os.PathLike) -> bool:
    """Whether a process holds the lock on ``path`` now (this one, through another ``file_lock``,
    included). A probe: it takes the lock and drops it at once when it is free."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)
    return False


def holder_pid(path: str | os.PathLike) -> int | None:
    """The pid the lock's last holder wrote into ``path`` (None when unreadable)."""
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
