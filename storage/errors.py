"""Storage failures an operator must act on, each with a message that names the file and the fix.

- :class:`DamagedFile`: a file of the feature store that does not read back (a truncated
  part: "Parquet magic bytes not found"); ``befa store check --repair`` moves it aside.
- :class:`DiskFull`: a write hit a full disk (``ENOSPC``, or a quota: ``EDQUOT``); the
  write was abandoned before its rename, so the file it would have replaced is intact.

The CLI prints either as one line and exits with code 2 (``pipeline.cli.main``), wherever it
is raised. Both are plain exceptions of this floor: numpy-free, torch-free.
"""

from __future__ import annotations

import errno
import os

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
CHECK_COMMAND = "befa store check --repair"


class DamagedFile(ValueError):
    """A feature-store file that exists but does not read back (truncated, overwritten, not Parquet)."""

    def __init__(self, path: str, problem: str, hint: str | None = None):
        self.path = str(path)
        self.problem = problem
        hint = hint or (
            f"run `{CHECK_COMMAND}` to move damaged files aside; the next `befa extract` re-encodes their items"
        )
        super().__init__(f"{self.path}: damaged feature-store file ({problem}); {hint}")


class DiskFull(OSError):
    """A write that found no space left; ``str()`` names the path and what stays as it was."""

    def __init__(self, path: str | os.PathLike, cause: OSError, kept: str | None = None):
        self.path = os.fspath(path)
        self.kept = kept or f"{os.path.basename(self.path)} was not replaced (its previous version, if any, is intact)"
        super().__init__(cause.errno or errno.ENOSPC, os.strerror(cause.errno or errno.ENOSPC), self.path)

    def with_kept(self, kept: str) -> "DiskFull":
        """The same failure, saying what a caller higher up knows stays current."""
        return DiskFull(self.path, self, kept)

    def __str__(self) -> str:
        return (
            f"disk full: no space left on the device holding {os.path.dirname(self.path) or '.'} "
            f"while writing {os.path.basename(self.path)}; nothing was committed: {self.kept}. "
            "Free space (`befa gc` removes temporaries left by killed writes) and rerun"
        )


def is_disk_full(exc: BaseException) -> bool:
    """An OSError that says the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and not isinstance(exc, DiskFull) and exc.errno in FULL_ERRNOS
