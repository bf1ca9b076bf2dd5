"""Vector parts: the immutable Parquet files of a feature set, and the newest row of each key over them.

A part is ``parts/part-<time_ns>-<uuid8>.parquet`` holding ``item_id: string,
content_hash: string, embedding: fixed_size_list<float32>[D]`` in one row group (zstd
by default; no dictionary or statistics on the vectors, which would only cost time).
One row group reads back as one Arrow chunk, which is what lets reads be zero-copy.
Names start with the write time, so sorted names list parts oldest first. A part's
key-value metadata names the inference backend that computed its vectors
(``befa.backend``: ``torch 2.14.1``, ``onnxruntime 1.31.0``, ``imported``); a part written
before backends were recorded has none and counts as :data:`UNRECORDED_BACKEND`.

:class:`PartFiles` caches each part's keys and dimension by path (parts never change)
and, per feature set, an :class:`Available`: the newest row of every
(item_id, content_hash) over all parts on disk, committed or pending.
"""

from __future__ import annotations

import posixpath
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.columns import joined_keys
from storage.filesystem import StoreFS

PARTS_DIR = "parts"
BACKEND_METADATA_KEY = b"befa.backend"
UNRECORDED_BACKEND = "unrecorded"
_PART_RE = re.compile(r"^part-(\d{20})-[0-9a-f]{8}\.parquet$")

# Vectors: no dictionary (every value distinct) and no min/max statistics (useless
# for vectors, and they cost write time); the key columns keep statistics so that
# engines can prune on item_id.
PART_WRITE_OPTIONS: dict[str, Any] = dict(
    compression="zstd",
    use_dictionary=False,
    write_statistics=["item_id", "content_hash"],
)


def part_time_ns(name: str) -> int:
    """The write time (ns since the epoch) a part's name starts with."""
    return int(_PART_RE.match(name).group(1))


@dataclass(frozen=True)
class Available:
    """Newest row of every key over ``parts``: key, item_id, content_hash, part_pos, row."""

    parts: tuple[str, ...]
    rows: pa.Table

    def positions(self, keys: pa.Array) -> np.ndarray:
        """Row of each joined key in ``rows`` (int64; -1 where the store has none)."""
        found = pc.index_in(keys, value_set=self.rows["key"])
        return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


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


def check_part_rows(folder: str, keys: pa.Table, x: np.ndarray) -> None:
    """A part must have rows, and every vector must be finite."""
    if keys.num_rows == 0:
        raise ValueError(f"{folder}: refusing to write an empty part")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"embeddings: row {row} (item {keys['item_id'][row].as_py()!r}) has NaN or infinite values")


class PartFiles:
    """The parts of every feature set under one store root, with their caches."""

    def __init__(self, fs: StoreFS, compression: str = "zstd"):
        self.fs = fs
        self.compression = compression
        self._keys: dict[str, pa.Table] = {}
        self._dims: dict[str, int] = {}
        self._backends: dict[str, str] = {}
        self._available: dict[str, Available] = {}

    def names(self, folder: str) -> list[str]:
        """Part file names, oldest first (names start with the write time)."""
        return [n for n in self.fs.listdir(posixpath.join(folder, PARTS_DIR)) if _PART_RE.match(n)]

    def path(self, folder: str, name: str) -> str:
        return posixpath.join(folder, PARTS_DIR, name)

    def keys(self, folder: str, name: str) -> pa.Table:
        path = self.path(folder, name)
        keys = self._keys.get(path)
        if keys is None:  # parts are immutable, so caching by path is safe
            keys = self.fs.read_parquet(path, columns=["item_id", "content_hash"])
            self._keys[path] = keys
        return keys

    def dim(self, folder: str, name: str) -> int:
        path = self.path(folder, name)
        dim = self._dims.get(path)
        if dim is None:
            field = self.fs.parquet_schema(path).field("embedding")
            dim = self._dims[path] = field.type.list_size
        return dim

    def backend(self, folder: str, name: str) -> str:
        """The inference backend recorded in the part (:data:`UNRECORDED_BACKEND` when none is)."""
        path = self.path(folder, name)
        backend = self._backends.get(path)
        if backend is None:
            metadata = self.fs.parquet_schema(path).metadata or {}
            raw = metadata.get(BACKEND_METADATA_KEY)
            backend = self._backends[path] = raw.decode("utf-8") if raw else UNRECORDED_BACKEND
        return backend

    def backend_rows(self, folder: str, part_column: pa.Array | pa.ChunkedArray) -> dict[str, int]:
        """Rows per inference backend of an index's ``part`` column (a snapshot's record)."""
        out: dict[str, int] = {}
        if len(part_column) == 0:
            return out
        for entry in pc.value_counts(part_column).to_pylist():
            label = self.backend(folder, entry["values"])
            out[label] = out.get(label, 0) + int(entry["counts"])
        return dict(sorted(out.items()))

    def embeddings(self, folder: str, name: str) -> tuple[np.ndarray, bool]:
        """The part's vectors as a read-only (n, D) float32 array, and whether it views the Arrow buffer."""
        column = self.fs.read_parquet(self.path(folder, name), columns=["embedding"]).column("embedding")
        dim = column.type.list_size
        if column.num_chunks == 1:
            flat = column.chunk(0).flatten().to_numpy(zero_copy_only=True)
            return flat.reshape(-1, dim), True
        flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=True)
        return flat.reshape(-1, dim), False

    def write(self, folder: str, keys: pa.Table, x: np.ndarray, backend: str | None = None) -> str:
        """Write ``keys`` with vectors ``x`` as a new part (atomically); return its name.
        ``backend``: the inference backend that computed ``x``, kept in the part's metadata."""
        dim = x.shape[1]
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x).reshape(-1)), dim)
        table = keys.select(["item_id", "content_hash"]).append_column("embedding", vectors)
        if backend:
            table = table.replace_schema_metadata({BACKEND_METADATA_KEY: backend.encode("utf-8")})
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.path(folder, name)
        # One row group: a part then reads back as one Arrow chunk, the zero-copy case.
        options = {**PART_WRITE_OPTIONS, "compression": self.compression}
        self.fs.write_parquet(path, table, row_group_size=table.num_rows, **options)
        self._keys[path] = table.select(["item_id", "content_hash"])
        self._dims[path] = dim
        self._backends[path] = backend or UNRECORDED_BACKEND
        return name

    def remove(self, folder: str, name: str) -> None:
        path = self.path(folder, name)
        self.fs.remove(path)
        self._keys.pop(path, None)
        self._dims.pop(path, None)
        self._backends.pop(path, None)

    # ------------------------------------------------------------------ keys over all parts

    def _rows(self, folder: str, parts: Sequence[str], pos: int) -> pa.Table:
        keys = self.keys(folder, parts[pos])
        n = keys.num_rows
        return pa.table(
            {
                "key": joined_keys(keys["item_id"].combine_chunks(), keys["content_hash"].combine_chunks()),
                "item_id": keys["item_id"],
                "content_hash": keys["content_hash"],
                "part_pos": pa.array(np.full(n, pos, dtype=np.int32)),
                "row": pa.array(np.arange(n, dtype=np.int64)),
            }
        )

    def _newest_rows(self, folder: str, parts: tuple[str, ...]) -> pa.Table:
        """The newest row of every key over ``parts``, read from scratch."""
        tables = [self._rows(folder, parts, pos) for pos in range(len(parts))]
        rows = pa.concat_tables(tables) if tables else _empty_rows()
        if len(tables) > 1:
            ords = pc.add(pc.shift_left(pc.cast(rows["part_pos"], pa.int64()), 32), rows["row"])
            newest = (
                pa.table({"key": rows["key"], "ord": ords})
                .group_by("key", use_threads=False)
                .aggregate([("ord", "max")])
            )
            rows = rows.filter(pc.is_in(ords, value_set=newest["ord_max"]))
        return rows

    def available(self, folder: str) -> Available:
        """The newest row of every key over all parts on disk (cached, updated incrementally).

        Parts are immutable and their names sort by write time, so when parts were
        only added since the last call, the cached table is updated with the new
        parts alone; otherwise (gc, a writer with an older clock) it is rebuilt.
        """
        parts = tuple(self.names(folder))
        cached = self._available.get(folder)
        if cached is not None and cached.parts == parts:
            return cached
        n_old = len(cached.parts) if cached is not None else 0
        if cached is not None and parts[:n_old] == cached.parts:
            rows = cached.rows
            for pos in range(n_old, len(parts)):
                new = self._rows(folder, parts, pos)
                # Within a part item_ids are unique, so a newer part replaces older rows key by key.
                rows = pa.concat_tables([rows.filter(pc.invert(pc.is_in(rows["key"], value_set=new["key"]))), new])
        else:
            rows = self._newest_rows(folder, parts)
        available = Available(parts=parts, rows=rows.combine_chunks())
        self._available[folder] = available
        return available

    def with_new_part(self, folder: str, available: Available, parts: tuple[str, ...]) -> Available:
        """``available`` extended by the last of ``parts``, a part just written with keys it lacks.

        Its rows go to the end in written order; the result is cached.
        """
        new = self._rows(folder, parts, len(parts) - 1)
        extended = Available(parts=parts, rows=pa.concat_tables([available.rows, new]).combine_chunks())
        self._available[folder] = extended
        return extended

    def forget_available(self, folder: str) -> None:
        self._available.pop(folder, None)
