"""Damaged feature-store files and full disks (``storage.check``, ``storage.errors``).

A small store of three parts (items a0-a9, b0-b9, c0-c9) committed as one snapshot; a test
damages one file the way a crash or a bad disk does (a part cut short, a snapshot index
overwritten with garbage, a part replaced by a shorter one) and checks that every read names
the file, that the check finds exactly it, that repair moves it aside and leaves a readable
current snapshot, and that the store then lacks exactly the damaged part's items.
"""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from storage.check import QUARANTINE_DIR, check_store
from storage.errors import DamagedFile, DiskFull
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey

KEY = FeatureSetKey("shop", "test-enc-0123456789ab", "image")
DIM = 8


def _rows(prefix: str, n: int = 10) -> tuple[list[str], list[str], np.ndarray]:
    ids = [f"{prefix}{k}" for k in range(n)]
    hashes = [hashlib.sha256(i.encode()).hexdigest() for i in ids]
    x = np.random.default_rng(len(prefix) + ord(prefix[0])).standard_normal((n, DIM)).astype(np.float32)
    return ids, hashes, x


@pytest.fixture()
def built(tmp_path: Path) -> tuple[FeatureStore, list[str], dict[str, tuple]]:
    """(store, part names in write order, rows by prefix): three parts, one snapshot of all 30 items."""
    store = FeatureStore(tmp_path / "features")
    store.register_encoder(KEY.fingerprint, {"spec": "test", "random_init": True, "dim": DIM})
    rows = {p: _rows(p) for p in "abc"}
    names = [store.write_part(KEY, *rows[p]) for p in "abc"]
    keep = [(i, h) for p in "abc" for i, h in zip(rows[p][0], rows[p][1])]
    store.commit(KEY, keep)
    return store, names, rows


def _part(store: FeatureStore, name: str) -> Path:
    return Path(store.feature_set_path(KEY)) / "parts" / name


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a write cut short: no Parquet footer


def test_a_truncated_part_is_named_found_and_moved_aside(built) -> None:
    store, names, rows = built
    before = store.current_snapshot(KEY)
    damaged = _part(store, names[1])
    _truncate(damaged)

    fresh = FeatureStore(store.root)  # a new process: nothing cached
    with pytest.raises(DamagedFile) as err:
        fresh.existing_keys(KEY)  # what extraction asks first
    assert str(damaged) in str(err.value) and "Parquet magic bytes not found" in str(err.value)
    assert "befa store check --repair" in str(err.value)
    with pytest.raises(DamagedFile, match=names[1]):
        fresh.read(KEY, rows["b"][0])

    report = check_store(store.root)  # a check alone changes nothing
    assert [(d.path, d.kind) for d in report.damage] == [(str(damaged), "part")]
    (fset,) = report.feature_sets
    assert (fset.parts, fset.snapshots, fset.rows, fset.lost_items) == (3, 1, 20, 10)
    assert damaged.exists() and not report.repaired

    repaired = check_store(store.root, repair=True)
    (fset,) = repaired.feature_sets
    moved = Path(fset.moved[str(damaged)])
    assert not damaged.exists() and moved.parent.name == QUARANTINE_DIR and moved.read_bytes()
    assert fset.lost_items == 10 and fset.current != before.id

    after = FeatureStore(store.root)
    snap = after.current_snapshot(KEY)
    assert (snap.num_rows, snap.missing, snap.parent) == (20, 10, before.id)
    x, mask = after.read(KEY, rows["a"][0] + rows["b"][0] + rows["c"][0])
    assert mask.tolist() == [True] * 10 + [False] * 10 + [True] * 10
    assert np.array_equal(x[:10], rows["a"][2]) and np.array_equal(x[20:], rows["c"][2])
    # what an extraction then encodes: exactly the damaged part's items
    have = after.existing_keys(KEY)
    assert {i for p in "abc" for i in rows[p][0] if (i, hashlib.sha256(i.encode()).hexdigest()) not in have} == set(
        rows["b"][0]
    )
    assert check_store(store.root).damage == []


def test_a_damaged_current_snapshot_is_moved_aside_with_current(built) -> None:
    store, names, rows = built
    snap = store.current_snapshot(KEY)
    index = Path(store.feature_set_path(KEY)) / "snapshots" / f"{snap.id}.parquet"
    index.write_bytes(b"PAR1 not really a snapshot")
    with pytest.raises(DamagedFile, match=snap.id):
        FeatureStore(store.root).read(KEY, rows["a"][0])

    report = check_store(store.root, repair=True)
    assert sorted(d.kind for d in report.damage) == ["CURRENT", "snapshot"]
    after = FeatureStore(store.root)
    assert after.current_snapshot(KEY) is None  # the next commit starts afresh, from intact parts
    assert len(after.existing_keys(KEY)) == 30  # every vector is still there: nothing to re-encode
    keep = [(i, h) for p in "abc" for i, h in zip(rows[p][0], rows[p][1])]
    assert after.commit(KEY, keep).num_rows == 30


def test_a_part_shorter_than_its_snapshot_says_is_damaged(built) -> None:
    """A readable part that no longer holds the rows its snapshot records (replaced by another file)."""
    store, names, rows = built
    path = _part(store, names[2])
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 4), path)
    report = check_store(store.root)
    (damage,) = report.damage
    assert damage.path == str(path) and "holds 4 rows" in damage.problem and "points at row 9" in damage.problem


def test_a_corrupt_encoder_record_is_named_and_moved_aside(built) -> None:
    store, _, _ = built
    record = Path(store.root) / "_encoders" / f"{KEY.fingerprint}.json"
    record.write_text('{"spec": "te')
    with pytest.raises(DamagedFile, match="corrupt encoder record"):
        FeatureStore(store.root).encoder_info(KEY.fingerprint)
    report = check_store(store.root, repair=True)
    assert [d.path for d in report.records] == [str(record)]
    assert not record.exists() and Path(report.records_moved[str(record)]).exists()


def test_a_full_disk_commits_nothing_and_names_the_path(built, monkeypatch) -> None:
    store, _, rows = built
    before = store.current_snapshot(KEY)
    real = pq.write_table

    def full(table, where, *args, **kwargs):
        if "part-" in str(where):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", full)
    ids, hashes, x = _rows("d")
    with pytest.raises(DiskFull) as err:
        store.upsert(KEY, rows["a"][0] + ids, rows["a"][1] + hashes, np.concatenate([rows["a"][2], x]))
    message = str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert f"no space left on the device holding {Path(store.feature_set_path(KEY)) / 'parts'}" in message
    assert "nothing was committed" in message and f"keeps snapshot {before.id} as current" in message
    monkeypatch.undo()

    after = FeatureStore(store.root)
    assert after.current_snapshot(KEY) == before
    assert after.read(KEY, rows["a"][0])[1].all()
    parts = Path(store.feature_set_path(KEY)) / "parts"
    assert not [p for p in parts.iterdir() if p.name.startswith(".tmp-")]  # the partial write was removed
    assert check_store(store.root).damage == []
