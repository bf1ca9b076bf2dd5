"""Run reports from run folders: metrics tables, gains, plots, report.md."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, ValidationError

from pipeline.data.summary import DatasetSummary, SplitSummary
from pipeline.features.summary import ModalityFeatures
from pipeline.reporting.gains import gains_frame, mean_gains, relative_gain
from pipeline.reporting.pipeline_report import ReportContext, load_runs, metrics_frame, write_report
from pipeline.training.record import EpochLog, RunRecord


def _run(tmp_path, model, adapter, valid_curve, test):
    run_dir = tmp_path / f"{model}-{adapter}"
    epochs = [
        EpochLog(
            epoch=i, loss=1.0 / (i + 1), lr=1e-3, train_s=0.1, eval_s=0.05, valid={"recall@20": v, "ndcg@20": v / 2}
        )
        for i, v in enumerate(valid_curve)
    ]
    best = max(range(len(valid_curve)), key=lambda i: valid_curve[i])
    RunRecord(
        model=model,
        config={"adapter": adapter, "embedding_dim": 8},
        seed=1,
        device="cpu",
        split_id="random-s1-abc",
        feature_snapshots={"image": "snapimg", "text": "snaptxt"},
        status="early_stopped",
        epochs=epochs,
        best_epoch=best,
        best_valid={"recall@20": valid_curve[best]},
        test=test,
        wall={"total_s": 1.5},
        parameters={"params_trainable": 1000, "params_adapter": 100 if adapter == "befa" else 0},
    ).save(run_dir)
    return run_dir


@pytest.fixture
def runs(tmp_path):
    return [
        _run(
            tmp_path,
            "lightgcn",
            "none",
            [0.1, 0.2],
            {"recall@20": 0.20, "ndcg@20": 0.10, "recall@10": 0.1, "ndcg@10": 0.05},
        ),
        _run(
            tmp_path,
            "mgcn",
            "none",
            [0.1, 0.15],
            {"recall@20": 0.20, "ndcg@20": 0.10, "recall@10": 0.0, "ndcg@10": 0.05},
        ),
        _run(
            tmp_path,
            "mgcn",
            "befa",
            [0.12, 0.25, 0.2],
            {"recall@20": 0.25, "ndcg@20": 0.09, "recall@10": 0.02, "ndcg@10": 0.05},
        ),
    ]


def test_metrics_frame_one_row_per_model_adapter_metric(runs):
    frame = metrics_frame(load_runs(runs))
    assert len(frame) == 12
    assert set(frame["adapter"]) == {"none", "befa"}
    row = frame[(frame.model == "mgcn") & (frame.adapter == "befa") & (frame.metric == "recall@20")]
    assert row["value"].item() == pytest.approx(0.25)
    assert row["best_epoch"].item() == 1


def test_gains_relative_and_undefined_when_base_zero(runs):
    gains = gains_frame(metrics_frame(load_runs(runs)))
    g = gains.set_index(["model", "metric"])
    assert g.loc[("mgcn", "recall@20"), "relative_gain"] == pytest.approx(0.25)
    assert g.loc[("mgcn", "ndcg@20"), "relative_gain"] == pytest.approx(-0.1)
    assert pd.isna(g.loc[("mgcn", "recall@10"), "relative_gain"])  # base 0: undefined, not inf
    assert pd.isna(g.loc[("lightgcn", "recall@20"), "befa"])  # trained one way only
    assert mean_gains(gains)["recall@20"] == pytest.approx(0.25)
    assert relative_gain(0.2, 0.3) == pytest.approx(0.5)


def test_write_report_files_and_content(runs, tmp_path):
    class Params(BaseModel):
        dataset: str = "ml-tiny"
        epochs: int = 2

    ctx = ReportContext(
        dataset=DatasetSummary(name="ml-tiny", fingerprint="abcd", num_users=10, num_items=40, num_interactions=99),
        features={
            "image": ModalityFeatures(
                spec="clip:RN50@random",
                fingerprint="clip-rn50-random-123",
                snapshot="snapimg",
                weights="random-init:seed=0",
                random_init=True,
                dim=32,
                encoded=40,
            ),
            "text": ModalityFeatures(
                spec="minilm", fingerprint="minilm-abc", snapshot="snaptxt", weights="sha256:feedbeef", dim=384
            ),
        },
        split=SplitSummary(
            path="s.parquet",
            id="random-s1-abc",
            kind="random",
            seed=1,
            k_core=None,
            counts={"train": 80, "valid": 10, "test": 9},
        ),
        config=Params(),
        timings={"ingest": 1.0, "train": 2.5},
    )
    out = write_report(tmp_path / "report", runs, ctx)
    for path in (out.metrics_parquet, out.metrics_json, out.gains_parquet, out.report_md, out.curves_png, out.bars_png):
        assert path.exists() and path.stat().st_size > 0
    assert out.curves_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pq.read_table(out.metrics_parquet).num_rows == 12
    assert len(json.loads(out.metrics_json.read_text())) == 12
    md = out.report_md.read_text()
    assert "weights: random init" in md
    assert "weights: sha256:feedbeef" in md
    assert "snapimg" in md and "snaptxt" in md
    assert "random-s1-abc" in md
    assert "+25.00%" in md  # mgcn recall@20 gain
    assert "Total: 3.5 s" in md
    assert '"epochs": 2' in md  # the parameters model, dumped in full
    assert "- users: 10" in md and "- interactions: 99" in md
    assert not list((tmp_path / "report").glob(".tmp-*"))


def test_report_context_takes_records_and_refuses_a_wrong_key():
    """A figure under a wrong name fails where the context is built, instead of printing '?'."""
    with pytest.raises(ValidationError, match="num_users"):
        ReportContext(dataset={"name": "x", "fingerprint": "f", "users": 10, "num_items": 1, "num_interactions": 1})
    with pytest.raises(ValidationError, match="snapshot"):
        ReportContext(features={"image": {"spec": "minilm", "fingerprint": "f"}})


def test_missing_run_record_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run.json"):
        load_runs([tmp_path / "nothing"])


def test_metrics_carry_the_feature_provenance(tmp_path):
    """metrics.parquet/json name the encoder fingerprints and flag random-init features."""
    from pipeline.training.record import RunRecord

    run = tmp_path / "run"
    RunRecord(
        model="freedom",
        config={"adapter": "befa"},
        seed=1,
        device="cpu",
        split_id="s",
        status="early_stopped",
        best_epoch=3,
        best_valid={"recall@20": 0.2},
        test={"recall@20": 0.1, "ndcg@20": 0.05},
        feature_sets={
            "image": {"snapshot": "a", "fingerprint": "effnet-lite2-66c3144f22ad", "random_init": False},
            "text": {"snapshot": "b", "fingerprint": "minilm-x", "random_init": True},
        },
    ).save(run)
    frame = metrics_frame(load_runs([run]))
    assert set(frame["feature_fingerprints"]) == {"image=effnet-lite2-66c3144f22ad,text=minilm-x"}
    assert frame["random_init"].all() and len(frame) == 2
