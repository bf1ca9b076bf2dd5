"""The Parquet feature store: frozen-encoder features, versioned, incremental and crash-safe.

Features are keyed by (dataset, encoder fingerprint, modality, item_id, content_hash).
One (dataset, fingerprint, modality) is a *feature set*; its files are::

    <root>/_encoders/<fingerprint>.json                       encoder metadata
    <root>/<dataset>/<fingerprint>/<modality>/
        parts/part-<time_ns>-<uuid8>.parquet                  immutable vector parts
        snapshots/<snapshot id>.parquet                       snapshot indexes
        CURRENT                                               id of the current snapshot

A part holds ``item_id: string, content_hash: string,
embedding: fixed_size_list<float32>[D]`` in one row group (zstd by default; no dictionary
or statistics on the vectors, which would only cost time). A snapshot is an index
(item_id, content_hash, part, row) over parts, see :mod:`storage.snapshots`.
Everything is plain Parquet that pyarrow, DuckDB or Polars read directly;
:func:`duckdb_snapshot_query` gives the SQL for one snapshot's rows. Globs over
parts must say ``part-*.parquet``: DuckDB's ``*`` also matches ``.tmp-*`` files.

Life of a write:

1. ``write_part`` writes new vectors as a new part (temporary file, then rename).
   A part that no snapshot references yet is *pending*: ``existing_keys`` already
   sees it, so an interrupted extraction resumes where it stopped.
2. ``commit(keep)`` makes a new snapshot from the newest row of every kept key
   found in any part on disk; items not in ``keep`` drop out. The snapshot file is
   written atomically, then ``CURRENT`` is atomically replaced: a reader sees the
   old snapshot or the new one, never a mix. Older snapshots stay readable by id.
3. ``gc`` deletes snapshots beyond the newest ``keep_last`` (never the current
   one), parts no retained snapshot references (pending parts newer than the
   latest snapshot are kept) and temporaries left by killed writers.

Writers: one writer per feature set at a time (commits are last-writer-wins on
``CURRENT``); any number of readers.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from storage.filesystem import StoreFS
from storage.snapshots import (
    INDEX_SCHEMA,
    Snapshot,
    UpsertResult,
    snapshot_from_metadata,
    snapshot_id,
    snapshot_metadata,
)

__all__ = ["FeatureStore", "Snapshot", "UpsertResult", "duckdb_snapshot_query"]

ENCODERS_DIR = "_encoders"
PARTS_DIR = "parts"
SNAPSHOTS_DIR = "snapshots"
CURRENT_FILE = "CURRENT"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}$")
_PART_RE = re.compile(r"^part-(\d{20})-[0-9a-f]{8}\.parquet$")
_SNAPSHOT_RE = re.compile(r"^([0-9a-f]{16})\.parquet$")
_CONTROL_RE = "[\\x00-\\x1f\\x7f]"

# Vectors: no dictionary (every value distinct) and no min/max statistics (useless
# for vectors, and they cost write time); the key columns keep statistics so that
# engines can prune on item_id.
_PART_WRITE_OPTIONS: dict[str, Any] = dict(
    compression="zstd",
    use_dictionary=False,
    write_statistics=["item_id", "content_hash"],
)
_INDEX_WRITE_OPTIONS: dict[str, Any] = dict(
    compression="zstd",
    use_dictionary=["part"],
)
_PART_SCHEMA_FIELDS = ("item_id", "content_hash", "embedding")


def check_name(kind: str, value: Any) -> str:
    """Validate a dataset name, encoder fingerprint or modality as one safe path segment."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or ".." in value:
        raise ValueError(
            f"{kind} {value!r} is not path-safe: use 1-200 letters, digits and . _ + = -, "
            "starting with a letter or digit, without '..'"
        )
    return value


def duckdb_snapshot_query(store_root: str, dataset: str, fingerprint: str, modality: str, snapshot: str) -> str:
    """The one-line DuckDB query returning (item_id, content_hash, embedding) of a snapshot.

    It joins the snapshot index with the parts on (file name, row number), so it
    shows exactly the rows ``FeatureStore.read(..., snapshot=...)`` returns.
    ``store_root`` must be a path (or URL) DuckDB can open.
    """
    base = posixpath.join(str(store_root).rstrip("/"), dataset, fingerprint, modality)
    return (
        "SELECT s.item_id, s.content_hash, p.embedding "
        f"FROM read_parquet('{base}/{SNAPSHOTS_DIR}/{snapshot}.parquet') s "
        f"JOIN read_parquet('{base}/{PARTS_DIR}/part-*.parquet', filename=true, file_row_number=true) p "
        "ON parse_filename(p.filename) = s.part AND p.file_row_number = s.row"
    )


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _iso_to_ns(iso: str) -> int:
    dt = datetime.fromisoformat(iso)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def _has_empty_or_control(arr: pa.Array) -> bool:
    """Fast screen: any empty string or control byte? (UTF-8 continuation bytes are >= 0x80.)"""
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    if (np.diff(offsets) == 0).any():
        return True
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return bool(((data < 0x20) | (data == 0x7F)).any())


def _string_array(values: Iterable[Any], what: str) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = values
    else:
        try:
            arr = pa.array(list(values), type=pa.string())
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            raise ValueError(f"{what} must be strings: {exc}") from None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{what}: row {row} is missing (null)")
    if len(arr) and _has_empty_or_control(arr):
        bad = pc.or_(pc.equal(pc.utf8_length(arr), 0), pc.match_substring_regex(arr, _CONTROL_RE))
        if pc.any(bad).as_py():
            row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{what}: row {row} ({arr[row].as_py()!r}) is empty or holds control characters")
    return arr


def _as_float32_matrix(embeddings: Any) -> np.ndarray:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().to("cpu", torch.float32).numpy()
    x = np.ascontiguousarray(np.asarray(embeddings), dtype=np.float32)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"embeddings must be a 2-D (items, dim) array, got shape {tuple(x.shape)}")
    return x


def _first_duplicate(values: pa.Array) -> int | None:
    """Row of the first value seen before (in row order), or None when all are distinct."""
    if len(values) < 2:
        return None
    # A sort is several times cheaper than a hash set of long strings here.
    order = pc.sort_indices(values)
    ordered = values.take(order)
    same = pc.equal(ordered.slice(1), ordered.slice(0, len(values) - 1))
    if not pc.any(same).as_py():
        return None
    rows = order.to_numpy()
    hits = np.flatnonzero(same.to_numpy(zero_copy_only=False))
    # For each equal neighbour pair the later row repeats; report the smallest such row.
    return int(np.maximum(rows[hits], rows[hits + 1]).min())


def _joined_keys(ids: pa.Array, hashes: pa.Array) -> pa.Array:
    # \x1f cannot appear in validated ids or hashes, so the joined key is unambiguous.
    return pc.binary_join_element_wise(ids, hashes, "\x1f")


@dataclass(frozen=True)
class _Index:
    """A snapshot index decoded for lookups: Arrow keys plus numpy part codes and rows."""

    item_id: pa.Array
    content_hash: pa.Array
    parts: tuple[str, ...]
    part_code: np.ndarray  # int32, into ``parts``
    row: np.ndarray  # int64


@dataclass(frozen=True)
class _Available:
    """Newest row of every key over ``parts``: key, item_id, content_hash, part_pos, row."""

    parts: tuple[str, ...]
    rows: pa.Table


def _empty_rows() -> pa.Table:
    return pa.table(
        {
            "key": pa.array([], pa.string()),
            "item_id": pa.array([], pa.string()),
            "content_hash": pa.array([], pa.string()),
            "part_pos": pa.array([], pa.int32()),
            "row": pa.array([], pa.int64()),
        }
    )


class FeatureStore:
    """Versioned Parquet store of item features under a local folder or fsspec URI.

    Args:
        root: a local path (default use) or any fsspec URI such as
            ``file:///data/features``, ``memory://features`` or ``s3://bucket/features``.
        compression: Parquet codec of new parts (``zstd`` default; ``none`` trades
            about 10% more disk for faster writes and reads of float vectors).
    """

    def __init__(self, root: str | os.PathLike, *, compression: str = "zstd"):
        self.fs = StoreFS(root)
        self.compression = compression
        self._part_keys: dict[str, pa.Table] = {}
        self._part_dims: dict[str, int] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._indexes: OrderedDict[str, _Index] = OrderedDict()
        self._available_cache: dict[str, _Available] = {}

    def __repr__(self) -> str:
        return f"FeatureStore({self.fs.uri!r})"

    @property
    def root(self) -> str:
        """The root as given (path or URI)."""
        return self.fs.uri

    def feature_set_path(self, dataset: str, fingerprint: str, modality: str) -> str:
        """Folder of one feature set, as a path on the store's filesystem."""
        return self.fs.join(
            check_name("dataset", dataset), check_name("fingerprint", fingerprint), check_name("modality", modality)
        )

    # ------------------------------------------------------------------ encoders

    def _encoder_path(self, fingerprint: str) -> str:
        return self.fs.join(ENCODERS_DIR, f"{check_name('fingerprint', fingerprint)}.json")

    def register_encoder(self, fingerprint: str, info: Mapping[str, Any]) -> None:
        """Record what produced a fingerprint (spec, weights identity, dim, preprocessing).

        ``info['random_init']`` (bool) is required so that reports can label features
        from randomly initialised encoders. Registering again with the same values is
        a no-op and new keys are merged in; changing a recorded value raises, since a
        fingerprint must always name the same encoder.
        """
        path = self._encoder_path(fingerprint)
        if not isinstance(info, Mapping):
            raise TypeError(f"encoder info for {fingerprint!r} must be a mapping, got {type(info).__name__}")
        if not isinstance(info.get("random_init"), bool):
            raise ValueError(f"encoder info for {fingerprint!r} needs 'random_init': true/false")
        dim = info.get("dim")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"encoder info for {fingerprint!r}: 'dim' must be a positive int, got {dim!r}")
        try:
            payload = json.loads(json.dumps(dict(info), sort_keys=True))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"encoder info for {fingerprint!r} is not JSON-serialisable: {exc}") from None
        payload.setdefault("fingerprint", fingerprint)
        existing = self.encoder_info(fingerprint)
        if existing is not None:
            changed = sorted(k for k in existing.keys() & payload.keys() if existing[k] != payload[k])
            if changed:
                raise ValueError(
                    f"encoder {fingerprint!r} is already registered in {path} with different "
                    f"{', '.join(changed)}: a fingerprint must identify one encoder"
                )
            payload = {**existing, **payload}
            if payload == existing:
                return
        self.fs.write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    def encoder_info(self, fingerprint: str) -> dict | None:
        """The registered metadata of ``fingerprint``, or None."""
        path = self._encoder_path(fingerprint)
        data = self.fs.read_bytes(path)
        if data is None:
            return None
        try:
            return json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: corrupt encoder record: {exc}") from None

    # ------------------------------------------------------------------ parts

    def _parts(self, folder: str) -> list[str]:
        """Part file names, oldest first (names start with the write time)."""
        return [n for n in self.fs.listdir(posixpath.join(folder, PARTS_DIR)) if _PART_RE.match(n)]

    def _part_path(self, folder: str, name: str) -> str:
        return posixpath.join(folder, PARTS_DIR, name)

    def _keys_of_part(self, folder: str, name: str) -> pa.Table:
        path = self._part_path(folder, name)
        keys = self._part_keys.get(path)
        if keys is None:  # parts are immutable, so caching by path is safe
            keys = self.fs.read_parquet(path, columns=["item_id", "content_hash"])
            self._part_keys[path] = keys
        return keys

    def _dim_of_part(self, folder: str, name: str) -> int:
        path = self._part_path(folder, name)
        dim = self._part_dims.get(path)
        if dim is None:
            field = self.fs.parquet_schema(path).field("embedding")
            dim = self._part_dims[path] = field.type.list_size
        return dim

    def _embeddings_of_part(self, folder: str, name: str) -> tuple[np.ndarray, bool]:
        """The part's vectors as an (n, D) float32 array and whether it is an Arrow buffer view."""
        path = self._part_path(folder, name)
        column = self.fs.read_parquet(path, columns=["embedding"]).column("embedding")
        dim = column.type.list_size
        if column.num_chunks == 1:
            flat = column.chunk(0).flatten().to_numpy(zero_copy_only=True)
            return flat.reshape(-1, dim), True
        flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=True)
        return flat.reshape(-1, dim), False

    def _existing_dim(self, folder: str, fingerprint: str) -> int | None:
        parts = self._parts(folder)
        if parts:
            return self._dim_of_part(folder, parts[-1])
        current = self._current_in(folder)
        if current is not None and current.dim:
            return current.dim
        info = self.encoder_info(fingerprint) or {}
        return info.get("dim")

    def _part_table(self, item_ids: Any, content_hashes: Any, embeddings: Any) -> tuple[pa.Table, np.ndarray]:
        """Validated keys (item_id, content_hash) and the (n, D) float32 matrix."""
        ids = _string_array(item_ids, "item_ids")
        hashes = _string_array(content_hashes, "content_hashes")
        x = _as_float32_matrix(embeddings)
        if not (len(ids) == len(hashes) == x.shape[0]):
            raise ValueError(
                f"item_ids ({len(ids)}), content_hashes ({len(hashes)}) and embeddings ({x.shape[0]} rows) "
                "must have the same length"
            )
        dup = _first_duplicate(ids)
        if dup is not None:
            raise ValueError(f"item_ids: row {dup} repeats item {ids[dup].as_py()!r}")
        return pa.table({"item_id": ids, "content_hash": hashes}), x

    def _write_part_table(self, folder: str, fingerprint: str, keys: pa.Table, x: np.ndarray) -> str:
        if keys.num_rows == 0:
            raise ValueError(f"{folder}: refusing to write an empty part")
        # Checked here, on the rows actually written: skipped rows are never stored.
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise ValueError(
                f"embeddings: row {row} (item {keys['item_id'][row].as_py()!r}) has NaN or infinite values"
            )
        dim = x.shape[1]
        expected = self._existing_dim(folder, fingerprint)
        if expected is not None and expected != dim:
            raise ValueError(
                f"{folder}: embeddings have dimension {dim}, but this (dataset, encoder, modality) "
                f"holds dimension {expected}"
            )
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x).reshape(-1)), dim)
        table = keys.select(["item_id", "content_hash"]).append_column("embedding", vectors)
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        path = self._part_path(folder, name)
        # One row group: a part then reads back as one Arrow chunk, the zero-copy case.
        options = {**_PART_WRITE_OPTIONS, "compression": self.compression}
        self.fs.write_parquet(path, table, row_group_size=table.num_rows, **options)
        self._part_keys[path] = table.select(["item_id", "content_hash"])
        self._part_dims[path] = dim
        return name

    def write_part(
        self,
        dataset: str,
        fingerprint: str,
        modality: str,
        item_ids: Sequence[str],
        content_hashes: Sequence[str],
        embeddings: np.ndarray | torch.Tensor,
    ) -> str:
        """Write one immutable part atomically and return its file name.

        The rows become readable through ``read`` only after ``commit``, but
        ``existing_keys`` sees them at once, so an interrupted extraction resumes.
        """
        folder = self.feature_set_path(dataset, fingerprint, modality)
        keys, x = self._part_table(item_ids, content_hashes, embeddings)
        return self._write_part_table(folder, fingerprint, keys, x)

    def _rows_of_part(self, folder: str, parts: Sequence[str], pos: int) -> pa.Table:
        keys = self._keys_of_part(folder, parts[pos])
        n = keys.num_rows
        return pa.table(
            {
                "key": _joined_keys(keys["item_id"].combine_chunks(), keys["content_hash"].combine_chunks()),
                "item_id": keys["item_id"],
                "content_hash": keys["content_hash"],
                "part_pos": pa.array(np.full(n, pos, dtype=np.int32)),
                "row": pa.array(np.arange(n, dtype=np.int64)),
            }
        )

    def _available(self, folder: str) -> _Available:
        """The newest row of every key over all parts on disk (cached, updated incrementally).

        Parts are immutable and their names sort by write time, so when parts were
        only added since the last call, the cached table is updated with the new
        parts alone; otherwise (gc, a writer with an older clock) it is rebuilt.
        """
        parts = tuple(self._parts(folder))
        cached = self._available_cache.get(folder)
        if cached is not None and cached.parts == parts:
            return cached
        n_old = len(cached.parts) if cached is not None else 0
        if cached is not None and parts[:n_old] == cached.parts:
            rows = cached.rows
            for pos in range(n_old, len(parts)):
                new = self._rows_of_part(folder, parts, pos)
                # Within a part item_ids are unique, so a newer part replaces older rows key by key.
                rows = pa.concat_tables([rows.filter(pc.invert(pc.is_in(rows["key"], value_set=new["key"]))), new])
        else:
            tables = [self._rows_of_part(folder, parts, pos) for pos in range(len(parts))]
            rows = pa.concat_tables(tables) if tables else _empty_rows()
            if len(tables) > 1:
                ords = pc.add(
                    pc.shift_left(pc.cast(rows["part_pos"], pa.int64()), 32), rows["row"]
                )
                newest = (
                    pa.table({"key": rows["key"], "ord": ords})
                    .group_by("key", use_threads=False)
                    .aggregate([("ord", "max")])
                )
                keep = pc.is_in(ords, value_set=newest["ord_max"])
                rows = rows.filter(keep)
        available = _Available(parts=parts, rows=rows.combine_chunks())
        self._available_cache[folder] = available
        return available

    def existing_keys(self, dataset: str, fingerprint: str, modality: str) -> set[tuple[str, str]]:
        """Every (item_id, content_hash) with a row in a part on disk.

        That is the committed snapshots' rows plus pending parts (written, not yet
        committed): what an extraction need not compute again.
        """
        rows = self._available(self.feature_set_path(dataset, fingerprint, modality)).rows
        return set(zip(rows["item_id"].to_pylist(), rows["content_hash"].to_pylist()))

    # ------------------------------------------------------------------ snapshots

    def _snapshot_path(self, folder: str, sid: str) -> str:
        return posixpath.join(folder, SNAPSHOTS_DIR, f"{sid}.parquet")

    def _load_snapshot(self, folder: str, sid: str) -> Snapshot | None:
        path = self._snapshot_path(folder, sid)
        snap = self._snapshots.get(path)
        if snap is None:
            if not self.fs.exists(path):
                return None
            snap = snapshot_from_metadata(self.fs.parquet_schema(path).metadata, path)
            self._snapshots[path] = snap
        return snap

    def _current_in(self, folder: str) -> Snapshot | None:
        pointer = posixpath.join(folder, CURRENT_FILE)
        data = self.fs.read_bytes(pointer)
        if data is None:
            return None
        sid = data.decode("utf-8").strip()
        snap = self._load_snapshot(folder, sid)
        if snap is None:
            raise ValueError(f"{pointer} names snapshot {sid!r}, which is not in {folder}/{SNAPSHOTS_DIR}")
        return snap

    def current_snapshot(self, dataset: str, fingerprint: str, modality: str) -> Snapshot | None:
        """The snapshot ``read`` uses by default, or None before the first commit."""
        return self._current_in(self.feature_set_path(dataset, fingerprint, modality))

    def snapshots(self, dataset: str, fingerprint: str, modality: str) -> list[Snapshot]:
        """All stored snapshots of a feature set, oldest first."""
        folder = self.feature_set_path(dataset, fingerprint, modality)
        found = []
        for name in self.fs.listdir(posixpath.join(folder, SNAPSHOTS_DIR)):
            m = _SNAPSHOT_RE.match(name)
            if m:
                snap = self._load_snapshot(folder, m.group(1))
                if snap is not None:
                    found.append(snap)
        return sorted(found, key=lambda s: (s.created, s.id))

    def _index(self, folder: str, snap: Snapshot) -> _Index:
        path = self._snapshot_path(folder, snap.id)
        index = self._indexes.get(path)
        if index is not None:
            self._indexes.move_to_end(path)
            return index
        table = self.fs.read_parquet(path)
        part = table.column("part").combine_chunks().dictionary_encode()
        index = _Index(
            item_id=table.column("item_id").combine_chunks(),
            content_hash=table.column("content_hash").combine_chunks(),
            parts=tuple(part.dictionary.to_pylist()),
            part_code=part.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False),
            row=table.column("row").to_numpy(),
        )
        self._indexes[path] = index
        while len(self._indexes) > 8:  # indexes are small, but bound the cache anyway
            self._indexes.popitem(last=False)
        return index

    def _commit_index(self, folder: str, dataset: str, fingerprint: str, modality: str,
                      index: pa.Table, dim: int, missing: int) -> Snapshot:
        index = index.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA).sort_by("item_id")
        sid = snapshot_id(dataset, fingerprint, modality, dim, index)
        current = self._current_in(folder)
        if current is not None and current.id == sid:
            return current
        snap = self._load_snapshot(folder, sid)
        if snap is None:  # a state seen before keeps its original record
            snap = Snapshot(
                id=sid,
                dataset=dataset,
                fingerprint=fingerprint,
                modality=modality,
                dim=dim,
                num_rows=index.num_rows,
                parts=tuple(pc.unique(index.column("part")).sort().to_pylist()) if index.num_rows else (),
                created=_utc_now(),
                parent=current.id if current is not None else None,
                missing=missing,
            )
            table = index.replace_schema_metadata(snapshot_metadata(snap))
            self.fs.write_parquet(self._snapshot_path(folder, sid), table, **_INDEX_WRITE_OPTIONS)
        # The snapshot file is complete before the pointer moves: readers see old or new.
        self.fs.write_bytes(posixpath.join(folder, CURRENT_FILE), f"{sid}\n".encode("utf-8"))
        return snap

    def _index_from_available(self, available: _Available, rows: pa.Array) -> pa.Table:
        """Snapshot index rows (item_id, content_hash, part, row) for positions ``rows`` of ``available``."""
        taken = available.rows.take(rows)
        names = pa.array(available.parts, pa.string())
        part = names.take(taken["part_pos"]) if len(names) else pa.array([], pa.string())
        return pa.table(
            {"item_id": taken["item_id"], "content_hash": taken["content_hash"], "part": part, "row": taken["row"]}
        )

    def _dim_for_commit(self, folder: str, fingerprint: str, available: _Available, index: pa.Table) -> int:
        if index.num_rows:
            return self._dim_of_part(folder, index["part"][0].as_py())
        current = self._current_in(folder)
        if current is not None:
            return current.dim
        return int(self._existing_dim(folder, fingerprint) or 0)

    def commit(
        self, dataset: str, fingerprint: str, modality: str, keep: Iterable[tuple[str, str]]
    ) -> Snapshot:
        """Make the current snapshot exactly the kept keys that have a row in the store.

        For each (item_id, content_hash) in ``keep`` with a row in any part on disk
        (committed or pending), the newest such row is used; items not in ``keep``
        drop out; kept keys without a row are counted in ``Snapshot.missing``. If
        the result equals the current snapshot, nothing is written and it is returned.
        """
        folder = self.feature_set_path(dataset, fingerprint, modality)
        pairs = list(keep)
        if any(not isinstance(p, (tuple, list)) or len(p) != 2 for p in pairs):
            raise ValueError("keep must hold (item_id, content_hash) pairs")
        ids_list, hashes_list = (list(c) for c in zip(*pairs)) if pairs else ([], [])
        ids = _string_array(ids_list, "keep item_ids")
        hashes = _string_array(hashes_list, "keep content_hashes")
        keys = _joined_keys(ids, hashes)
        if _first_duplicate(ids) is not None:
            unique_keys = pc.unique(keys)
            first = pc.index_in(unique_keys, value_set=keys)
            ids, hashes, keys = ids.take(first), hashes.take(first), unique_keys
            dup = _first_duplicate(ids)
            if dup is not None:
                raise ValueError(f"keep names item {ids[dup].as_py()!r} with more than one content_hash")
        return self._commit_keys(folder, dataset, fingerprint, modality, keys)

    def _commit_keys(self, folder: str, dataset: str, fingerprint: str, modality: str, keys: pa.Array) -> Snapshot:
        available = self._available(folder)
        pos = pc.drop_null(pc.index_in(keys, value_set=available.rows["key"]))
        index = self._index_from_available(available, pos)
        dim = self._dim_for_commit(folder, fingerprint, available, index)
        return self._commit_index(
            folder, dataset, fingerprint, modality, index, dim, missing=len(keys) - index.num_rows
        )

    def upsert(
        self,
        dataset: str,
        fingerprint: str,
        modality: str,
        item_ids: Sequence[str],
        content_hashes: Sequence[str],
        embeddings: np.ndarray | torch.Tensor,
        keep: Iterable[tuple[str, str]] | None = None,
    ) -> UpsertResult:
        """Write the rows whose key is not in the store yet, then commit.

        ``keep`` defaults to the given keys, so items absent from this call drop out
        of the new snapshot (they stay readable through older snapshot ids).
        """
        folder = self.feature_set_path(dataset, fingerprint, modality)
        keys_table, x = self._part_table(item_ids, content_hashes, embeddings)
        keys = _joined_keys(keys_table["item_id"].combine_chunks(), keys_table["content_hash"].combine_chunks())
        available = self._available(folder)
        found = pc.index_in(keys, value_set=available.rows["key"])
        pos = pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        fresh_rows = np.flatnonzero(pos < 0)
        if len(fresh_rows):
            fresh = keys_table.take(pa.array(fresh_rows))
            name = self._write_part_table(folder, fingerprint, fresh, x[fresh_rows])
            parts = tuple(self._parts(folder))
            if parts == available.parts + (name,):
                # The new keys are disjoint from the cached ones: extend the cache
                # directly, and the new rows sit at its end in written order.
                new = self._rows_of_part(folder, parts, len(parts) - 1)
                pos[fresh_rows] = available.rows.num_rows + np.arange(len(fresh_rows))
                available = _Available(parts=parts, rows=pa.concat_tables([available.rows, new]).combine_chunks())
                self._available_cache[folder] = available
            else:  # another writer added parts meanwhile: look everything up again
                available = self._available(folder)
                pos = pc.fill_null(pc.index_in(keys, value_set=available.rows["key"]), -1).to_numpy(
                    zero_copy_only=False
                ).astype(np.int64)
        if keep is None:
            index = self._index_from_available(available, pa.array(pos[pos >= 0]))
            dim = self._dim_for_commit(folder, fingerprint, available, index)
            snap = self._commit_index(
                folder, dataset, fingerprint, modality, index, dim, missing=int((pos < 0).sum())
            )
        else:
            snap = self.commit(dataset, fingerprint, modality, keep)
        return UpsertResult(written=len(fresh_rows), skipped=len(keys) - len(fresh_rows), snapshot=snap)

    # ------------------------------------------------------------------ reading

    def _resolve(self, folder: str, snapshot: str | None) -> Snapshot | None:
        if snapshot is None:
            return self._current_in(folder)
        if not isinstance(snapshot, str) or not re.fullmatch(r"[0-9a-f]{16}", snapshot):
            raise ValueError(f"snapshot id must be 16 hex digits, got {snapshot!r}")
        snap = self._load_snapshot(folder, snapshot)
        if snap is None:
            raise LookupError(f"snapshot {snapshot} not found in {folder} (never written, or removed by gc)")
        return snap

    def read(
        self,
        dataset: str,
        fingerprint: str,
        modality: str,
        item_ids: Sequence[str],
        content_hashes: Sequence[str] | None = None,
        snapshot: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features aligned to ``item_ids``: an (I, D) float32 tensor and an (I,) bool mask.

        Rows without a feature are zero and False in the mask. With ``content_hashes``
        a row counts only if its stored hash matches, so stale features never leak.
        When the rows are one part's single chunk in the requested order (see
        ``compact``) the tensor is a view of the Arrow buffer (no copy; treat it as
        read-only and ``clone()`` before editing in place); otherwise it is built
        by one gather.
        """
        folder = self.feature_set_path(dataset, fingerprint, modality)
        ids = _string_array(item_ids, "item_ids")
        n = len(ids)
        snap = self._resolve(folder, snapshot)
        if snap is None:
            dim = (self.encoder_info(fingerprint) or {}).get("dim")
            if dim is None:
                raise LookupError(
                    f"no snapshot of {dataset}/{fingerprint}/{modality} in {self.root}, and encoder "
                    f"{fingerprint!r} has no registered dim to shape an empty result"
                )
            return torch.zeros(n, int(dim), dtype=torch.float32), torch.zeros(n, dtype=torch.bool)
        index = self._index(folder, snap)
        pos_arr = pc.index_in(ids, value_set=index.item_id)
        present = pc.is_valid(pos_arr)
        if content_hashes is not None:
            hashes = _string_array(content_hashes, "content_hashes")
            if len(hashes) != n:
                raise ValueError(f"content_hashes has {len(hashes)} entries for {n} item_ids")
            stored = index.content_hash.take(pos_arr)
            present = pc.and_(present, pc.fill_null(pc.equal(stored, hashes), False))
        mask = present.to_numpy(zero_copy_only=False)
        pos = pc.fill_null(pos_arr, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        sel = np.flatnonzero(mask)
        codes = index.part_code[pos[sel]]
        rows = index.row[pos[sel]]

        if n and len(sel) == n and (codes == codes[0]).all() and (np.diff(rows) == 1).all():
            emb, view = self._embeddings_of_part(folder, index.parts[codes[0]])
            if view:
                with warnings.catch_warnings():
                    # Arrow buffers come to numpy read-only; torch warns once about that.
                    warnings.simplefilter("ignore", UserWarning)
                    out = torch.from_numpy(emb[rows[0] : rows[0] + n])
                return out, torch.ones(n, dtype=torch.bool)
            return torch.from_numpy(np.ascontiguousarray(emb[rows[0] : rows[0] + n])), torch.ones(n, dtype=torch.bool)

        if n and len(sel) == n and (codes == codes[0]).all():
            # One part, every row present, another order: a single gather into the output.
            emb, _ = self._embeddings_of_part(folder, index.parts[codes[0]])
            out = np.empty((n, snap.dim), dtype=np.float32)
            np.take(emb, rows, axis=0, out=out)
            return torch.from_numpy(out), torch.ones(n, dtype=torch.bool)
        out = np.zeros((n, snap.dim), dtype=np.float32)
        for code in np.unique(codes):
            take = codes == code
            emb, _ = self._embeddings_of_part(folder, index.parts[code])
            out[sel[take]] = emb[rows[take]]
        return torch.from_numpy(out), torch.from_numpy(mask.astype(bool))

    def read_table(
        self, dataset: str, fingerprint: str, modality: str, snapshot: str | None = None
    ) -> pa.Table:
        """A snapshot's rows as an Arrow table (item_id, content_hash, embedding), sorted by item_id."""
        folder = self.feature_set_path(dataset, fingerprint, modality)
        snap = self._resolve(folder, snapshot)
        if snap is None:
            raise LookupError(f"no snapshot of {dataset}/{fingerprint}/{modality} in {self.root}")
        index = self._index(folder, snap)
        emb = self._gather(folder, index, np.arange(len(index.item_id)), snap.dim)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), snap.dim)
        return pa.table({"item_id": index.item_id, "content_hash": index.content_hash, "embedding": vectors})

    def _gather(self, folder: str, index: _Index, positions: np.ndarray, dim: int) -> np.ndarray:
        out = np.empty((len(positions), dim), dtype=np.float32)
        codes = index.part_code[positions]
        rows = index.row[positions]
        for code in np.unique(codes):
            take = codes == code
            emb, _ = self._embeddings_of_part(folder, index.parts[code])
            out[take] = emb[rows[take]]
        return out

    # ------------------------------------------------------------------ maintenance

    def compact(
        self, dataset: str, fingerprint: str, modality: str, order: Sequence[str] | None = None
    ) -> Snapshot:
        """Rewrite the current snapshot as one part so that reads are zero-copy.

        ``order`` (e.g. the catalog's item ids by item index) sets the row order:
        its items come first in that order, the snapshot's other items follow in
        their previous storage order. Without ``order`` the storage order is kept.
        Older snapshots keep their parts until ``gc``.
        """
        folder = self.feature_set_path(dataset, fingerprint, modality)
        snap = self._current_in(folder)
        if snap is None:
            raise LookupError(f"nothing to compact: no snapshot of {dataset}/{fingerprint}/{modality} in {self.root}")
        index = self._index(folder, snap)
        n = len(index.item_id)
        # Storage order: by part write time (names sort by it), then row.
        part_rank = np.argsort(np.argsort(np.array(index.parts, dtype=object)))
        storage = np.lexsort((index.row, part_rank[index.part_code])) if n else np.zeros(0, np.int64)
        if order is None:
            positions = storage
        else:
            wanted = _string_array(order, "order")
            if _first_duplicate(wanted) is not None:
                raise ValueError("order repeats an item id")
            pos = pc.index_in(wanted, value_set=index.item_id)
            first = pc.drop_null(pos).to_numpy().astype(np.int64)
            rest = storage[~np.isin(storage, first)]
            positions = np.concatenate([first, rest])
        if n == 0:
            return snap
        if len(snap.parts) == 1 and (index.row[positions] == np.arange(n)).all():
            return snap  # already one part in this order
        emb = self._gather(folder, index, positions, snap.dim)
        table = pa.table(
            {
                "item_id": index.item_id.take(pa.array(positions)),
                "content_hash": index.content_hash.take(pa.array(positions)),
            }
        )
        name = self._write_part_table(folder, fingerprint, table, emb)
        new_index = pa.table(
            {
                "item_id": table["item_id"],
                "content_hash": table["content_hash"],
                "part": pa.array([name] * n, pa.string()),
                "row": pa.array(np.arange(n, dtype=np.int64)),
            }
        )
        return self._commit_index(folder, dataset, fingerprint, modality, new_index, snap.dim, missing=snap.missing)

    def gc(
        self, dataset: str, fingerprint: str, modality: str, keep_last: int = 5, *, tmp_older_than_s: float = 3600.0
    ) -> int:
        """Delete what no retained snapshot needs; return the number of files removed.

        Retained: the newest ``keep_last`` snapshots and the current one. Removed:
        other snapshot files, parts none of the retained snapshots reference (except
        pending parts written after the newest snapshot, i.e. an extraction in
        progress or interrupted), and ``.tmp-*`` files older than ``tmp_older_than_s``
        (left by killed writers; younger ones may belong to a live writer).
        """
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        folder = self.feature_set_path(dataset, fingerprint, modality)
        snaps = self.snapshots(dataset, fingerprint, modality)
        current = self._current_in(folder)
        retained = {s.id: s for s in snaps[-keep_last:]}
        if current is not None:
            retained[current.id] = current
        removed = 0
        for snap in snaps:
            if snap.id not in retained:
                path = self._snapshot_path(folder, snap.id)
                self.fs.remove(path)
                self._snapshots.pop(path, None)
                self._indexes.pop(path, None)
                removed += 1
        self._available_cache.pop(folder, None)
        referenced = {p for s in retained.values() for p in s.parts}
        newest_ns = max((_iso_to_ns(s.created) for s in snaps), default=-1)
        for name in self._parts(folder):
            if name in referenced or int(_PART_RE.match(name).group(1)) > newest_ns:
                continue
            path = self._part_path(folder, name)
            self.fs.remove(path)
            self._part_keys.pop(path, None)
            self._part_dims.pop(path, None)
            removed += 1
        for sub in (folder, posixpath.join(folder, PARTS_DIR), posixpath.join(folder, SNAPSHOTS_DIR),
                    self.fs.join(ENCODERS_DIR)):
            removed += self.fs.remove_temporaries(sub, tmp_older_than_s)
        return removed
