"""Crash-safe writes: write to a temporary sibling, then rename over the target.

A reader never sees a half-written file: either the old file (or none) or the
complete new one. A killed writer leaves at most a ``.tmp-*`` sibling, which
readers ignore and ``clean_temporaries`` removes.

A temporary's name says who wrote it: ``.tmp-<host>-<pid>-<random>-<target name>``, where
``<host>`` is 8 hex digits of this machine's name and boot id (:data:`HOST_TAG`). So a
cleaner on the same machine knows at once whether the writer is still alive: a dead
writer's temporary goes whatever its age, a live writer's is never touched. Temporaries
of another machine (a shared ``BEFA_HOME``), of a previous boot, or named before this
scheme (``.tmp-<random>-<name>``) go only once older than a safe age.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import DiskFull, is_disk_full
from storage.faults import pause_point

TMP_PREFIX = ".tmp-"


def _host_tag() -> str:
    """8 hex digits naming this machine and boot: a pid means something only on the host (and
    boot) that issued it."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return hashlib.sha256(f"{socket.gethostname()}\0{boot}".encode()).hexdigest()[:8]


HOST_TAG = _host_tag()
# .tmp-<host tag>-<pid>-<12 hex>-<name>: what tells a cleaner whose temporary it is
_WRITER = re.compile(rf"^{re.escape(TMP_PREFIX)}([0-9a-f]{{8}})-(\d+)-[0-9a-f]{{12}}-")


def tmp_name(name: str) -> str:
    """The name of a temporary for the file ``name``, carrying this writer's host and pid."""
    return f"{TMP_PREFIX}{HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:12]}-{name}"


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(tmp_name(path.name))


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_alive(name: str) -> bool | None:
    """Whether the process that wrote the temporary ``name`` is alive: True or False when the
    name carries this host's tag and a pid, None when it cannot tell (an older name, another
    machine, a previous boot)."""
    match = _WRITER.match(name)
    if match is None or match.group(1) != HOST_TAG:
        return None
    return pid_alive(int(match.group(2)))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it is fsync'ed and renamed to ``path``.

    A full disk (while the caller writes, at the fsync or the rename) raises ``DiskFull``."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        pause_point(f"write:{path.name}")  # crash tests stop here: written, not yet renamed
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(path, exc) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: str | os.PathLike, table: pa.Table, **kwargs: Any) -> Path:
    kwargs.setdefault("compression", "zstd")
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)
    return Path(path)


# For a temporary whose writer cannot be told (see the module docstring): a write in progress
# renames its temporary within seconds; one an hour old was left by a killed writer.
# Cleaning younger files could delete a concurrent writer's work.
SAFE_AGE_S = 3600.0


def is_litter(path: Path, cutoff: float) -> bool:
    """A temporary a killed writer left: its writer is known dead, or (writer unknown) it was
    last modified before ``cutoff`` (a time.time() value). A live writer's is never litter."""
    alive = writer_alive(path.name)
    if alive is not None:
        return not alive
    return path.stat().st_mtime < cutoff


def clean_temporaries(folder: str | os.PathLike, older_than_s: float = SAFE_AGE_S, dry_run: bool = False) -> list[Path]:
    """Remove temporaries left by killed writers under ``folder``: files named ``.tmp-*``
    whose writer (named in the file name) is dead, or, when the name does not tell, older
    than ``older_than_s``; returns what was (or, with ``dry_run``, would be) removed."""
    root = Path(folder)
    if not root.exists():
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for p in root.rglob(f"{TMP_PREFIX}*"):
        try:
            if p.is_file() and is_litter(p, cutoff):
                if not dry_run:
                    p.unlink()
                removed.append(p)
        except FileNotFoundError:  # renamed or removed by its writer meanwhile
            continue
    return removed
