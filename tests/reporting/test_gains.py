"""Base vs +BeFA with uncertainty in the pipeline report (pipeline.reporting.gains): each gain's
paired bootstrap interval from the runs' per_user.parquet, the noise verdict, the flag on arms
that stopped far apart, the gains plot's error bars and the terminal table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from pipeline.reporting.console import gains_table
from pipeline.reporting.gains import gain_intervals, gains_frame, stop_flags
from pipeline.reporting.pipeline_report import ReportContext, load_runs, metrics_frame, write_report
from pipeline.training.record import PER_USER, EpochLog, RunRecord

USERS = 600


def _per_user(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    heldout = rng.integers(1, 8, size=USERS)
    return rng.binomial(heldout, 0.12) / heldout


def _run(tmp_path, model: str, adapter: str, epochs: int, recall: np.ndarray | None) -> str:
    """A finished run of ``epochs`` epochs; with ``recall``, its per_user.parquet (test users
    0..n-1, NDCG half the recall) and test metrics that are the per-user means."""
    run_dir = tmp_path / f"{model}-{adapter}"
    logs = [
        EpochLog(epoch=i, loss=1.0, lr=1e-3, train_s=0.1, eval_s=0.1, valid={"recall@20": 0.1}) for i in range(epochs)
    ]
    mean = 0.1 if recall is None else float(recall.mean())
    test = {"recall@10": mean / 2, "recall@20": mean, "ndcg@20": mean / 2}
    RunRecord(
        model=model,
        config={"adapter": adapter},
        seed=1,
        device="cpu",
        split_id="random-s1",
        status="early_stopped",
        epochs=logs,
        best_epoch=max(0, epochs - 6),
        best_valid={"recall@20": 0.1},
        test=test,
    ).save(run_dir)
    if recall is not None:
        table = pa.table(
            {
                "part": ["test"] * len(recall),
                "user_idx": np.arange(len(recall)),
                "recall@20": recall,
                "ndcg@20": recall / 2,
            }
        )
        pq.write_table(table, run_dir / PER_USER)
    return str(run_dir)


def test_identical_arms_read_not_distinguishable_from_noise_in_the_report(tmp_path):
    recall = _per_user(1)
    runs = [_run(tmp_path, "freedom", "none", 12, recall), _run(tmp_path, "freedom", "befa", 12, recall.copy())]
    files = write_report(tmp_path / "report", runs, ReportContext())
    md = files.report_md.read_text()
    assert "| freedom | recall@20 | " in md and "[+0.00%, +0.00%] | not distinguishable from noise |" in md
    assert f"paired bootstrap over the {USERS:,} test users (2000 resamples, seed 0" in md
    assert "`befa study`" in md
    gains = pq.read_table(files.gains_parquet).to_pandas().set_index("metric")
    assert gains.loc["recall@20", "ci_low"] == 0 and gains.loc["recall@20", "n_users"] == USERS
    assert gains.loc["recall@20", "verdict"] == "not distinguishable from noise"
    assert pd.isna(gains.loc["recall@10", "ci_low"])  # per_user.parquet holds @20 only: no interval
    by_metric = {g.metric: g for g in files.gains}
    assert by_metric["ndcg@20"].verdict == "not distinguishable from noise" and by_metric["ndcg@20"].ci_high == 0
    assert files.gain_notes == []  # both stopped after 12 epochs


def test_a_real_shift_has_an_interval_above_zero_and_the_gain_matches_the_table(tmp_path):
    base = _per_user(2)
    runs = [_run(tmp_path, "bm3", "none", 10, base), _run(tmp_path, "bm3", "befa", 10, base + 0.03)]
    records = load_runs(runs)
    intervals = gain_intervals(records)
    ci = intervals[("bm3", "recall@20")]
    gains = gains_frame(metrics_frame(records), intervals=intervals).set_index("metric")
    assert ci.gain == pytest.approx(gains.loc["recall@20", "relative_gain"])  # per-user means = the run's test
    assert 0 < gains.loc["recall@20", "ci_low"] < ci.gain < gains.loc["recall@20", "ci_high"]
    assert gains.loc["recall@20", "verdict"] == "+BeFA higher"


def test_arms_that_stopped_more_than_twice_apart_are_flagged(tmp_path):
    recall = _per_user(3)
    runs = [
        _run(tmp_path, "freedom", "none", 58, recall),
        _run(tmp_path, "freedom", "befa", 21, recall * 0.87),
        _run(tmp_path, "bm3", "none", 20, None),  # exactly twice apart: not flagged
        _run(tmp_path, "bm3", "befa", 40, None),
        _run(tmp_path, "lightgcn", "none", 3, None),  # one arm only: nothing to compare
    ]
    flags = stop_flags(load_runs(runs))
    assert flags == [
        "freedom +BeFA stopped after 21 epochs, base after 58 (epochs run; best valid epochs 15 and 52): "
        "the gain hangs on an early stop; `befa study` (several seeds per arm, the gain tested over them) "
        "gives the seeded answer."
    ]
    files = write_report(tmp_path / "report", runs, ReportContext())
    md = files.report_md.read_text()
    assert f"**{flags[0]}**" in md and files.gain_notes == flags
    assert "| bm3 | recall@20 | 0.1000 | 0.1000 | +0.00% | - | - |" in md  # no per-user files: no interval, no verdict


def test_gains_plot_and_terminal_table_carry_the_intervals(tmp_path):
    base = _per_user(4)
    runs = [
        _run(tmp_path, "freedom", "none", 9, base),
        _run(tmp_path, "freedom", "befa", 9, base + 0.03),
        _run(tmp_path, "bm3", "none", 9, base),
        _run(tmp_path, "bm3", "befa", 9, _per_user(5)),
    ]
    files = write_report(tmp_path / "report", runs, ReportContext())
    assert files.bars_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    height, width = mpimg.imread(files.bars_png).shape[:2]
    assert width > 1.4 * 4.2 * 110 * 2  # three panels: the two metrics and the gains with error bars
    console = Console(record=True, width=200)
    console.print(gains_table(files.gains))
    text = console.export_text()
    assert "freedom" in text and "+BeFA higher" in text
    assert "bm3" in text and "not distinguishable from noise" in text
    assert "recall@10" not in text  # the terminal shows the metrics with intervals only
