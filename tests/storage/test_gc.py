"""Litter from killed writes: ``clean_temporaries`` and ``befa gc`` remove temporaries older
than a safe age and nothing else."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.data.catalog import build_catalog
from pipeline.data.splits import split_random
from pipeline.features.extract import extract_features
from pipeline.training.api import train_model
from storage.atomic import TMP_PREFIX, clean_temporaries, write_text
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey


def _litter(folder, name, age_s):
    path = folder / f"{TMP_PREFIX}abc123-{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 1000)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_only_old_temporaries_go(tmp_path):
    old = _litter(tmp_path / "catalogs" / "shop", "items.parquet", 7200)
    fresh = _litter(tmp_path / "runs" / "r1", "last.pt", 10)  # a writer may still be at work
    kept = write_text(tmp_path / "runs" / "r1" / "run.json", "{}")
    assert clean_temporaries(tmp_path, dry_run=True) == [old] and old.exists()
    assert clean_temporaries(tmp_path) == [old]
    assert not old.exists() and fresh.exists() and kept.exists()
    assert clean_temporaries(tmp_path / "absent") == []


def test_befa_gc(tmp_path):
    home = tmp_path / "home"
    store = tmp_path / "store"
    litter = [
        _litter(home / "catalogs" / "shop", "items.parquet", 7200),
        _litter(store / "ds" / "fp", "part.parquet", 7200),
    ]
    fresh = _litter(home / "runs" / "r", "best.safetensors", 5)
    runner = CliRunner()
    env = {"BEFA_HOME": str(home), "BEFA_FEATURE_STORE": str(store)}
    res = runner.invoke(app, ["gc", "--dry-run"], env=env)
    assert res.exit_code == 0 and "would remove 2 temporary files" in " ".join(res.output.split())
    assert all(p.exists() for p in litter)
    res = runner.invoke(app, ["gc"], env=env)
    assert res.exit_code == 0 and "removed 2 temporary files older than 3600 s" in " ".join(res.output.split())
    assert not any(p.exists() for p in litter) and fresh.exists()
    res = runner.invoke(app, ["gc", "--older-than", "-1"], env=env)
    assert res.exit_code == 2 and "--older-than must be >= 0" in res.output


def test_extract_and_train_clean_their_folders_first(tmp_path):
    """Ingest, extraction and training each remove the old temporaries of what they are about
    to write (ingest: tests/data/test_catalog_versions.py); fresh ones are left to their writers."""
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(8)], "title": "", "text": [f"text {i}" for i in range(8)]})
    inter = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(6) for _ in range(4)],
            "item_id": [f"i{(u + k) % 8}" for u in range(6) for k in range(4)],
            "rating": 1.0,
            "timestamp": 0,
        }
    )
    catalog = build_catalog("tidy", items, inter)
    store = FeatureStore(tmp_path / "store")
    summary = extract_features(catalog, "imagebind:tiny@random", store, modalities=["text"], progress=False)
    folder = Path(store.feature_set_path(FeatureSetKey("tidy", summary.modalities["text"].fingerprint, "text")))
    old, fresh = _litter(folder / "parts", "part-x.parquet", 7200), _litter(folder, "index.parquet", 5)
    catalog.items.loc[0, "text"] = "changed"  # something to encode, so the extraction writes into the folder
    extract_features(
        build_catalog("tidy", catalog.items[["item_id", "title", "text"]], inter),
        "imagebind:tiny@random",
        store,
        modalities=["text"],
        progress=False,
    )
    assert not old.exists() and fresh.exists()

    catalog.save(tmp_path / "cat")
    split = split_random(catalog, seed=1).save(tmp_path / "cat" / "splits")
    run = tmp_path / "run"
    stale = _litter(run, "last.pt", 7200)
    train_model(
        str(tmp_path / "cat"),
        str(split),
        None,
        "lightgcn",
        overrides={"embedding_dim": 8},
        run_dir=run,
        max_epochs=1,
        quiet=True,
    )
    assert not stale.exists() and (run / "run.json").exists()
