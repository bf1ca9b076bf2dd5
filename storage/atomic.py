"""Crash-safe writes: write to a temporary sibling, then rename over the target.

A reader never sees a half-written file: either the old file (or none) or the
complete new one. A killed writer leaves at most a ``.tmp-*`` sibling, which
readers ignore and ``clean_temporaries`` removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from storage.faults import pause_point

TMP_PREFIX = ".tmp-"


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it is fsync'ed and renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        pause_point(f"write:{path.name}")  # crash tests stop here: written, not yet renamed
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
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


# A write in progress renames its temporary within seconds; one an hour old was left by a
# killed writer. Cleaning younger files could delete a concurrent writer's work.
SAFE_AGE_S = 3600.0


def clean_temporaries(folder: str | os.PathLike, older_than_s: float = SAFE_AGE_S, dry_run: bool = False) -> list[Path]:
    """Remove temporaries left by killed writers under ``folder`` (files named ``.tmp-*`` and
    older than ``older_than_s``); returns what was (or, with ``dry_run``, would be) removed."""
    root = Path(folder)
    if not root.exists():
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for p in root.rglob(f"{TMP_PREFIX}*"):
        try:
            if p.is_file() and p.stat().st_mtime < cutoff:
                if not dry_run:
                    p.unlink()
                removed.append(p)
        except FileNotFoundError:  # renamed or removed by its writer meanwhile
            continue
    return removed
