"""A new user's sparse catalog (issue 16, training and report side): the small-catalog
batch rule, the MostPop floor in every output, epoch lines from `befa run`, resume on the
recorded feature snapshots, killed runs reported as interrupted, extraction that loads no
encoder when nothing needs encoding, quiet logs, and a study verdict that leads with
significance and the floor.

Catalogs are synthetic and built here: users with a handful of interactions each over a
long-tailed item popularity, text-only items (random-init tiny encoder), a few epochs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.data.catalog import Catalog, build_catalog
from pipeline.data.splits import split_random
from pipeline.features import plan as plan_module
from pipeline.features.extract import extract_features
from pipeline.features.load import load_features
from pipeline.job.run import run_pipeline
from pipeline.reporting import plots as report_plots
from pipeline.reporting.pipeline_report import ReportContext, write_report
from pipeline.settings import get_settings
from pipeline.study.analysis import verdict
from pipeline.study.inspect import gate_labels
from pipeline.study.report.write import render_markdown as study_markdown
from pipeline.study.rows import FloorRow
from pipeline.training.api import train_model
from pipeline.training.batching import MIN_BATCHES_PER_EPOCH, plan_batches
from pipeline.training.record import RunRecord
from pipeline.training.trainer import FeaturesChanged
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey, text_hash
from tests.study_data import gain_row, sig_row, study_data

runner = CliRunner()
TEXT_ENCODER = "text=imagebind:tiny@random"


def synthetic(n_users: int, n_items: int, per_user: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Items with a text each; every user draws ``per_user`` distinct items by a Zipf-like popularity."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 1.1
    p /= p.sum()
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False, p=p) for _ in range(n_users)])
    item_table = pd.DataFrame(
        {
            "item_id": [f"sku{i:05d}" for i in range(n_items)],
            "title": [f"product {i}" for i in range(n_items)],
            "text": [f"product {i} in colour {i % 7}" for i in range(n_items)],
            "image": None,
            "image_hash": None,
        }
    )
    inter = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in users],
            "item_id": [f"sku{i:05d}" for i in items],
            "rating": 1.0,
            "timestamp": np.arange(len(users)),
        }
    )
    return item_table, inter


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The issue's scale: 1,000 customers, 4,000 items, 10,000 purchases; catalog and split on disk."""
    folder = tmp_path_factory.mktemp("shop")
    items, inter = synthetic(1000, 4000, 10)
    catalog = build_catalog("shop", items, inter)
    catalog.save(folder / "catalog")
    split_path = split_random(catalog, seed=2024).save(folder / "catalog" / "splits")
    return folder, catalog, split_path


# -- item 3: the batch rule ---------------------------------------------------------------
def test_the_batch_rule_keeps_the_protocol_catalogs_at_2048_and_adapts_a_10k_catalog(shop):
    # train interactions of the protocol's catalogs (random 8:1:1): movielens-100k at ratings >= 4
    # and with every rating, amazon-baby-5core; their batches per epoch at 2048 stay as they were
    for train, batches in ((44_630, 22), (80_367, 40), (119_674, 59)):
        plan = plan_batches(train, 2048)
        assert (
            not plan.adapted and plan.batch_size == 2048 and plan.batches_per_epoch == batches >= MIN_BATCHES_PER_EPOCH
        )
    _, _, split_path = shop
    train = int((pd.read_parquet(split_path)["label"] == 0).sum())  # a 10k-interaction catalog: ~8k train rows
    assert 7_000 < train < 10_000
    for n in (train, 10_000):
        plan = plan_batches(n, 2048)
        assert (
            plan.adapted
            and plan.batch_size == n // MIN_BATCHES_PER_EPOCH
            and plan.batches_per_epoch >= MIN_BATCHES_PER_EPOCH
        )
        assert "2048 ->" in plan.note()
    assert not plan_batches(10_000, 256).adapted  # a batch the user already chose small enough is left alone


# -- item 3 / 14c: the floor ------------------------------------------------------------------
def test_a_run_below_the_mostpop_floor_is_flagged_in_console_record_and_report(shop, tmp_path, capsys, monkeypatch):
    folder, catalog, split_path = shop
    floor = train_model(folder / "catalog", split_path, None, "mostpop", run_dir=tmp_path / "mostpop", quiet=True)
    assert floor.record.status == "evaluated_only" and floor.record.floor is None
    # a learning rate that moves nothing: the run cannot beat popularity on a long-tailed catalog
    starved = train_model(
        folder / "catalog",
        split_path,
        None,
        "lightgcn",
        overrides={"lr": 1e-7, "embedding_dim": 16},
        run_dir=tmp_path / "lightgcn",
        max_epochs=3,
        patience=1,
        num_threads=1,
    )
    out = capsys.readouterr().out
    assert "lightgcn epoch    0" in out and "BELOW the MostPop floor" in out
    rec = RunRecord.load(tmp_path / "lightgcn")  # the typed fields survive the round trip through run.json
    assert (
        rec.batching is not None and rec.batching.adapted and rec.config["batch_size"] == rec.batching.batch_size < 2048
    )
    assert rec.floor.below and rec.floor.floor_valid == pytest.approx(floor.record.best_valid["recall@20"])
    assert rec.floor.run_valid < rec.floor.floor_valid and any(
        c.startswith("a flat training loss") for c in rec.floor.causes
    )
    assert starved.record.below_floor

    figures = []
    real_save = report_plots.save_figure
    monkeypatch.setattr(report_plots, "save_figure", lambda fig, path: (figures.append(fig), real_save(fig, path))[1])
    files = write_report(
        tmp_path / "report", [tmp_path / "mostpop", tmp_path / "lightgcn"], ReportContext(title="shop")
    )
    md = files.report_md.read_text()
    assert (
        "## Floor: MostPop" in md
        and "**BELOW**" in md
        and "1 run(s) ended below the floor" in md
        and "a flat training loss" in md
    )
    assert "Small catalog: batch size 2048 ->" in md
    assert pq.read_table(files.metrics_parquet).to_pandas().groupby("model")["below_floor"].first().to_dict() == {
        "lightgcn": True,
        "mostpop": False,
    }
    ax = figures[0].axes[0]  # curves.png: MostPop is a horizontal line at its valid Recall@20, not a point
    (ref,) = [line for line in ax.lines if line.get_label().startswith("MostPop floor")]
    assert list(ref.get_ydata()) == pytest.approx([rec.floor.floor_valid] * 2)
    assert not any(line.get_label().startswith("mostpop") for line in ax.lines)


# -- items 3, 7, 11, 14b: `befa run` --------------------------------------------------------
def _write_csvs(folder: Path, n_users: int = 120, n_items: int = 60, per_user: int = 8) -> dict[str, str]:
    items, inter = synthetic(n_users, n_items, per_user, seed=1)
    folder.mkdir(parents=True, exist_ok=True)
    items[["item_id", "title", "text"]].to_csv(folder / "items.csv", index=False)
    inter.to_csv(folder / "events.csv", index=False)
    return {"items": str(folder / "items.csv"), "interactions": str(folder / "events.csv")}


def test_befa_run_trains_the_floor_and_prints_epoch_lines_in_full_width(tmp_path):
    help_text = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "mostpop" in help_text and "floor" in help_text
    files = _write_csvs(tmp_path / "src")
    settings = get_settings(home=tmp_path / "home")
    lines: list[str] = []
    result = run_pipeline(
        {
            "dataset": "mini",
            "importer": "generic",
            "ingest_options": files,
            "encoder": TEXT_ENCODER,
            "models": ["lightgcn"],
            "adapters": ["none"],
            "epochs": 2,
            "patience": 2,
            "recommend_k": 0,
            "model_overrides": {"*": {"embedding_dim": 8}},
        },
        settings,
        log=lines.append,
    )
    assert [(r.model, r.adapter) for r in result.runs] == [("mostpop", "none"), ("lightgcn", "none")]
    assert "## Floor: MostPop" in Path(result.report.report_md).read_text()

    proc = subprocess.run(  # the real entry point, stdout a pipe: epoch lines, plain full-width tables, no known noise
        [
            sys.executable,
            "-m",
            "pipeline.cli.main",
            "run",
            "mini",
            "--encoder",
            TEXT_ENCODER,
            "--models",
            "lightgcn",
            "--adapters",
            "none",
            "--epochs",
            "2",
            "--run-name",
            "piped",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BEFA_HOME": str(tmp_path / "home")},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lightgcn epoch    0" in proc.stdout and "lightgcn epoch    1" in proc.stdout and "\r" not in proc.stdout
    assert "mostpop" in proc.stdout and "…" not in proc.stdout  # rich's ellipsis marks a cut cell
    assert "torch.jit.script" not in proc.stderr and "Sparse CSR tensor support" not in proc.stderr


# -- items 9, 10: resume on the recorded features; a killed run reads interrupted -----------------
def _kill(run_dir: Path) -> None:
    """What `kill -9` leaves: run.json still says running, and its process is gone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    raw = json.loads((run_dir / "run.json").read_text())
    raw["status"], raw["finished_at"] = "running", None
    raw["process"]["pid"] = dead.pid
    (run_dir / "run.json").write_text(json.dumps(raw))


def test_a_killed_train_is_reported_interrupted_and_resume_keeps_its_snapshots(tmp_path):
    env = {"BEFA_HOME": str(tmp_path / "home")}
    files = _write_csvs(tmp_path / "src")
    assert (
        runner.invoke(
            app,
            ["ingest", "generic", "--items", files["items"], "--interactions", files["interactions"], "--as", "mini"],
            env=env,
        ).exit_code
        == 0
    )
    run_dir = tmp_path / "run"
    train = [
        "train",
        "--dataset",
        "mini",
        "--model",
        "freedom",
        "--encoder",
        TEXT_ENCODER,
        "--epochs",
        "2",
        "--set",
        "embedding_dim=8",
        "--device",
        "cpu",
        "--run-dir",
        str(run_dir),
    ]
    first = runner.invoke(app, train, env=env)
    assert first.exit_code == 0, first.output
    recorded = RunRecord.load(run_dir).feature_snapshots
    _kill(run_dir)
    assert RunRecord.load(run_dir).state == "interrupted"
    again = runner.invoke(app, train, env=env)
    assert (
        again.exit_code == 2
        and "interrupted" in again.output
        and f"befa train --run-dir {run_dir} --resume" in again.output
    )
    evaluated = runner.invoke(app, ["evaluate", str(run_dir)], env=env)
    assert evaluated.exit_code == 0 and "interrupted" in evaluated.output
    report = write_report(tmp_path / "report", [run_dir], ReportContext())
    assert "interrupted" in report.report_md.read_text()

    # the catalog changes and the store's current snapshot moves on; the resume stays on the recorded one
    home = tmp_path / "home"
    catalog = Catalog.load(home / "catalogs" / "mini")
    catalog.items.loc[0, ["text", "text_hash"]] = ["a new description", text_hash("a new description")]
    catalog.save(home / "catalogs" / "mini")  # interactions untouched: the split stays valid
    store = FeatureStore(home / "features")
    new = extract_features(Catalog.load(home / "catalogs" / "mini"), TEXT_ENCODER, store, progress=False)
    assert new.snapshot_ids["text"] != recorded["text"] and new.modalities["text"].encoded == 1
    with pytest.raises(FeaturesChanged, match="--allow-new-features"):
        bundle = load_features(Catalog.load(home / "catalogs" / "mini"), store, new.fingerprints)
        train_model(
            home / "catalogs" / "mini",
            RunRecord.load(run_dir).sources["split"],
            bundle,
            "freedom",
            run_dir=run_dir,
            resume=True,
        )
    resumed = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"], env=env)
    assert resumed.exit_code == 0, resumed.output
    assert RunRecord.load(run_dir).feature_snapshots == recorded and RunRecord.load(run_dir).state == "max_epochs"

    # the recorded snapshot is gone: refuse, unless --allow-new-features
    _kill(run_dir)
    key = FeatureSetKey("mini", new.fingerprints["text"], "text")
    (Path(store.feature_set_path(key)) / "snapshots" / f"{recorded['text']}.parquet").unlink()
    refused = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"], env=env)
    assert refused.exit_code == 2 and "gone" in refused.output and "--allow-new-features" in refused.output
    allowed = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume", "--allow-new-features"], env=env)
    assert allowed.exit_code == 0, allowed.output
    assert f"continuing on snapshot {new.snapshot_ids['text']}" in allowed.output


# -- item 12: nothing to encode loads no encoder ----------------------------------------------
def test_nothing_to_encode_loads_no_encoder(tmp_path, monkeypatch):
    items, inter = synthetic(30, 20, 3)
    catalog = build_catalog("enc", items, inter)
    store = FeatureStore(tmp_path / "store")
    first = extract_features(catalog, TEXT_ENCODER, store, progress=False)
    assert first.modalities["text"].encoded == 20

    def no_encoder(*args, **kwargs):
        raise AssertionError("an encoder was loaded although nothing needed encoding")

    real = plan_module.create_encoders
    monkeypatch.setattr(plan_module, "create_encoders", no_encoder)
    again = extract_features(catalog, TEXT_ENCODER, store, progress=False)
    text = again.modalities["text"]
    assert text.encoded == 0 and text.skipped == 20 and text.snapshot_id == first.snapshot_ids["text"]
    assert text.fingerprint == first.modalities["text"].fingerprint and "not loaded" in text.precision

    loaded = []
    monkeypatch.setattr(plan_module, "create_encoders", lambda *a, **k: (loaded.append(1), real(*a, **k))[1])
    edited = build_catalog("enc", items.assign(text=lambda f: f["text"].where(f.index != 3, "changed")), inter)
    third = extract_features(edited, TEXT_ENCODER, store, progress=False)
    assert loaded and third.modalities["text"].encoded == 1 and third.modalities["text"].skipped == 19


# -- item 11: known third-party noise is filtered at the entry point; wide plain tables -------------
def test_the_entry_point_filters_known_warnings_and_prints_full_width_when_piped():
    code = (
        "import logging, warnings\n"
        "import pipeline.cli.main\n"
        "from pipeline.cli.common import console\n"
        "from rich.table import Table\n"
        "warnings.warn('`torch.jit.script` is deprecated. Please switch', FutureWarning)\n"
        "warnings.warn('Sparse CSR tensor support is in beta state. x', UserWarning)\n"
        "logging.warning(\"No pretrained weights loaded for model 'ViT-B-32'. Model initialized randomly.\")\n"
        "warnings.warn('a warning befa does not know', UserWarning)\n"
        "t = Table(); t.add_column('snapshot'); t.add_column('count'); "
        "t.add_row('s' * 150, '1,234,567'); console.print(t)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (
        "torch.jit.script" not in proc.stderr
        and "Sparse CSR" not in proc.stderr
        and "No pretrained weights" not in proc.stderr
    )
    assert "a warning befa does not know" in proc.stderr  # only the known ones are silenced
    assert "s" * 150 in proc.stdout and "1,234,567" in proc.stdout


# -- item 13: the study's verdict ---------------------------------------------------------------
def _gains(r):
    return [gain_row(m, met, r[m]) for m in r for met in ("recall@20", "ndcg@20")]


def _sig(d, significant):
    return [sig_row(m, met, d[m], significant[m]) for m in d for met in ("recall@20", "ndcg@20")]


def _floor(below: dict[tuple[str, str], bool]):
    rows = [FloorRow(model="mostpop", adapter="none", valid=0.05, test=0.048, seeds=1, below=None, below_seeds=0)]
    for (m, a), b in below.items():
        rows.append(
            FloorRow(
                model=m,
                adapter=a,
                valid=0.02 if b else 0.09,
                test=0.02 if b else 0.09,
                seeds=1,
                below=b,
                below_seeds=int(b),
                causes=["too few optimiser steps"] if b else [],
            )
        )
    return rows


def test_the_study_verdict_leads_with_significance_and_the_floor_not_the_gain():
    all_below = _floor({("a", "none"): True, ("a", "befa"): True})
    text = verdict(_gains({"a": 0.0957}), _sig({"a": 0.01}, {"a": False}), 0.05, all_below)
    assert text.startswith("Inconclusive: every run is below the MostPop floor")
    assert (
        text.index("No significant effect") < text.index("MostPop floor: test recall@20 0.0480") < text.index("+9.57%")
    )
    assert "too few optimiser steps" in text and "not significant for any model" in text
    some_below = verdict(
        _gains({"a": 0.1, "b": 0.1}),
        _sig({"a": 0.01, "b": 0.01}, {"a": True, "b": False}),
        0.05,
        _floor({("a", "none"): False, ("a", "befa"): False, ("b", "none"): True, ("b", "befa"): False}),
    )
    assert some_below.startswith("Mixed result") or some_below.startswith("BeFA helped")
    assert "Below it on valid: b base" in some_below and some_below.index("Below it") < some_below.index(
        "Raw mean relative gain"
    )
    fine = verdict(
        _gains({"a": 0.1}), _sig({"a": 0.01}, {"a": True}), 0.05, _floor({("a", "none"): False, ("a", "befa"): False})
    )
    assert fine.startswith("BeFA helped") and "every arm is above it" in fine

    data = study_data(verdict=text, floor=all_below, gains=_gains({"a": 0.0957}))
    md = study_markdown(data, pd.DataFrame(columns=["experiment"]), {})
    assert md.index("Against the MostPop floor") < md.index("mean relative gain (this data)")
    assert "MostPop (floor)" in md and "BELOW (1/1 seeds)" in md


# -- item 14e --------------------------------------------------------------------------------------
def test_gate_heatmap_labels_add_the_id_when_names_repeat():
    table = pd.DataFrame(
        {"item_id": ["A1", "B2", "C3", "D4"], "title": ["Linen shirt", "Linen shirt", "Wool scarf", ""]}
    )
    assert gate_labels(table, [0, 1, 2, 3]) == ["Linen shirt [A1]", "Linen shirt [B2]", "Wool scarf", "D4"]


def test_run_state_tells_a_killed_run_from_a_live_one(tmp_path):
    from pipeline.training.liveness import ProcessInfo, mark_active, run_state, this_process

    me = this_process()
    assert run_state("early_stopped", None, tmp_path) == "early_stopped"
    assert run_state("running", None, tmp_path) == "interrupted"  # an old record that never closed
    assert (
        run_state("running", me.model_copy(update={"host": "elsewhere"}), tmp_path) == "running"
    )  # cannot check: trusted
    assert run_state("running", me, tmp_path) == "interrupted"  # this process, but not training the folder
    mark_active(tmp_path, True)
    try:
        assert run_state("running", me, tmp_path) == "running"
    finally:
        mark_active(tmp_path, False)
    if me.started is not None:  # a reused pid: same number, another start time
        assert run_state("running", ProcessInfo(pid=me.pid, host=me.host, started="0"), tmp_path) == "interrupted"
