"""A retrain that fails or is killed is asked for again until one succeeds (issue 23, 4).

The job records which catalog version its recommendations were made from, only once they
are committed (``pipeline.job.served``); the watch judges "changed" against that record,
not only against its last extraction; ``befa status`` says when the served
recommendations are older than the catalog. Tiny text-only catalogs, MostPop (no
training) unless a test needs a run to kill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.job.run import PipelineSteps, run_pipeline
from pipeline.job.served import current_catalog, record_served, retraining, running_retrain, served_record
from pipeline.job.watch import registered_params, watch_catalog
from pipeline.settings import get_settings
from tests.job.test_crash import _env, _kill_at

ENCODER = "text=imagebind:tiny@random"


def _write_shop(folder: Path, n_users: int = 30, n_items: int = 20) -> dict[str, str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    items = pd.DataFrame(
        {"item_id": [f"p{i}" for i in range(n_items)], "title": [f"product {i}" for i in range(n_items)]}
    )
    items["text"] = items["title"] + " in colour " + (items.index % 5).astype(str)
    rows = [(f"u{u}", f"p{i}", int(t)) for u in range(n_users) for t, i in enumerate(rng.choice(n_items, 6, False))]
    items.to_csv(folder / "items.csv", index=False)
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(folder / "events.csv", index=False)
    return {"items": str(folder / "items.csv"), "interactions": str(folder / "events.csv")}


def _edit_a_text(files: dict[str, str], item: str = "p3") -> None:
    items = pd.read_csv(files["items"], dtype=str)
    items.loc[items["item_id"] == item, "text"] = f"{item} rewritten {len(items)}"
    items.to_csv(files["items"], index=False)


def _params(files: dict[str, str], **extra) -> dict:
    return {
        "dataset": "shop",
        "importer": "generic",
        "ingest_options": files,
        "encoder": ENCODER,
        "models": ["mostpop"],
        "adapters": ["none"],
        "recommend_k": 5,
        **extra,
    }


def _status(settings, *names: str) -> str:
    res = CliRunner().invoke(app, ["status", *names], env={"BEFA_HOME": str(settings.home)})
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def boom(*args, **kwargs):
    raise RuntimeError("the retrain died here")


@pytest.fixture
def shop(tmp_path):
    files = _write_shop(tmp_path / "src")
    settings = get_settings(home=tmp_path / "home", feature_store=str(tmp_path / "home" / "features"))
    first = run_pipeline(_params(files, run_name="first"), settings)
    return files, settings, first


def test_a_failed_retrain_is_asked_for_again_until_one_succeeds(shop):
    files, settings, first = shop
    served = served_record(settings, "shop")
    assert served.fingerprint == first.ingest.fingerprint and served.version.startswith("0001-")
    assert served.recommendations == first.recommendations.path and served.served_run == "mostpop-none"
    assert not watch_catalog(settings, "shop").changed  # the first watch: served from the current version
    assert "up to date: the served recommendations were made from the current catalog version" in _status(settings)

    _edit_a_text(files)
    change = watch_catalog(settings, "shop")
    assert change.changed and change.retrain_due and not change.retrain_only  # the content itself changed
    registered = registered_params(settings, "shop")  # what the triggered retrain runs with

    # the retrain fails after its recommendations were written (in the report step): no record
    for step in ("recommend", "report"):
        with pytest.raises(RuntimeError, match="the retrain died here"):
            run_pipeline(registered, settings, steps=PipelineSteps(**{step: boom}))
        assert served_record(settings, "shop") == served and running_retrain(settings, "shop") is None
        again = watch_catalog(settings, "shop")  # the source files are untouched since the last watch ...
        assert again.changed and again.retrain_only and again.retrain_due  # ... and yet a retrain is due
        assert again.reason.startswith("retrain due: the served recommendations were made from catalog version 0001-")
        assert again.summary()["retrain_due"] and again.served_version == served.catalog_version.label()
    out = _status(settings)
    assert "shop: STALE: the served recommendations are older than the catalog: made from version 0001-" in out
    now = current_catalog(settings, "shop")  # the watch's re-ingest, and each failed run's own ingest, wrote one
    assert f"the catalog is at {now.label()}" in out and now.version > served.version
    assert "retrain due: the catalog watch asks for it at its next check" in out

    # while a run of the catalog runs, the watch asks for no second one, and status says so
    with retraining(settings, "shop", "/somewhere/running"):
        busy = watch_catalog(settings, "shop")
        assert not busy.changed and busy.retrain_due and "a pipeline run of it is running (pid" in busy.reason
        assert f"a pipeline run of this catalog is running now (pid {os.getpid()}" in _status(settings, "shop")

    done = run_pipeline(registered, settings)  # a retrain that succeeds
    assert served_record(settings, "shop").fingerprint == done.ingest.fingerprint != served.fingerprint
    settled = watch_catalog(settings, "shop")
    assert not settled.changed and not settled.retrain_due and settled.reason == "source files untouched"
    out = _status(settings)
    assert "shop: up to date" in out and "STALE" not in out and f"pipeline run {done.folder} (mostpop-none)" in out


def test_a_retrain_killed_mid_training_is_retriggered(shop, tmp_path, datasets_root):
    """The issue's case: killed with -9 mid-training, the OS drops the run's lock; the watch
    then finds it not running and the served version old, and asks for the retrain again."""
    files, settings, _ = shop
    _edit_a_text(files)
    assert watch_catalog(settings, "shop").changed
    env = _env(settings.home, tmp_path / "pause", datasets_root)
    args = ["run", "shop", "--encoder", ENCODER, "--models", "lightgcn", "--adapters", "none", "--epochs", "3"]
    _kill_at(env, "write:last.pt", *args)  # mid-training: its first checkpoint written, not yet renamed
    assert running_retrain(settings, "shop") is None  # dead: not mistaken for a running retrain
    change = watch_catalog(settings, "shop")
    assert change.changed and change.retrain_only and change.reason.startswith("retrain due")


def test_the_served_record_is_written_atomically_once_everything_is_committed(shop):
    files, settings, first = shop
    path = settings.home / "watch" / "served" / "shop.json"
    recorded = json.loads(path.read_text())
    assert recorded["pipeline_folder"] == first.folder and (Path(first.folder) / "summary.json").exists()
    assert not list(path.parent.glob(".tmp-*"))
    record_served(settings, "other", first.ingest.catalog_dir, "f" * 16, first.folder, None, None)
    assert served_record(settings, "other").version is None  # no stored version has that fingerprint


def test_a_home_from_before_the_records_reads_the_newest_summary(shop):
    _, settings, first = shop
    (settings.home / "watch" / "served" / "shop.json").unlink()
    legacy = served_record(settings, "shop")
    assert legacy.source == "summary.json" and legacy.fingerprint == first.ingest.fingerprint
    assert legacy.pipeline_folder == first.folder and legacy.recommendations == first.recommendations.path


def test_befa_status_without_catalogs_and_with_an_unknown_one(tmp_path):
    env = {"BEFA_HOME": str(tmp_path / "empty")}
    res = CliRunner().invoke(app, ["status"], env=env)
    assert res.exit_code == 0 and "no catalog is registered" in res.output
    res = CliRunner().invoke(app, ["status", "nope"], env=env)
    assert res.exit_code == 2 and "catalog 'nope' is unknown here" in " ".join(res.output.split())


def test_befa_status_starts_without_torch(shop):
    _, settings, _ = shop
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom pipeline.cli.main import app\n"
        "r = CliRunner().invoke(app, ['status'])\nassert r.exit_code == 0, r.output\nprint(r.output)\n"
        "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n"
    )
    env = {**os.environ, "BEFA_HOME": str(settings.home)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "shop: up to date" in out.stdout and out.stdout.strip().endswith("no torch")
