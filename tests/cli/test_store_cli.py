"""``befa store check`` and the CLI's words for a damaged store or a full disk (``pipeline.cli.store``,
``pipeline.cli.main``): one line naming the file, exit code 2, no traceback.

Each test ingests a tiny catalog (8 items with generated images), extracts it with a tiny
random-init encoder, then grows the catalog by 4 items and extracts again, so the image
feature set holds two parts: the first run's 8 items and the second run's 4.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli.main import app
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey

ENCODER = "imagebind:tiny@random"
runner = CliRunner()


def _write_source(src: Path, n: int) -> None:
    (src / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (32, 32), (20 * i, 100, 240 - 15 * i)).save(src / "images" / f"p{i}.jpg")
    ids = [f"p{i}" for i in range(n)]
    pd.DataFrame(
        {"item_id": ids, "title": ids, "text": [f"product {i}" for i in range(n)], "image": [f"{i}.jpg" for i in ids]}
    ).to_csv(src / "items.csv", index=False)
    rows = [(f"u{u}", f"p{(u + k) % n}", 5, 1_700_000_000 + 10 * u + k) for u in range(12) for k in range(5)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(
        src / "interactions.csv", index=False
    )


def _invoke(env: dict, *args: str):
    return runner.invoke(app, list(args), env=env)


def _ingest(env: dict, src: Path, n: int):
    _write_source(src, n)
    args = ["ingest", "generic", "--as", "shop", "--items", str(src / "items.csv")]
    res = _invoke(env, *args, "--interactions", str(src / "interactions.csv"), "--images", str(src / "images"))
    assert res.exit_code == 0, res.output


@pytest.fixture()
def world(tmp_path, datasets_root):
    env = {
        "BEFA_HOME": str(tmp_path / "home"),
        "BEFA_DATASETS_ROOT": str(datasets_root),
        "BEFA_FEATURE_STORE": str(tmp_path / "home" / "features"),
    }
    for n in (8, 12):
        _ingest(env, tmp_path / "src", n)
        res = _invoke(env, "extract", "--dataset", "shop", "--encoder", ENCODER)
        assert res.exit_code == 0, res.output
    store = FeatureStore(env["BEFA_FEATURE_STORE"])
    (fp,) = [p.name for p in (tmp_path / "home" / "features" / "shop").iterdir()]
    key = FeatureSetKey("shop", fp, "image")
    parts = sorted((Path(store.feature_set_path(key)) / "parts").glob("part-*.parquet"))
    assert [pq.ParquetFile(p).metadata.num_rows for p in parts] == [8, 4]
    return {"env": env, "src": tmp_path / "src", "store": store, "key": key, "parts": parts}


def _said(output: str) -> str:
    return " ".join(output.split())  # rich may wrap long lines


def test_a_truncated_part_is_named_checked_repaired_and_re_encoded(world):
    env, key, (old, damaged) = world["env"], world["key"], world["parts"]
    ids = [f"p{i}" for i in range(12)]
    before, _ = world["store"].read(key, ids)
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])

    for args in (
        ["extract", "--dataset", "shop", "--encoder", ENCODER],
        ["train", "--dataset", "shop", "--model", "freedom", "--encoder", ENCODER, "--epochs", "1"],
    ):
        res = _invoke(env, *args)
        said = _said(res.output)
        assert res.exit_code == 2, res.output
        assert f"error: {damaged}: damaged feature-store file (Parquet magic bytes not found" in said
        assert "run `befa store check --repair`" in said and "Traceback" not in said

    res = _invoke(env, "store", "check")
    said = _said(res.output)
    assert res.exit_code == 1, res.output
    assert f"damaged part {damaged}: Parquet magic bytes not found" in said
    assert "shop/" in said and "4 items without a vector" in said and damaged.exists()

    res = _invoke(env, "store", "check", "--repair")
    said = _said(res.output)
    assert res.exit_code == 0, res.output
    quarantined = damaged.parent.parent / "quarantine" / damaged.name
    assert f"moved to {quarantined}" in said and quarantined.exists() and not damaged.exists()
    assert "repaired: 1 damaged files moved aside" in said
    assert "4 items without a vector (the next `befa extract` re-encodes them)" in said

    text_parts = sorted((damaged.parents[2] / "text" / "parts").glob("part-*.parquet"))
    res = _invoke(env, "extract", "--dataset", "shop", "--encoder", ENCODER)
    assert res.exit_code == 0, res.output
    parts = sorted(damaged.parent.glob("part-*.parquet"))
    assert parts[0] == old and [pq.ParquetFile(p).metadata.num_rows for p in parts] == [8, 4]  # 4 re-encoded
    assert set(pq.read_table(parts[1])["item_id"].to_pylist()) == {f"p{i}" for i in range(8, 12)}
    assert sorted((damaged.parents[2] / "text" / "parts").glob("part-*.parquet")) == text_parts  # untouched
    after, mask = FeatureStore(env["BEFA_FEATURE_STORE"]).read(key, ids)
    assert mask.all() and np.allclose(after, before, atol=1e-6)  # the same encoder: the same vectors
    assert _invoke(env, "store", "check").exit_code == 0


def test_a_full_disk_during_extraction_says_where_and_commits_nothing(world, monkeypatch):
    env, key, store = world["env"], world["key"], world["store"]
    snap = store.current_snapshot(key)
    _ingest(env, world["src"], 14)  # two new items to encode
    real = pq.write_table

    def full(table, where, *args, **kwargs):
        if "part-" in str(where):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", full)
    res = _invoke(env, "extract", "--dataset", "shop", "--encoder", ENCODER)
    monkeypatch.undo()
    said = _said(res.output)
    assert res.exit_code == 2, res.output
    parts = Path(store.feature_set_path(key)) / "parts"
    assert f"error: disk full: no space left on the device holding {parts} while writing part-" in said
    assert f"nothing was committed: feature set {key} keeps snapshot {snap.id} as current" in said
    assert "Traceback" not in said

    again = FeatureStore(env["BEFA_FEATURE_STORE"])
    assert again.current_snapshot(key) == snap
    assert again.read(key, [f"p{i}" for i in range(12)])[1].all()
    assert not [p for p in parts.iterdir() if p.name.startswith(".tmp-")]
