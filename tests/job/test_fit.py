"""Defaults that fit the catalog (issue 23, item 1): when `befa run` fits (auto on a small sparse
catalog), the fit recorded in the run record, the job's result, the report and the terminal, and
runs below the MostPop floor left out of the recommend step with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.job.params import PipelineError, PipelineParams
from pipeline.job.recommend_step import choose_run, serving_candidates
from pipeline.training.fit_record import AUTO_MAX_DENSITY, AUTO_MAX_TRAIN, fit_decision
from pipeline.training.record import RunRecord
from pipeline.training.summary import TrainSummary

runner = CliRunner()


def test_auto_fits_small_sparse_catalogs_and_leaves_the_protocol_catalogs_alone():
    # (train interactions, interactions, users, items) as each catalog has them
    fashion = (6_765, 8_457, 1_037, 4_116)  # the shop: 0.20% dense
    tiktok = (59_541, 68_722, 9_308, 6_710)  # 0.11%
    movielens = (44_630, 55_375, 943, 1_682)  # ratings >= 4: 3.5%
    amazon_baby = (119_674, 160_792, 19_445, 7_050)  # 0.12%, but large
    assert fit_decision("auto", *fashion).on and fit_decision("auto", *tiktok).on
    assert not fit_decision("auto", *movielens).on and not fit_decision("auto", *amazon_baby).on
    reason = fit_decision("auto", *tiktok).reason
    assert f"{AUTO_MAX_TRAIN:,}" in reason and f"{AUTO_MAX_DENSITY:.0%}" in reason and "59,541" in reason
    assert fit_decision("on", *movielens).on and not fit_decision("off", *fashion).on
    assert PipelineParams().fit == "auto" and PipelineParams().fit_trials >= 1


def summary(model: str, adapter: str, valid: float | None, status: str = "early_stopped") -> TrainSummary:
    return TrainSummary(
        model=model,
        adapter=adapter,
        run_dir=f"/runs/{model}-{adapter}",
        status=status,
        best_epoch=3,
        epochs_run=10,
        test={"recall@20": 0.5},  # never read for the choice
        valid={} if valid is None else {"recall@20": valid},
    )


def test_runs_below_the_floor_are_left_out_of_the_recommend_step_with_the_reason():
    runs = [
        summary("mostpop", "none", 0.0392),
        summary("lightgcn", "none", 0.0300),  # the LightGCN, below the floor
        summary("freedom", "none", 0.0392),  # at the floor: kept
        summary("freedom", "befa", 0.0500),
        summary("mgcn", "none", None, status="failed"),
    ]
    keep, left_out = serving_candidates(runs)
    assert [r.label for r in keep] == ["mostpop", "freedom", "freedom+befa"]
    assert left_out == [
        "lightgcn: below the MostPop floor on valid (recall@20 0.0300 < 0.0392)",
        "mgcn: no valid recall@20 (status failed)",
    ]
    assert choose_run(PipelineParams(), runs)[0].label == "freedom+befa"
    # every trained run below the floor: MostPop serves
    floor_only = [runs[0], summary("lightgcn", "none", 0.01), summary("freedom", "befa", 0.02)]
    assert choose_run(PipelineParams(), floor_only)[0].model == "mostpop"
    # a run the user names is served as named
    named = PipelineParams(models=["lightgcn"], adapters=["none"], recommend_run="lightgcn-none")
    assert choose_run(named, runs) == (runs[1], "recommend_run")
    assert serving_candidates(runs, named.recommend_run)[1][0] == (
        "lightgcn: below the MostPop floor on valid (recall@20 0.0300 < 0.0392); "
        "served all the same: --recommend-run names it"
    )
    with pytest.raises(PipelineError, match="no run has a valid"):
        choose_run(PipelineParams(), [summary("mgcn", "none", None)])


def _sparse_csvs(folder: Path, n_users: int = 200, n_items: int = 400, per_user: int = 3) -> dict[str, str]:
    rng = np.random.default_rng(3)
    p = 1.0 / np.arange(1, n_items + 1) ** 1.1
    rows = [(u, i) for u in range(n_users) for i in rng.choice(n_items, per_user, replace=False, p=p / p.sum())]
    folder.mkdir(parents=True)
    pd.DataFrame({"item_id": [f"sku{i}" for i in range(n_items)], "title": [f"p{i}" for i in range(n_items)]}).assign(
        text=lambda f: f["title"] + " colour " + (f.index % 5).astype(str)
    ).to_csv(folder / "items.csv", index=False)
    pd.DataFrame({"user_id": [f"c{u}" for u, _ in rows], "item_id": [f"sku{i}" for _, i in rows]}).to_csv(
        folder / "events.csv", index=False
    )
    return {"--items": str(folder / "items.csv"), "--interactions": str(folder / "events.csv")}


def test_befa_run_fits_a_sparse_catalog_by_default_and_records_it_everywhere(tmp_path):
    files = _sparse_csvs(tmp_path / "src")  # 200 customers x 400 products, 600 purchases: 0.75% dense
    args = ["run", "shop", *[x for kv in files.items() for x in kv], "--encoder", "text=imagebind:tiny@random"]
    args += ["--models", "lightgcn", "--adapters", "none", "--epochs", "3", "--fit-trials", "2", "--threads", "1"]
    args += ["--set", "*.embedding_dim=8", "--run-name", "fitted", "--no-verify-checkpoints"]
    out = runner.invoke(app, args, env={"BEFA_HOME": str(tmp_path / "home"), "COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    assert "fit: on (auto: on below 100,000 train interactions" in out.output
    assert "fit lightgcn: 2 trials on valid" in out.output and "at the defaults ->" in out.output
    folder = tmp_path / "home" / "runs" / "pipelines" / "fitted"
    rec = RunRecord.load(folder / "runs" / "lightgcn-none")
    assert rec.fit is not None and len(rec.fit.trials) == 2 and rec.fit.trials[0].point == {}
    assert rec.fit.reason.startswith("auto:") and (folder / "runs" / "lightgcn-none" / "fit" / "trial-01").is_dir()
    result = json.loads((folder / "summary.json").read_text())
    (lightgcn,) = [r for r in result["runs"] if r["model"] == "lightgcn"]
    assert (
        lightgcn["fit"]["winner"] == rec.fit.winner and lightgcn["fit"]["trials"][0]["valid"] == rec.fit.default_valid
    )
    assert result["runs"][0]["fit"] is None  # MostPop: nothing to fit
    report = (folder / "report.md").read_text()
    assert "## Fit to the catalog" in report and "| lightgcn base | 2 of 36 (" in report
    left = result["recommendations"]["left_out"]
    assert left == ([] if rec.best_valid["recall@20"] >= result["runs"][0]["valid"]["recall@20"] else [
        f"lightgcn: below the MostPop floor on valid (recall@20 {rec.best_valid['recall@20']:.4f} < "
        f"{result['runs'][0]['valid']['recall@20']:.4f})"])  # fmt: skip
    for note in left:
        assert f"left out of the recommendations: {note}" in report
