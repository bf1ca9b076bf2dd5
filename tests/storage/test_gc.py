"""Litter from killed writes: ``clean_temporaries`` and ``befa gc`` remove a dead writer's
temporaries at once, a live writer's never, and those whose writer cannot be told once older
than a safe age; ``befa gc --run-dir`` looks outside ``BEFA_HOME`` too."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.data.catalog import build_catalog
from pipeline.data.splits import split_random
from pipeline.features.extract import extract_features
from pipeline.training.api import train_model
from storage.atomic import TMP_PREFIX, atomic_path, clean_temporaries, tmp_name, write_text, writer_alive
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
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "removed 2 temporary files (writer dead, or unknown and older than 3600 s)" in out
    assert not any(p.exists() for p in litter) and fresh.exists()
    res = runner.invoke(app, ["gc", "--older-than", "-1"], env=env)
    assert res.exit_code == 2 and "--older-than must be >= 0" in res.output
    res = runner.invoke(app, ["gc", "--run-dir", str(tmp_path / "nowhere")], env=env)
    assert res.exit_code == 2 and f"--run-dir {tmp_path / 'nowhere'}: no such folder" in " ".join(res.output.split())


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # exited and reaped: its pid names no process (until the OS reuses it)
    return proc.pid


def _named(folder: Path, name: str, pid: int, age_s: float = 0) -> Path:
    """A temporary named as ``atomic_path`` names one, for writer ``pid`` on this machine."""
    path = folder / tmp_name(name).replace(f"-{os.getpid()}-", f"-{pid}-", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_a_dead_writers_temporary_goes_at_once_and_a_live_ones_never(tmp_path):
    with atomic_path(tmp_path / "run.json") as tmp:  # the name a writer gives: its host and pid
        tmp.write_text("{}")
        assert writer_alive(tmp.name) is True and f"-{os.getpid()}-" in tmp.name
    dead = _named(tmp_path / "cat", "CURRENT", _dead_pid())
    live = _named(tmp_path / "run", "last.pt", os.getpid(), age_s=7200)  # old, but its writer runs
    unknown = _litter(tmp_path / "run", "best.safetensors", 60)  # an older name: the age decides
    assert writer_alive(dead.name) is False and writer_alive(unknown.name) is None
    assert clean_temporaries(tmp_path) == [dead]
    assert live.exists() and unknown.exists()
    assert clean_temporaries(tmp_path, older_than_s=30) == [unknown] and live.exists()


def test_befa_gc_looks_in_run_dirs_outside_the_home(tmp_path):
    home, outside = tmp_path / "home", tmp_path / "elsewhere" / "my-run"
    killed = _named(outside, "last.pt", _dead_pid())  # a `befa train --run-dir` killed mid-write
    fresh_unknown = _litter(outside, "best.safetensors", 5)
    in_home = _named(home / "runs" / "r", "run.json", _dead_pid())
    env = {"BEFA_HOME": str(home), "BEFA_FEATURE_STORE": str(home / "features")}
    res = CliRunner().invoke(app, ["gc"], env=env)
    assert res.exit_code == 0 and killed.exists() and not in_home.exists()  # not asked to look there
    res = CliRunner().invoke(app, ["gc", "--run-dir", str(outside), "--run-dir", str(home / "runs")], env=env)
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and f"removed {killed}" in out and "removed 1 temporary files" in out
    assert not killed.exists() and fresh_unknown.exists()
    assert f"under {home}, {outside}" in out  # the home's own runs folder is not looked at twice
    res = CliRunner().invoke(app, ["gc", "--run-dir", str(outside)], env={**env, "BEFA_GC_OLDER_THAN": "1"})
    assert res.exit_code == 0 and not fresh_unknown.exists()  # the threshold from the environment


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
