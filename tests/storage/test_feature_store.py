"""Tests of the Parquet feature store (storage/feature_store.py)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import storage.atomic
from storage.feature_store import FeatureStore, Snapshot, duckdb_snapshot_query
from storage.filesystem import StoreFS
from storage.keys import FeatureSetKey

REPO = Path(__file__).resolve().parents[2]
KEY = FeatureSetKey("ml-100k", "clip-vit-b32-rand0", "image")


def _data(n: int, dim: int = 8, seed: int = 0, prefix: str = "i") -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = [f"{prefix}{k}" for k in range(n)]
    hashes = [hashlib.sha256(f"{i}-v0".encode()).hexdigest() for i in ids]
    return ids, hashes, rng.standard_normal((n, dim)).astype(np.float32)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture()
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "features")


def _set_dir(store: FeatureStore) -> Path:
    return Path(store.feature_set_path(KEY))


# ---------------------------------------------------------------------------- upserts


def test_upsert_writes_only_new_or_changed_items(store: FeatureStore) -> None:
    ids, hashes, x = _data(50)
    first = store.upsert(KEY, ids, hashes, x)
    assert (first.written, first.skipped) == (50, 0)
    assert first.snapshot.num_rows == 50 and first.snapshot.dim == 8 and first.snapshot.parent is None

    again = store.upsert(KEY, ids, hashes, torch.from_numpy(x))  # a CPU tensor works through np.asarray
    assert (again.written, again.skipped) == (0, 50)
    assert again.snapshot == first.snapshot  # identical state: no new snapshot
    assert len(store.snapshots(KEY)) == 1
    assert len(_files(_set_dir(store) / "parts")) == 1

    hashes2 = list(hashes)
    hashes2[7] = hashlib.sha256(b"poster replaced").hexdigest()
    x2 = x.copy()
    x2[7] = 42.0
    changed = store.upsert(KEY, ids, hashes2, x2)
    assert (changed.written, changed.skipped) == (1, 49)
    assert changed.snapshot.id != first.snapshot.id and changed.snapshot.parent == first.snapshot.id
    feats, mask = store.read(KEY, ids)
    assert mask.all()
    assert np.array_equal(feats, x2)
    # The old snapshot still gives the old vector of item 7.
    old, _ = store.read(KEY, ids, snapshot=first.snapshot.id)
    assert np.array_equal(old, x)


def test_deleted_items_drop_out_but_older_snapshot_keeps_them(store: FeatureStore) -> None:
    ids, hashes, x = _data(20)
    v1 = store.upsert(KEY, ids, hashes, x).snapshot
    v2 = store.upsert(KEY, ids[5:], hashes[5:], x[5:]).snapshot  # items 0-4 deleted
    assert v2.num_rows == 15 and v2.id != v1.id
    assert store.current_snapshot(KEY) == v2

    feats, mask = store.read(KEY, ids)
    assert mask.tolist() == [False] * 5 + [True] * 15
    assert np.array_equal(feats[:5], np.zeros((5, 8)))
    assert np.array_equal(feats[5:], x[5:])

    old, old_mask = store.read(KEY, ids, snapshot=v1.id)
    assert old_mask.all() and np.array_equal(old, x)
    assert [s.id for s in store.snapshots(KEY)] == [v1.id, v2.id]

    # Re-adding a deleted item reuses its stored row: nothing is written.
    back = store.upsert(KEY, ids, hashes, x)
    assert back.written == 0 and back.snapshot.id == v1.id


def test_snapshot_id_is_deterministic_and_commit_reports_missing(store: FeatureStore) -> None:
    ids, hashes, x = _data(10)
    store.write_part(KEY, ids, hashes, x)
    a = store.commit(KEY, zip(ids, hashes))
    b = store.commit(KEY, zip(ids[:6], hashes[:6]))
    a_again = store.commit(KEY, [(i, h) for i, h in zip(ids, hashes)][::-1])
    assert a_again.id == a.id != b.id
    assert len(a.id) == 16 and int(a.id, 16) >= 0
    assert store.current_snapshot(KEY).id == a.id
    with_missing = store.commit(KEY, list(zip(ids[:3], hashes[:3])) + [("nope", "0" * 64), ("i4", "stale")])
    assert with_missing.num_rows == 3 and with_missing.missing == 2
    with pytest.raises(ValueError, match="more than one content_hash"):
        store.commit(KEY, [("i1", hashes[1]), ("i1", "other")])


def test_pending_parts_are_visible_to_existing_keys_and_adopted_by_commit(store: FeatureStore) -> None:
    ids, hashes, x = _data(30)
    store.upsert(KEY, ids[:10], hashes[:10], x[:10])
    store.write_part(KEY, ids[10:20], hashes[10:20], x[10:20])  # extraction stopped here
    assert store.existing_keys(KEY) == set(zip(ids[:20], hashes[:20]))
    _, mask = store.read(KEY, ids)
    assert mask.sum() == 10  # pending rows are not readable before a commit

    # The next run: only what is missing gets written, then everything is committed.
    todo = [k for k, key in enumerate(zip(ids, hashes)) if key not in store.existing_keys(KEY)]
    assert todo == list(range(20, 30))
    result = store.upsert(KEY, ids, hashes, x)
    assert (result.written, result.skipped) == (10, 20)
    feats, mask = store.read(KEY, ids)
    assert mask.all() and np.array_equal(feats, x)


# ---------------------------------------------------------------------------- reads


def _spy_part_reads(store: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> list:
    """Record the Arrow tables the store reads, to compare buffer addresses."""
    seen = []
    real = store.fs.read_parquet

    def spy(path, columns=None):
        table = real(path, columns=columns)
        if columns == ["embedding"]:
            seen.append(table)
        return table

    monkeypatch.setattr(store.fs, "read_parquet", spy)
    return seen


def _arrow_ranges(tables: list) -> list[tuple[int, int]]:
    ranges = []
    for table in tables:
        for chunk in table.column("embedding").chunks:
            buf = chunk.values.buffers()[1]
            ranges.append((buf.address, buf.address + buf.size))
    return ranges


def test_compacted_snapshot_reads_zero_copy(store: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ids, hashes, x = _data(40)
    store.upsert(KEY, ids[:25], hashes[:25], x[:25])
    store.upsert(KEY, ids, hashes, x)  # two parts now
    order = ids[::-1]  # the dataset's item index order
    snap = store.compact(KEY, order=order)
    assert len(snap.parts) == 1 and snap.num_rows == 40
    assert store.compact(KEY, order=order) == snap  # already compact: no rewrite

    seen = _spy_part_reads(store, monkeypatch)
    feats, mask = store.read(KEY, order, content_hashes=hashes[::-1])
    assert mask.all() and feats.dtype == np.float32 and feats.shape == (40, 8)
    assert np.array_equal(feats, x[::-1].copy())
    assert len(seen) == 1
    values = seen[0].column("embedding").chunk(0).values
    assert feats.ctypes.data == values.buffers()[1].address + values.offset * 4
    assert not feats.flags.writeable  # a view of the Arrow buffer: copy before editing
    # A contiguous sub-range of the part is a view too.
    sub, _ = store.read(KEY, order[10:30])
    lo, hi = _arrow_ranges(seen[1:])[0]
    assert lo <= sub.ctypes.data < hi and np.array_equal(sub, x[::-1][10:30].copy())


def test_unaligned_multipart_read_gathers_values_and_mask(store: FeatureStore, monkeypatch) -> None:
    ids, hashes, x = _data(30)
    store.write_part(KEY, ids[:10], hashes[:10], x[:10])
    store.write_part(KEY, ids[10:], hashes[10:], x[10:])
    snap = store.commit(KEY, zip(ids, hashes))
    assert len(snap.parts) == 2

    rng = np.random.default_rng(1)
    perm = rng.permutation(30)
    request = [ids[k] for k in perm] + ["unknown-1", "unknown-2"]
    seen = _spy_part_reads(store, monkeypatch)
    feats, mask = store.read(KEY, request)
    expected = np.zeros((32, 8), np.float32)
    expected[:30] = x[perm]
    assert np.array_equal(feats, expected)
    assert mask.tolist() == [True] * 30 + [False] * 2
    assert not any(lo <= feats.ctypes.data < hi for lo, hi in _arrow_ranges(seen))
    feats[0] += 1.0  # the gathered copy is the caller's to edit

    # One part, all rows present, shuffled order: the single-gather path.
    assert len(store.compact(KEY).parts) == 1
    shuffled = [ids[k] for k in perm]
    feats, mask = store.read(KEY, shuffled)
    assert mask.all() and np.array_equal(feats, x[perm])
    assert not any(lo <= feats.ctypes.data < hi for lo, hi in _arrow_ranges(seen))


def test_content_hash_mismatch_is_masked(store: FeatureStore) -> None:
    ids, hashes, x = _data(12)
    store.upsert(KEY, ids, hashes, x)
    asked = list(hashes)
    asked[2] = "f" * 64  # the catalog says item 2 changed; the store has the old feature
    asked[9] = "0" * 64
    feats, mask = store.read(KEY, ids, content_hashes=asked)
    assert mask.tolist() == [k not in (2, 9) for k in range(12)]
    assert not feats[2].any() and not feats[9].any()
    assert np.array_equal(feats[mask], x[mask])


def test_read_before_any_commit(store: FeatureStore) -> None:
    with pytest.raises(LookupError, match="no snapshot"):
        store.read(KEY, ["a"])
    store.register_encoder(
        KEY.fingerprint, {"spec": "ViT-B-32", "weights": "random-init seed=0", "random_init": True, "dim": 8}
    )
    feats, mask = store.read(KEY, ["a", "b"])
    assert feats.shape == (2, 8) and not mask.any()
    with pytest.raises(LookupError, match="not found"):
        store.read(KEY, ["a"], snapshot="0123456789abcdef")


def test_real_movielens_item_ids(store: FeatureStore, datasets_root: Path) -> None:
    lines = (
        (datasets_root / "movielens-100k-posters" / "ml-100k" / "u.item").read_bytes().decode("latin-1").splitlines()
    )
    rows = [line.split("|") for line in lines if line.strip()]
    ids = [r[0] for r in rows]
    hashes = [hashlib.sha256(r[1].encode()).hexdigest() for r in rows]  # title as content
    assert len(ids) == 1682
    x = np.random.default_rng(3).standard_normal((len(ids), 16)).astype(np.float32)
    key = FeatureSetKey("movielens-100k-posters", "minilm-l6", "text")
    store.upsert(key, ids, hashes, x)
    snap = store.compact(key, order=ids)
    feats, mask = store.read(key, ids, content_hashes=hashes, snapshot=snap.id)
    assert mask.all() and np.array_equal(feats, x)


# ---------------------------------------------------------------------------- crashes

_WRITER = textwrap.dedent(
    """
    import io, sys, time
    import numpy as np
    import pyarrow.parquet as pq
    from storage.feature_store import FeatureStore
    from storage.keys import FeatureSetKey

    root, mode = sys.argv[1], sys.argv[2]
    store = FeatureStore(root)
    key = FeatureSetKey("ml-100k", "clip-vit-b32-rand0", "image")
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(100)]
    store.write_part(key, ids, [f"h{k}" for k in range(100)], rng.standard_normal((100, 64)).astype(np.float32))
    if mode == "midway":
        real = pq.write_table
        def half_then_hang(table, where, **kw):
            buf = io.BytesIO()
            real(table, buf, **kw)
            data = buf.getvalue()
            with open(where, "wb") as fh:
                fh.write(data[: len(data) // 2])
            print("midway", flush=True)
            time.sleep(120)
        pq.write_table = half_then_hang
    else:
        print("big", flush=True)
    n = 2000 if mode == "midway" else 150_000
    big_ids = [f"b{k}" for k in range(n)]
    store.write_part(key, big_ids, [f"h{k}" for k in range(n)], rng.standard_normal((n, 64)).astype(np.float32))
    print("done", flush=True)
    """
)


def _start_writer(root: Path, mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), mode], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )


def test_writer_killed_midway_leaves_store_readable_and_resumable(tmp_path: Path) -> None:
    root = tmp_path / "features"
    store = FeatureStore(root)
    base_ids, base_hashes, base_x = _data(5, dim=64, prefix="c")
    committed = store.upsert(KEY, base_ids, base_hashes, base_x).snapshot

    proc = _start_writer(root, "midway")
    try:
        assert proc.stdout.readline().strip() == "midway"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    parts_dir = _set_dir(store) / "parts"
    names = _files(parts_dir)
    leftovers = [n for n in names if n.startswith(".tmp-")]
    assert len(leftovers) == 1  # the half-written file is there, under a temporary name
    assert (parts_dir / leftovers[0]).stat().st_size > 0
    with pytest.raises(Exception):
        pq.read_metadata(parts_dir / leftovers[0])  # it is truly truncated

    # The store is readable and unchanged.
    fresh = FeatureStore(root)
    assert fresh.current_snapshot(KEY) == committed
    feats, mask = fresh.read(KEY, base_ids)
    assert mask.all() and np.array_equal(feats, base_x)
    # The next run resumes: the fully written part counts, the killed one does not.
    keys = fresh.existing_keys(KEY)
    assert {(f"i{k}", f"h{k}") for k in range(100)} <= keys
    assert not any(i.startswith("b") for i, _ in keys)
    snap = fresh.commit(KEY, keys)
    assert snap.num_rows == 105
    # DuckDB over the parts glob the README uses skips the leftover temporary.
    glob = f"{parts_dir}/part-*.parquet"
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0][0] == 105
    # gc removes the leftover (it would spare one younger than tmp_older_than_s).
    assert fresh.gc(KEY, tmp_older_than_s=3600) == 0
    assert fresh.gc(KEY, tmp_older_than_s=0) == 1
    assert not any(n.startswith(".tmp-") for n in _files(parts_dir))
    # Every file left in parts/ is now a complete Parquet file.
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{parts_dir}/*')").fetchall()[0][0] == 105


def test_writer_sigkilled_during_real_write_leaves_only_complete_parts(tmp_path: Path) -> None:
    root = tmp_path / "features"
    proc = _start_writer(root, "big")
    parts_dir = root.joinpath(*KEY.segments, "parts")
    try:
        assert proc.stdout.readline().strip() == "big"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any(n.startswith(".tmp-") for n in _files(parts_dir)):
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Whenever the kill landed, every visible part is complete and readable.
    store = FeatureStore(root)
    for name in _files(parts_dir):
        if name.startswith("part-"):
            assert pq.read_metadata(parts_dir / name).num_rows in (100, 150_000)
    keys = store.existing_keys(KEY)
    assert {(f"i{k}", f"h{k}") for k in range(100)} <= keys
    assert len(keys) in (100, 150_100)
    snap = store.commit(KEY, keys)
    feats, mask = store.read(KEY, [f"i{k}" for k in range(100)])
    assert mask.all() and feats.shape == (100, 64) and snap.num_rows == len(keys)
    store.gc(KEY, tmp_older_than_s=0)
    assert not any(n.startswith(".tmp-") for n in _files(parts_dir))


def test_failed_rename_keeps_previous_state(store: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ids, hashes, x = _data(10)
    v1 = store.upsert(KEY, ids, hashes, x).snapshot
    parts_before = _files(_set_dir(store) / "parts")

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(storage.atomic.os, "replace", crash)
    x2 = x + 1
    hashes2 = [h + "-v2" for h in hashes]
    with pytest.raises(OSError, match="simulated crash"):
        store.upsert(KEY, ids, hashes2, x2)
    monkeypatch.undo()

    assert _files(_set_dir(store) / "parts") == parts_before  # no partial part, no temporary
    assert store.current_snapshot(KEY) == v1
    feats, mask = store.read(KEY, ids)
    assert mask.all() and np.array_equal(feats, x)

    # The part lands but the CURRENT pointer's rename fails: the old snapshot stays current.
    real_replace = os.replace

    def crash_on_current(src, dst):
        if os.path.basename(dst) == "CURRENT":
            raise OSError("simulated crash on CURRENT")
        real_replace(src, dst)

    monkeypatch.setattr(storage.atomic.os, "replace", crash_on_current)
    with pytest.raises(OSError, match="CURRENT"):
        store.upsert(KEY, ids, hashes2, x2)
    monkeypatch.undo()
    assert FeatureStore(store.root).current_snapshot(KEY) == v1
    again = store.upsert(KEY, ids, hashes2, x2)  # the next run resumes: nothing to re-encode
    assert again.written == 0 and again.snapshot.id != v1.id
    feats, _ = store.read(KEY, ids)
    assert np.array_equal(feats, x2)


# ---------------------------------------------------------------------------- roots and files


@pytest.mark.parametrize("uri", ["memory://befa-test-features", "file://{tmp}/features"])
def test_fsspec_roots(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FeatureStore(uri.format(tmp=tmp_path))
    assert store.fs.is_local == uri.startswith("file://")
    ids, hashes, x = _data(15)
    store.register_encoder(
        KEY.fingerprint, {"spec": "ViT-B-32", "weights": "random-init seed=0", "random_init": True, "dim": 8}
    )
    v1 = store.upsert(KEY, ids[:10], hashes[:10], x[:10]).snapshot
    v2 = store.upsert(KEY, ids, hashes, x).snapshot
    feats, mask = store.read(KEY, ids)
    assert mask.all() and np.array_equal(feats, x)
    _, old_mask = store.read(KEY, ids, snapshot=v1.id)
    assert old_mask.sum() == 10
    assert [s.id for s in store.snapshots(KEY)] == [v1.id, v2.id]
    assert store.encoder_info(KEY.fingerprint)["random_init"] is True

    if not store.fs.is_local:
        # Same crash check through the fsspec rename path.
        def crash(src, dst):
            raise OSError("simulated crash before rename")

        monkeypatch.setattr(StoreFS, "_rename", lambda self, src, dst: crash(src, dst))
        with pytest.raises(OSError):
            store.upsert(KEY, ids, [h + "x" for h in hashes], x)
        monkeypatch.undo()
        folder = store.feature_set_path(KEY)
        assert not any(n.startswith(".tmp-") for n in store.fs.listdir(folder + "/parts"))
        assert store.current_snapshot(KEY) == v2
        store.fs.fs.rm("/befa-test-features", recursive=True)


def test_parts_are_plain_parquet_and_duckdb_query_matches_read(store: FeatureStore) -> None:
    ids, hashes, x = _data(30)
    store.upsert(KEY, ids[:20], hashes[:20], x[:20])
    hashes2 = list(hashes)
    hashes2[3] = "changed"
    x2 = x.copy()
    x2[3] = -1.0
    snap = store.upsert(KEY, ids[2:], hashes2[2:], x2[2:]).snapshot  # 2 deleted, 1 changed, 10 added

    part = pq.read_table(_set_dir(store) / "parts" / snap.parts[0])
    assert part.column_names == ["item_id", "content_hash", "embedding"]
    assert str(part.schema.field("embedding").type) == "fixed_size_list<element: float>[8]"

    query = duckdb_snapshot_query(store.root, KEY, snap.id)
    assert "\n" not in query
    rows = duckdb.sql(query + " ORDER BY s.item_id").fetchall()
    assert len(rows) == snap.num_rows == 28
    got_ids = [r[0] for r in rows]
    assert "i0" not in got_ids and "i1" not in got_ids
    feats, mask = store.read(KEY, got_ids, content_hashes=[r[1] for r in rows])
    assert mask.all()
    assert np.array_equal(np.array([r[2] for r in rows], dtype=np.float32), feats)
    assert dict((r[0], r[1]) for r in rows)["i3"] == "changed"
    table = store.read_table(KEY)
    assert table.column("item_id").to_pylist() == sorted(got_ids)


# ---------------------------------------------------------------------------- gc and validation


def test_gc_keeps_retained_snapshots_and_pending_parts(store: FeatureStore) -> None:
    ids, hashes, x = _data(10)
    snaps = []
    for v in range(4):
        hv = [f"{h}-{v}" for h in hashes]
        snaps.append(store.upsert(KEY, ids, hv, x + v).snapshot)  # each version rewrites all items
    pending = store.write_part(KEY, ["late"], ["h"], x[:1])
    parts_dir = _set_dir(store) / "parts"
    assert len(_files(parts_dir)) == 5
    removed = store.gc(KEY, keep_last=2)
    assert removed == 4  # 2 snapshots + their 2 parts
    assert [s.id for s in store.snapshots(KEY)] == [snaps[2].id, snaps[3].id]
    assert sorted(_files(parts_dir)) == sorted(set(snaps[2].parts) | set(snaps[3].parts) | {pending})
    feats, _ = store.read(KEY, ids, snapshot=snaps[2].id)
    assert np.array_equal(feats, x + 2)
    with pytest.raises(LookupError, match="removed by gc"):
        store.read(KEY, ids, snapshot=snaps[0].id)
    assert ("late", "h") in store.existing_keys(KEY)
    # Once a newer snapshot exists that did not adopt it, the pending part is garbage.
    store.commit(KEY, zip(ids[:-1], [f"{h}-3" for h in hashes[:-1]]))
    assert store.gc(KEY, keep_last=2) == 3  # snapshot 2, its part, the pending part
    assert sorted(_files(parts_dir)) == sorted(snaps[3].parts)


def test_validation_errors(store: FeatureStore) -> None:
    ids, hashes, x = _data(4)
    for bad in ["../up", "a/b", "", ".hidden", "_encoders", "sp ace"]:
        with pytest.raises(ValueError, match="path-safe"):
            FeatureSetKey(bad, KEY.fingerprint, KEY.modality)
        with pytest.raises(ValueError, match="path-safe"):
            FeatureSetKey(KEY.dataset, bad, KEY.modality)
    with pytest.raises(TypeError, match="FeatureSetKey"):
        store.read(KEY.segments, ids)  # the three strings of before, as a tuple
    store.upsert(KEY, ids, hashes, x)
    with pytest.raises(ValueError, match="dimension 9.*dimension 8"):
        store.upsert(KEY, ["new"], ["h"], np.ones((1, 9), np.float32))
    bad_x = x.copy()
    bad_x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"row 2 \(item 'i2'\) has NaN"):
        store.write_part(KEY, ids, [h + "!" for h in hashes], bad_x)
    with pytest.raises(ValueError, match="row 2 repeats item 'i0'"):
        store.write_part(KEY, ["i0", "i1", "i0", "i3"], hashes, x)
    with pytest.raises(ValueError, match="same length"):
        store.write_part(KEY, ids, hashes[:3], x)
    with pytest.raises(ValueError, match="row 1 is missing"):
        store.write_part(KEY, ["a", None], ["h", "h"], x[:2])
    with pytest.raises(ValueError, match=r"row 1 \('b\\x1fc'\) is empty or holds control"):
        store.write_part(KEY, ["a", "b\x1fc"], ["h", "h"], x[:2])
    with pytest.raises(ValueError, match="content_hashes: row 0"):
        store.write_part(KEY, ["a", "b"], ["", "h"], x[:2])
    with pytest.raises(ValueError, match="2-D"):
        store.write_part(KEY, ids, hashes, x[:, 0])
    with pytest.raises(ValueError, match="random_init"):
        store.register_encoder("enc", {"spec": "ViT-B-32"})
    store.register_encoder("enc", {"spec": "ViT-B-32", "random_init": False, "weights": "sha256:ab12"})
    store.register_encoder("enc", {"spec": "ViT-B-32", "random_init": False, "preprocess": "224 bicubic"})
    assert store.encoder_info("enc")["preprocess"] == "224 bicubic"
    with pytest.raises(ValueError, match="weights"):
        store.register_encoder("enc", {"spec": "ViT-B-32", "random_init": False, "weights": "sha256:ffff"})
    assert store.encoder_info("unknown") is None
    assert isinstance(store.current_snapshot(KEY), Snapshot)
