"""Crashes at deterministic points (``storage.faults.pause_point``), ``kill -9``, rerun, and
compare with an uninterrupted run: identical features, identical metrics. And two
extractions of one feature set at once: the second waits on the feature set's lock and
encodes nothing.

Each process under test is the real CLI (``python -m pipeline.cli.main``) in a subprocess;
it stops at the named point and writes a ``.reached`` marker, the test kills it there
with SIGKILL (or releases it). No sleeps decide anything: the markers do. Every named write
point, with the faults injected there and the test that holds each, is tabled in
``tests/job/test_fault_injection.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.catalog import Catalog
from storage.atomic import TMP_PREFIX
from storage.faults import marker_stem
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey
from tests.flows_data import make_small_catalog

REPO = Path(__file__).resolve().parents[2]
ENCODER = "imagebind:tiny@random"
SAFETY_S = 300  # a marker not reached in this long means the test is broken, not slow


def _env(home: Path, pause_dir: Path, datasets_root: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        BEFA_HOME=str(home),
        BEFA_FEATURE_STORE=str(home / "features"),
        BEFA_DATASETS_ROOT=str(datasets_root),
        BEFA_PAUSE_DIR=str(pause_dir),
        HF_HUB_OFFLINE="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        **extra,
    )
    for key in ("BEFA_PAUSE_AT", "BEFA_PAUSE_HIT"):
        if key not in extra:
            env.pop(key, None)
    return env


def _befa(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SAFETY_S,
    )
    assert proc.returncode == 0, f"befa {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(proc: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"process ended (rc {proc.returncode}) before {marker.name}:\n{proc.stdout.read()[-3000:]}"
            )
        assert time.monotonic() < deadline, f"{marker} never appeared"
        time.sleep(0.05)


def _kill_at(env: dict[str, str], point: str, *args: str, hit: int = 1) -> None:
    """Run ``befa args`` until it reaches ``point`` (the ``hit``-th time), then SIGKILL it there."""
    env = {**env, "BEFA_PAUSE_AT": point, "BEFA_PAUSE_HIT": str(hit)}
    marker = Path(env["BEFA_PAUSE_DIR"]) / f"{marker_stem(point)}.reached"
    marker.unlink(missing_ok=True)
    proc = _start(env, *args)
    _wait_for(proc, marker)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    marker.unlink()


@pytest.fixture(scope="module")
def source(tmp_path_factory, datasets_root):
    return make_small_catalog(
        tmp_path_factory.mktemp("crash-src"), datasets_root, n_items=30, n_users=120
    ), datasets_root


def _home(tmp_path: Path, source) -> tuple[dict[str, str], Path]:
    cat, datasets_root = source
    home = tmp_path / "home"
    env = _env(home, tmp_path / "pause", datasets_root)
    _befa(
        env,
        "ingest",
        "generic",
        "--as",
        "shop",
        "--items",
        str(cat.items),
        "--interactions",
        str(cat.interactions),
        "--images",
        str(cat.images),
    )
    return env, home


def _features(home: Path) -> dict[str, np.ndarray]:
    catalog = Catalog.load(home / "catalogs" / "shop")
    store = FeatureStore(home / "features")
    out = {}
    for modality in ("image", "text"):
        (fp,) = [p.name for p in (home / "features" / "shop").iterdir() if p.is_dir() and (p / modality).is_dir()] or [
            None
        ]
        keys = catalog.content_keys(modality)
        x, found = store.read(
            FeatureSetKey("shop", fp, modality), keys["item_id"].tolist(), keys["content_hash"].tolist()
        )
        assert found.all()
        out[modality] = x.copy()
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory, source):
    """The uninterrupted reference: features, and LightGCN / FREEDOM trained for 3 epochs."""
    tmp = tmp_path_factory.mktemp("clean")
    env, home = _home(tmp, source)
    _befa(env, "extract", "--dataset", "shop", "--encoder", ENCODER)
    runs = {}
    for model in ("lightgcn", "freedom"):
        run = home / "runs" / model
        _befa(
            env,
            "train",
            "--dataset",
            "shop",
            "--model",
            model,
            "--encoder",
            ENCODER,
            "--epochs",
            "3",
            "--patience",
            "3",
            "--set",
            "embedding_dim=16",
            "--run-dir",
            str(run),
        )
        runs[model] = json.loads((run / "run.json").read_text())
    return _features(home), runs


@pytest.mark.parametrize("point", ["extract-part", "write:part-*"])
def test_killed_extraction_resumes_to_identical_features(tmp_path, source, clean, point):
    """Killed after a part was written but before the snapshot commit, and while a part's
    temporary was written but not renamed: the rerun ends with exactly the clean features."""
    env, home = _home(tmp_path, source)
    _kill_at(env, point, "extract", "--dataset", "shop", "--encoder", ENCODER)
    litter = [p for p in (home / "features").rglob(f"{TMP_PREFIX}*")]
    assert point != "write:part-*" or litter  # the killed write left its temporary (readers ignore it)
    _befa(env, "extract", "--dataset", "shop", "--encoder", ENCODER)
    got = _features(home)
    for modality, want in clean[0].items():
        np.testing.assert_array_equal(got[modality], want)
    assert not any(p.exists() for p in litter)  # its name says its writer is dead: the rerun removed it at once


@pytest.mark.parametrize("model", ["lightgcn", "freedom"])
def test_killed_checkpoint_write_resumes_to_identical_metrics(tmp_path, source, clean, model):
    """Killed while writing the second epoch's ``last.pt`` (written, not renamed): the run
    resumes from the first epoch's checkpoint and ends with the clean run's metrics."""
    env, home = _home(tmp_path, source)
    _befa(env, "extract", "--dataset", "shop", "--encoder", ENCODER)
    run = home / "runs" / model
    args = [
        "train",
        "--dataset",
        "shop",
        "--model",
        model,
        "--encoder",
        ENCODER,
        "--epochs",
        "3",
        "--patience",
        "3",
        "--set",
        "embedding_dim=16",
        "--run-dir",
        str(run),
    ]
    _kill_at(env, "write:last.pt", *args, hit=2)
    killed = json.loads((run / "run.json").read_text())
    assert killed["status"] == "running" and len(killed["epochs"]) <= 2
    _befa(env, *args, "--resume")
    rec = json.loads((run / "run.json").read_text())
    want = clean[1][model]
    assert rec["resumed_at"], "the rerun did not resume"
    assert rec["best_epoch"] == want["best_epoch"]
    assert [e["valid"] for e in rec["epochs"]] == [e["valid"] for e in want["epochs"]]
    assert rec["test"] == want["test"]


def test_two_extractions_of_one_feature_set_do_the_work_once(tmp_path, source, clean):
    """The first holds the feature set's lock (paused inside it); the second waits on it; when
    the first finishes, the second finds every item encoded and encodes none."""
    env, home = _home(tmp_path, source)
    first_env = {**env, "BEFA_PAUSE_AT": "extract-locked"}
    pause = Path(env["BEFA_PAUSE_DIR"])
    first = _start(first_env, "extract", "--dataset", "shop", "--encoder", ENCODER)
    _wait_for(first, pause / "extract-locked.reached")
    second = _start(env, "extract", "--dataset", "shop", "--encoder", ENCODER)
    out = ""
    deadline = time.monotonic() + SAFETY_S
    while "waiting up to" not in out:  # the second says it waits for the lock
        line = second.stdout.readline()
        assert line or second.poll() is None, f"second extraction ended without waiting:\n{out}"
        out += line
        assert time.monotonic() < deadline
    (pause / "extract-locked.release").write_text("")
    assert first.wait(timeout=SAFETY_S) == 0
    parts_after_first = sorted(p.name for p in (home / "features").rglob("part-*.parquet"))
    rest = second.communicate(timeout=SAFETY_S)[0]
    assert second.returncode == 0, out + rest
    assert "holds" in out and "feature set shop/" in out
    for modality, want in clean[0].items():
        np.testing.assert_array_equal(_features(home)[modality], want)
    # the second wrote no part: every vector it serves was encoded once, by the first
    assert sorted(p.name for p in (home / "features").rglob("part-*.parquet")) == parts_after_first
