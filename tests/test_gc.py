"""Litter from killed writes: ``clean_temporaries`` and ``befa gc`` remove temporaries older
than a safe age and nothing else."""

from __future__ import annotations

import os
import time

from typer.testing import CliRunner

from pipeline.cli.main import app
from storage.atomic import TMP_PREFIX, clean_temporaries, write_text


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
    litter = [_litter(home / "catalogs" / "shop", "items.parquet", 7200), _litter(store / "ds" / "fp", "part.parquet", 7200)]
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
