"""A ranked-list Parquet and its manifest as one pair (``pipeline.serving.ranked_files``).

A write is killed at each step of its order (while streaming the Parquet, between the
Parquet's rename and the manifest's, on a full disk, and after a file of the pair is replaced
by another write's): a reader gets the old pair, the new pair, or a clear error naming both files;
never a manifest read as if it described another Parquet.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil

import pandas as pd
import pytest

from pipeline.serving import ranked_files
from pipeline.serving.ranked_files import PairMismatch, read_manifest, read_ranked, write_pair
from pipeline.serving.ranked_lists import RECS_SCHEMA
from storage.atomic import TMP_PREFIX
from storage.errors import DiskFull


def _frames(user: str, n: int = 3):
    yield pd.DataFrame({"user_id": [user] * n, "rank": range(1, n + 1), "item_id": [f"i{k}" for k in range(n)],
                        "score": [1.0 / (k + 1) for k in range(n)]})  # fmt: skip


def _manifest(run: str):
    return lambda rows: {"kind": "recommendations", "run": run, "rows": rows}


def test_the_manifest_names_and_hashes_its_parquet(tmp_path):
    out = tmp_path / "recs.parquet"
    rows, path, info = write_pair(out, RECS_SCHEMA, _frames("u1"), _manifest("first"))
    assert rows == 3 and path == tmp_path / "recs.json" and json.loads(path.read_text()) == info
    assert info["parquet"] == "recs.parquet" and info["parquet_bytes"] == out.stat().st_size
    assert info["parquet_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    table, manifest = read_ranked(out)
    assert table.column("user_id").to_pylist() == ["u1"] * 3 and manifest["run"] == "first"


def test_a_kill_between_the_two_renames_is_refused_by_readers(tmp_path, monkeypatch):
    out = tmp_path / "recs.parquet"
    write_pair(out, RECS_SCHEMA, _frames("u1"), _manifest("first"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the manifest's rename")

    monkeypatch.setattr(ranked_files, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        write_pair(out, RECS_SCHEMA, _frames("u2"), _manifest("second"))
    monkeypatch.undo()
    assert pd.read_parquet(out)["user_id"].tolist() == ["u2"] * 3  # the new Parquet is in place ...
    with pytest.raises(PairMismatch) as err:  # ... and no reader takes it for the old manifest's
        read_manifest(out)
    assert f"{out} has no manifest recs.json beside it: its write was interrupted" in str(err.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_a_kill_while_streaming_keeps_the_old_pair(tmp_path):
    out = tmp_path / "recs.parquet"
    write_pair(out, RECS_SCHEMA, _frames("u1"), _manifest("first"))

    def dies():
        yield from _frames("u2")
        raise KeyboardInterrupt("killed mid-write")

    with pytest.raises(KeyboardInterrupt):
        write_pair(out, RECS_SCHEMA, dies(), _manifest("second"))
    table, manifest = read_ranked(out)
    assert manifest["run"] == "first" and table.column("user_id").to_pylist() == ["u1"] * 3


def test_a_parquet_beside_another_writes_manifest_is_refused_by_name(tmp_path):
    out = tmp_path / "recs.parquet"
    write_pair(out, RECS_SCHEMA, _frames("u1"), _manifest("first"))
    old_manifest = (tmp_path / "recs.json").read_bytes()
    write_pair(out, RECS_SCHEMA, _frames("u2", 4), _manifest("second"))
    (tmp_path / "recs.json").write_bytes(old_manifest)  # e.g. restored from a backup, or copied by hand
    with pytest.raises(PairMismatch) as err:
        read_ranked(out)
    said = str(err.value)
    assert f"{out} does not match its manifest recs.json" in said and "come from different writes" in said
    assert "`befa recommend`" in said


def test_a_manifest_from_before_the_sha256_is_read_unchecked(tmp_path):
    out = tmp_path / "recs.parquet"
    write_pair(out, RECS_SCHEMA, _frames("u1"), _manifest("first"))
    info = json.loads((tmp_path / "recs.json").read_text())
    del info["parquet_sha256"]
    (tmp_path / "recs.json").write_text(json.dumps(info))
    assert read_manifest(out)["run"] == "first"
    shutil.copy(out, tmp_path / "copy.parquet")
    with pytest.raises(PairMismatch, match="copy.parquet has no manifest copy.json"):
        read_manifest(tmp_path / "copy.parquet")


def test_a_full_disk_while_writing_keeps_the_old_pair_and_says_where(tmp_path, monkeypatch):
    out = tmp_path / "recs.parquet"
    write_pair(out, RECS_SCHEMA, _frames("u1"), _manifest("first"))

    def full():
        yield from _frames("u2")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFull) as err:
        write_pair(out, RECS_SCHEMA, full(), _manifest("second"))
    assert f"no space left on the device holding {tmp_path} while writing recs.parquet" in str(err.value)
    assert "recs.parquet was not replaced" in str(err.value)
    table, manifest = read_ranked(out)
    assert manifest["run"] == "first" and table.column("user_id").to_pylist() == ["u1"] * 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]
