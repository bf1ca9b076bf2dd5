"""Catalog versions: one ingest is one unit, switched in by one atomic rename.

Layout of a catalog folder (``settings.catalog_dir(name)``, the catalog's handle)::

    CURRENT                            the current version's id (one line)
    .lock                              the per-catalog OS file lock (``fcntl.flock``)
    versions/<id>/catalog.json         what the version holds (counts, fingerprints, file hashes)
    versions/<id>/items.parquet        ... interactions.parquet, rejects.parquet,
                                       ingest_report.json, ingest_report.md
    splits/<interactions fingerprint>/<split>.parquet (+ .json)

An ingest writes its version into ``versions/.tmp-<random>/``, renames it to
``versions/<id>/`` and only then replaces ``CURRENT`` (temporary file + ``os.replace``),
as the feature store does. A reader resolves ``CURRENT`` once and reads that version's
files, so it sees the old catalog or the new one, never a mix; a killed ingest leaves the
previous version current (and at most a ``.tmp-*-CURRENT`` beside it, when it died while
switching: the next ingest removes it under the lock, and so does ``befa gc``, the writer
being dead). Ingests of one catalog take ``.lock`` in turn (the second one waits, saying
so, and fails clearly after a timeout).

Splits are shared between versions, keyed by the interactions fingerprint (what a split
indexes, :meth:`Catalog.interactions_fingerprint`): a re-ingest that leaves the
interactions unchanged finds its splits with nothing copied, one that changes them finds
none (and says so), and the previous version keeps its own splits until it is pruned.
Ingest keeps the newest :data:`KEEP_VERSIONS` versions and removes older ones, with the
split folders no kept version uses.

A folder written before versions (``catalog.json`` and the Parquet files at its top,
``splits/*.parquet``) is read as it is; the next ingest writes a version and removes the
old top-level files (its splits are copied to the version's split folder when its
interactions are unchanged, and left where they are, since runs record their paths).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from storage.atomic import TMP_PREFIX, write_bytes, write_text
from storage.faults import pause_point
from storage.locks import LockTimeout, file_lock

CURRENT = "CURRENT"
VERSIONS = "versions"
SPLITS = "splits"
LOCK = ".lock"
META = "catalog.json"
KEEP_VERSIONS = 3
LOCK_TIMEOUT_S = 600.0
# files of one version (and, before versions, of the catalog folder itself)
VERSION_FILES = (
    "items.parquet",
    "interactions.parquet",
    "rejects.parquet",
    "ingest_report.json",
    "ingest_report.md",
    META,
)
_ID = re.compile(r"(\d+)-")


class CatalogLockTimeout(LockTimeout):
    """Another ingest of the same catalog held its lock for longer than the timeout."""


def current_version(folder: str | Path) -> str | None:
    """The id ``CURRENT`` names, or None for a catalog written before versions (or none)."""
    try:
        text = (Path(folder) / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def files_dir(folder: str | Path) -> Path:
    """Where the current version's files are: ``versions/<id>`` (or the folder itself,
    for a catalog written before versions)."""
    version = current_version(folder)
    return Path(folder) / VERSIONS / version if version else Path(folder)


def meta_path(folder: str | Path) -> Path:
    """The current ``catalog.json`` (it may not exist: nothing ingested yet)."""
    return files_dir(folder) / META


def is_ingested(folder: str | Path) -> bool:
    return meta_path(folder).exists()


def splits_dir(folder: str | Path, interactions_fingerprint: str | None, versioned: bool) -> Path:
    """The splits of a catalog whose interactions have this fingerprint."""
    if not versioned or not interactions_fingerprint:
        return Path(folder) / SPLITS
    return Path(folder) / SPLITS / interactions_fingerprint


def current_splits_dir(folder: str | Path) -> Path:
    """The splits of the current version (read from its ``catalog.json``)."""
    version = current_version(folder)
    if version is None:
        return Path(folder) / SPLITS
    meta = _read_meta(Path(folder) / VERSIONS / version)
    return splits_dir(folder, meta.get("interactions_fingerprint"), versioned=True)


def _read_meta(version_dir: Path) -> dict:
    try:
        return json.loads((version_dir / META).read_text())
    except (FileNotFoundError, ValueError):
        return {}


# -- the lock --------------------------------------------------------------------------
@contextlib.contextmanager
def catalog_lock(
    folder: str | Path, timeout_s: float = LOCK_TIMEOUT_S, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the catalog's OS lock (``fcntl.flock`` on ``<folder>/.lock``, ``storage.locks``).
    A second holder waits, tells ``on_wait`` once why, and raises :class:`CatalogLockTimeout`
    after ``timeout_s``. The OS releases the lock when the process dies, so a killed ingest
    never leaves the catalog locked."""
    folder = Path(folder)
    try:
        with file_lock(folder / LOCK, f"catalog {folder.name}", timeout_s, on_wait, holder="another ingest"):
            yield
    except LockTimeout as exc:
        if isinstance(exc, CatalogLockTimeout):
            raise
        raise CatalogLockTimeout(
            f"{folder}: another ingest of this catalog held its lock ({folder / LOCK}) for more than {timeout_s:g} s; "
            "wait for it to finish (or stop it) and run this ingest again"
        ) from None


# -- writing a version -------------------------------------------------------------------
def version_ids(folder: str | Path) -> list[str]:
    """Complete versions, oldest first."""
    root = Path(folder) / VERSIONS
    if not root.is_dir():
        return []
    ids = [p.name for p in root.iterdir() if p.is_dir() and _ID.match(p.name)]
    return sorted(ids, key=lambda v: int(_ID.match(v).group(1)))


def write_version(folder: str | Path, write_files: Callable[[Path], None]) -> str:
    """Write a new version with ``write_files(dir)`` (which writes ``catalog.json`` last)
    and make it current; returns its id. The caller holds :func:`catalog_lock`."""
    folder = Path(folder)
    root = folder / VERSIONS
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        write_files(tmp)
        ids = version_ids(folder)
        number = int(_ID.match(ids[-1]).group(1)) + 1 if ids else 1
        version = f"{number:04d}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
        os.replace(tmp, root / version)
        _fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    pause_point("catalog-switch")
    write_text(folder / CURRENT, version + "\n")
    return version


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(folder: str | Path, keep: int = KEEP_VERSIONS) -> list[str]:
    """Remove versions older than the newest ``keep`` (never the current one), leftovers
    of killed ingests, split folders no kept version uses, and the top-level files of a
    catalog written before versions. The caller holds :func:`catalog_lock`, so no other
    writer is at work. Returns what was removed, as paths relative to the folder."""
    folder = Path(folder)
    current = current_version(folder)
    if current is None:
        return []
    removed: list[str] = []
    root = folder / VERSIONS
    for tmp in root.glob(f"{TMP_PREFIX}*"):  # under the lock, only a dead writer's
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(str(tmp.relative_to(folder)))
    removed += remove_switch_leftovers(folder)
    ids = version_ids(folder)
    kept = set(ids[-keep:]) | {current}
    for version in ids:
        if version not in kept:
            shutil.rmtree(root / version, ignore_errors=True)
            removed.append(f"{VERSIONS}/{version}")
    used = {_read_meta(root / v).get("interactions_fingerprint") for v in kept}
    splits = folder / SPLITS
    if splits.is_dir():
        for sub in splits.iterdir():
            if sub.is_dir() and sub.name not in used:
                shutil.rmtree(sub, ignore_errors=True)
                removed.append(str(sub.relative_to(folder)))
    removed += _remove_unversioned(folder)
    return removed


def remove_switch_leftovers(folder: str | Path) -> list[str]:
    """The temporaries at the catalog folder's top (``.tmp-*-CURRENT``: an ingest killed while
    switching versions). Only an ingest writes there, under the catalog lock, so with the lock
    held every one of them is a dead writer's, however young. The caller holds the lock."""
    removed = []
    for tmp in Path(folder).glob(f"{TMP_PREFIX}*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    return removed


def _remove_unversioned(folder: Path) -> list[str]:
    """The files a catalog written before versions kept at the folder's top (now superseded).
    Its ``splits/*.parquet`` stay: runs record their paths (and a copy moved to the new
    version's split folder when the interactions are unchanged)."""
    removed = []
    for name in VERSION_FILES:
        if (folder / name).exists():
            (folder / name).unlink()
            removed.append(name)
    return removed


def adopt_unversioned_splits(folder: str | Path, target: Path) -> list[str]:
    """Copy the splits of a catalog written before versions into ``target`` (the split
    folder of a new version whose interactions are the same); returns their names."""
    src = Path(folder) / SPLITS
    if not src.is_dir():
        return []
    names = []
    for p in sorted(src.glob("*.parquet")):
        target.mkdir(parents=True, exist_ok=True)
        for f in (p, p.with_suffix(".json")):
            if f.exists() and not (target / f.name).exists():
                write_bytes(target / f.name, f.read_bytes())
        names.append(p.stem)
    return names
