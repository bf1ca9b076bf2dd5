"""Snapshots of the feature store: immutable, content-addressed versions of one feature set.

A feature set is one (dataset, encoder fingerprint, modality), a
:class:`~storage.keys.FeatureSetKey`. A snapshot is its
index, one row per item::

    item_id       string   the item
    content_hash  string   hash of the content the feature was computed from
    part          string   file name of the Parquet part that holds the vector
    row           int64    row of the vector inside that part

The index is sorted by ``item_id`` and stored as ``snapshots/<id>.parquet`` with
the :class:`Snapshot` record in the file's key-value metadata. The id is a short
sha256 over the feature set's key, the dimension and the sorted index, so the same
state always gets the same id, and a training run that records the id can read
back exactly the vectors it saw for as long as the snapshot is retained.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from storage.keys import FeatureSetKey

SNAPSHOT_METADATA_KEY = b"befa.snapshot"
ID_LENGTH = 16

INDEX_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("content_hash", pa.string()),
        ("part", pa.string()),
        ("row", pa.int64()),
    ]
)


class Snapshot(BaseModel):
    """One committed version of a feature set (the record a training run keeps)."""

    model_config = ConfigDict(frozen=True)

    id: str
    dataset: str
    fingerprint: str
    modality: str
    dim: int
    num_rows: int
    parts: tuple[str, ...]
    created: str
    parent: str | None = None
    missing: int = 0
    # rows per inference backend that computed them ("torch 2.14.1", "onnxruntime 1.31.0",
    # "imported"; "unrecorded" for parts written before backends were recorded). Not part of the
    # id: a backend is chosen only where it gives the encoder's features (see docs/encoders-and-store.md)
    backends: dict[str, int] = Field(default_factory=dict)

    @property
    def key(self) -> FeatureSetKey:
        """The feature set this snapshot is a version of."""
        return FeatureSetKey(self.dataset, self.fingerprint, self.modality)


class UpsertResult(BaseModel):
    """What :meth:`FeatureStore.upsert` did: rows written, rows reused, the resulting snapshot."""

    model_config = ConfigDict(frozen=True)

    written: int
    skipped: int
    snapshot: Snapshot


def snapshot_id(key: FeatureSetKey, dim: int, index: pa.Table) -> str:
    """Deterministic id of a state: hash of the key, ``dim`` and the index sorted by item_id."""
    index = index.sort_by("item_id") if index.num_rows else index
    h = hashlib.sha256()
    h.update(json.dumps([key.dataset, key.fingerprint, key.modality, int(dim)]).encode("utf-8"))
    if index.num_rows:
        # Each row becomes "item_id US hash US part US row US" (US = \x1f, which
        # validated ids, hashes and part names cannot hold), so the concatenation is
        # unambiguous; hashing the string buffer avoids a Python object per row.
        rows = pc.binary_join_element_wise(
            index["item_id"].combine_chunks(),
            index["content_hash"].combine_chunks(),
            index["part"].combine_chunks(),
            pc.cast(index["row"].combine_chunks(), pa.string()),
            "",
            "\x1f",
        ).cast(pa.large_string())
        offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[rows.offset : rows.offset + len(rows) + 1]
        h.update(memoryview(rows.buffers()[2])[offsets[0] : offsets[-1]])
    return h.hexdigest()[:ID_LENGTH]


def snapshot_metadata(snapshot: Snapshot) -> dict[bytes, bytes]:
    return {SNAPSHOT_METADATA_KEY: snapshot.model_dump_json().encode("utf-8")}


def snapshot_from_metadata(metadata: dict[bytes, bytes] | None, where: str) -> Snapshot:
    if not metadata or SNAPSHOT_METADATA_KEY not in metadata:
        raise ValueError(f"{where}: not a befa snapshot (no {SNAPSHOT_METADATA_KEY.decode()} metadata)")
    return Snapshot.model_validate_json(metadata[SNAPSHOT_METADATA_KEY])
