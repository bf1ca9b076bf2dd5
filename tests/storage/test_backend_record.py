"""The store records which inference backend computed each part, and counts a snapshot's rows per backend."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey
from storage.parts import BACKEND_METADATA_KEY, UNRECORDED_BACKEND

KEY = FeatureSetKey("shop", "enc-0123456789ab", "image")


def _rows(n: int, start: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    ids = [f"item{i}" for i in range(start, start + n)]
    return ids, [f"h{i}" for i in range(start, start + n)], np.random.default_rng(start).normal(size=(n, 4))


def test_snapshots_count_rows_per_backend_and_compaction_keeps_the_record(tmp_path):
    store = FeatureStore(tmp_path)
    torch_part = store.write_part(KEY, *_rows(3), backend="torch 2.14.1")
    store.write_part(KEY, *_rows(2, start=3), backend="onnxruntime 1.31.0")
    store.write_part(KEY, *_rows(1, start=5))  # a writer that does not say: unrecorded
    keep = [(f"item{i}", f"h{i}") for i in range(6)]
    snap = store.commit(KEY, keep)
    assert snap.backends == {"onnxruntime 1.31.0": 2, "torch 2.14.1": 3, UNRECORDED_BACKEND: 1}
    assert store.current_snapshot(KEY).backends == snap.backends  # read back from the snapshot file
    path = next(tmp_path.rglob(torch_part))
    assert pq.read_schema(path).metadata[BACKEND_METADATA_KEY] == b"torch 2.14.1"
    # dropping items drops their rows from the count
    assert store.commit(KEY, keep[:4]).backends == {"onnxruntime 1.31.0": 1, "torch 2.14.1": 3}
    compacted = store.compact(KEY)
    assert compacted.backends == {"onnxruntime 1.31.0": 1, "torch 2.14.1": 3} and len(compacted.parts) == 1
    label = FeatureStore(tmp_path)._parts.backend(store.feature_set_path(KEY), compacted.parts[0])
    assert label == "onnxruntime 1.31.0 + torch 2.14.1"


def test_upsert_records_its_backend(tmp_path):
    store = FeatureStore(tmp_path)
    result = store.upsert(KEY, *_rows(4), backend="imported")
    assert result.snapshot.backends == {"imported": 4}
