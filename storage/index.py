"""Snapshot files of a feature set: ``snapshots/<id>.parquet``, the ``CURRENT`` pointer, and the commit.

A snapshot file is an index (item_id, content_hash, part, row) sorted by item_id,
with the :class:`~storage.snapshots.Snapshot` record in its metadata. A commit writes
the snapshot file atomically and only then atomically replaces ``CURRENT``, so a
reader sees the old snapshot or the new one, never a mix. :class:`SnapshotFiles`
caches records by path and the last few decoded indexes (snapshot files never change).
"""

from __future__ import annotations

import posixpath
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.filesystem import StoreFS
from storage.keys import FeatureSetKey
from storage.parts import Available
from storage.snapshots import INDEX_SCHEMA, Snapshot, snapshot_from_metadata, snapshot_id, snapshot_metadata

SNAPSHOTS_DIR = "snapshots"
CURRENT_FILE = "CURRENT"
_SNAPSHOT_RE = re.compile(r"^([0-9a-f]{16})\.parquet$")
_INDEX_WRITE_OPTIONS: dict[str, Any] = dict(compression="zstd", use_dictionary=["part"])
_DECODED_CACHE = 8  # indexes are small, but bound the cache anyway


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def iso_to_ns(iso: str) -> int:
    dt = datetime.fromisoformat(iso)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


@dataclass(frozen=True)
class DecodedIndex:
    """A snapshot index decoded for lookups: Arrow keys plus numpy part codes and rows."""

    item_id: pa.Array
    content_hash: pa.Array
    parts: tuple[str, ...]
    part_code: np.ndarray  # int32, into ``parts``
    row: np.ndarray  # int64


def index_rows(available: Available, positions: pa.Array) -> pa.Table:
    """Snapshot index rows (item_id, content_hash, part, row) for ``positions`` of ``available``."""
    taken = available.rows.take(positions)
    names = pa.array(available.parts, pa.string())
    part = names.take(taken["part_pos"]) if len(names) else pa.array([], pa.string())
    return pa.table(
        {"item_id": taken["item_id"], "content_hash": taken["content_hash"], "part": part, "row": taken["row"]}
    )


class SnapshotFiles:
    """The snapshot files and ``CURRENT`` pointers of every feature set under one store root."""

    def __init__(self, fs: StoreFS):
        self.fs = fs
        self._records: dict[str, Snapshot] = {}
        self._decoded: OrderedDict[str, DecodedIndex] = OrderedDict()

    def path(self, folder: str, sid: str) -> str:
        return posixpath.join(folder, SNAPSHOTS_DIR, f"{sid}.parquet")

    def load(self, folder: str, sid: str) -> Snapshot | None:
        path = self.path(folder, sid)
        snap = self._records.get(path)
        if snap is None:
            if not self.fs.exists(path):
                return None
            snap = snapshot_from_metadata(self.fs.parquet_schema(path).metadata, path)
            self._records[path] = snap
        return snap

    def current(self, folder: str) -> Snapshot | None:
        pointer = posixpath.join(folder, CURRENT_FILE)
        data = self.fs.read_bytes(pointer)
        if data is None:
            return None
        sid = data.decode("utf-8").strip()
        snap = self.load(folder, sid)
        if snap is None:
            raise ValueError(f"{pointer} names snapshot {sid!r}, which is not in {folder}/{SNAPSHOTS_DIR}")
        return snap

    def all(self, folder: str) -> list[Snapshot]:
        """Every stored snapshot, oldest first."""
        found = []
        for name in self.fs.listdir(posixpath.join(folder, SNAPSHOTS_DIR)):
            m = _SNAPSHOT_RE.match(name)
            if m:
                snap = self.load(folder, m.group(1))
                if snap is not None:
                    found.append(snap)
        return sorted(found, key=lambda s: (s.created, s.id))

    def resolve(self, folder: str, snapshot: str | None) -> Snapshot | None:
        """The snapshot with id ``snapshot``, or the current one (None before any commit) when None."""
        if snapshot is None:
            return self.current(folder)
        if not isinstance(snapshot, str) or not re.fullmatch(r"[0-9a-f]{16}", snapshot):
            raise ValueError(f"snapshot id must be 16 hex digits, got {snapshot!r}")
        snap = self.load(folder, snapshot)
        if snap is None:
            raise LookupError(f"snapshot {snapshot} not found in {folder} (never written, or removed by gc)")
        return snap

    def decoded(self, folder: str, snap: Snapshot) -> DecodedIndex:
        path = self.path(folder, snap.id)
        index = self._decoded.get(path)
        if index is not None:
            self._decoded.move_to_end(path)
            return index
        table = self.fs.read_parquet(path)
        part = table.column("part").combine_chunks().dictionary_encode()
        index = DecodedIndex(
            item_id=table.column("item_id").combine_chunks(),
            content_hash=table.column("content_hash").combine_chunks(),
            parts=tuple(part.dictionary.to_pylist()),
            part_code=part.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False),
            row=table.column("row").to_numpy(),
        )
        self._decoded[path] = index
        while len(self._decoded) > _DECODED_CACHE:
            self._decoded.popitem(last=False)
        return index

    def commit(
        self,
        folder: str,
        key: FeatureSetKey,
        index: pa.Table,
        dim: int,
        missing: int,
        backends: dict[str, int] | None = None,
    ) -> Snapshot:
        """Make ``index`` the current snapshot: write its file unless that state exists, then move ``CURRENT``.
        ``backends``: rows per inference backend, for the record."""
        index = index.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA).sort_by("item_id")
        sid = snapshot_id(key, dim, index)
        current = self.current(folder)
        if current is not None and current.id == sid:
            return current
        snap = self.load(folder, sid)
        if snap is None:  # a state seen before keeps its original record
            snap = Snapshot(
                id=sid,
                dataset=key.dataset,
                fingerprint=key.fingerprint,
                modality=key.modality,
                dim=dim,
                num_rows=index.num_rows,
                parts=tuple(pc.unique(index.column("part")).sort().to_pylist()) if index.num_rows else (),
                created=utc_now(),
                parent=current.id if current is not None else None,
                missing=missing,
                backends=dict(backends or {}),
            )
            table = index.replace_schema_metadata(snapshot_metadata(snap))
            self.fs.write_parquet(self.path(folder, sid), table, **_INDEX_WRITE_OPTIONS)
        # The snapshot file is complete before the pointer moves: readers see old or new.
        self.fs.write_bytes(posixpath.join(folder, CURRENT_FILE), f"{sid}\n".encode("utf-8"))
        return snap

    def remove(self, folder: str, sid: str) -> None:
        path = self.path(folder, sid)
        self.fs.remove(path)
        self._records.pop(path, None)
        self._decoded.pop(path, None)
