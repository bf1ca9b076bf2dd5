"""The insertion ablation (pipeline.study.insertions): every model's +BeFA winner with loss and
content (MGCN: content only, its config refuses loss), every seed, one batch; the forward arm is
the main table's runs; rows with paired tests against base (Holm over the phase), gate health
and the collapse statement; the report's section and its gate-distribution plot; the switch.

Training is replaced by a fake ``train_model`` (each arm a known per-user Recall@20 and gate
health); the study runner, its run cache, the main table and the phase itself are the real ones.
The gate values (rebuilt from trained weights in a real study: tests/study/test_study.py) are
synthetic here.
"""

from __future__ import annotations

from html import unescape
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import pipeline.cli.job as cli_job
import pipeline.study.insertions as insertions_module
import pipeline.study.runner as runner_module
from models import get_model_class, make_config
from pipeline.cli.main import app
from pipeline.job.params import PipelineError
from pipeline.study.analysis import results_frame
from pipeline.study.insertions import EXPERIMENT, distribution, insertion_phase, insertion_result
from pipeline.study.params import StudyParams
from pipeline.study.phases import StudyContext, main_table
from pipeline.study.report.page import render_html
from pipeline.study.report.tables import StudyData
from pipeline.study.report.write import render_markdown, write_study_report
from pipeline.study.runner import StudyRunner
from pipeline.study.stats import holm
from pipeline.training.gate_health import COLLAPSED, GateStats
from pipeline.training.record import PER_USER, EpochLog, RunRecord
from tests.study_data import study_data

SEEDS = [1, 2, 3]
USERS = 40
WINNERS = {
    ("bm3", "none"): {"embedding_dim": 8, "adapter": "none", "lr": 1e-3},
    ("bm3", "befa"): {"embedding_dim": 8, "adapter": "befa", "lr": 5e-3, "befa.t": 2.0},
    ("mgcn", "none"): {"embedding_dim": 8, "adapter": "none", "lr": 1e-4},
    ("mgcn", "befa"): {"embedding_dim": 8, "adapter": "befa", "lr": 5e-4, "cl_weight": 0.1},
}
SEARCHES = {key: {"winner_overrides": win} for key, win in WINNERS.items()}
# per-user Recall@20 level of each arm (model, insertion or "base")
LEVEL = {
    ("bm3", "base"): 0.20,
    ("bm3", "forward"): 0.24,
    ("bm3", "loss"): 0.30,  # the best arm, and its gates collapsed in every seed: not BeFA's effect
    ("bm3", "content"): 0.22,
    ("mgcn", "base"): 0.25,
    ("mgcn", "forward"): 0.26,
    ("mgcn", "content"): 0.21,
}
HEALTHY = GateStats.of(mean=0.5, std_items=0.01, share_high=0.0, share_low=0.0)
SATURATED = GateStats.of(mean=1.0, std_items=0.0, share_high=1.0, share_low=0.0)


def arm_of(model: str, config: dict[str, Any]) -> str:
    return config["befa"]["insertion"] if config["adapter"] == "befa" else "base"


def gates_of(model: str, arm: str, seed: int) -> dict[str, GateStats] | None:
    """bm3 loss: both gates collapsed in every seed; bm3 content: the image gate in every seed,
    the text gate in one; every other +BeFA arm healthy."""
    if arm == "base":
        return None
    if (model, arm) == ("bm3", "loss"):
        return {"image": SATURATED, "text": SATURATED}
    if (model, arm) == ("bm3", "content"):
        return {"image": SATURATED, "text": SATURATED if seed == SEEDS[0] else HEALTHY}
    return {"image": HEALTHY, "text": HEALTHY}


def per_user_values(model: str, arm: str, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed * 100 + USERS).uniform(-0.05, 0.05, USERS)  # shared by the arms: paired
    return LEVEL.get((model, arm), 0.1) * (1 + 0.1 * np.arange(USERS) / USERS) + noise


def fake_train_model(catalog, split, features, model, overrides, run_dir, seed, **_):
    """A finished run: its config validated as the trainer would, per-user metrics and gates known to the test."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = make_config(get_model_class(model), overrides).model_dump(mode="json")
    arm = arm_of(model, config)
    recall = per_user_values(model, arm, seed)
    frame = pd.DataFrame({"part": "test", "user_idx": np.arange(USERS), "recall@20": recall, "ndcg@20": recall / 2})
    frame.to_parquet(run_dir / PER_USER)
    test = {"recall@20": float(recall.mean()), "ndcg@20": float(recall.mean() / 2)}
    rec = RunRecord(model=model, config=config, seed=seed, device="cpu", split_id="s", status="max_epochs")
    epoch = EpochLog(epoch=0, loss=0.0, lr=1e-3, train_s=0.0, eval_s=0.0, valid=test, gates=gates_of(model, arm, seed))
    rec.epochs.append(epoch)
    rec.best_epoch, rec.best_valid, rec.test = 0, test, test
    rec.save(run_dir)


def fake_distributions(ctx, runs):
    """Synthetic gate values per arm's first seed: near 1 where the arm collapsed, spread otherwise."""
    rng, out = np.random.default_rng(0), []
    for (model, insertion), recs in runs.runs.items():
        for modality in ("image", "text"):
            stats = recs[0].best_gates[modality]
            values = np.clip(1 - rng.exponential(1e-3, (30, 8)), 0, 1) if stats.collapsed else rng.beta(5, 5, (30, 8))
            out.append(distribution(model, insertion, modality, recs[0], values))
    return out


@pytest.fixture
def fake_training(monkeypatch):
    monkeypatch.setattr(runner_module, "train_model", fake_train_model)
    monkeypatch.setattr(insertions_module, "gate_distributions", fake_distributions)


def context(folder: Path, **changes: Any) -> StudyContext:
    params = StudyParams(**{"models": ["bm3", "mgcn"], "focus_model": "mgcn", "seeds": SEEDS, **changes})
    mods = {"image": "snap-i", "text": "snap-t"}
    features = SimpleNamespace(features=dict.fromkeys(mods), snapshots=mods, subset=lambda m: None)
    runner = StudyRunner(params, SimpleNamespace(home=folder), folder, "catalog", features, lambda msg: None)
    split = SimpleNamespace(path="split.parquet")
    return StudyContext(params, None, folder, lambda msg: None, None, None, split, None, features, runner)  # type: ignore[arg-type]


def run_phase(ctx: StudyContext):
    """The main table (one batch), then the phase; returns (main runs, the phase's runs, its batches' specs)."""
    main = main_table(ctx, SEARCHES)
    ctx.run_batch()
    batches: list[list[Any]] = []
    run_many = ctx.runner.run_many
    ctx.runner.run_many = lambda specs, hooks=None: batches.append(list(specs)) or run_many(specs, hooks)  # type: ignore[method-assign]
    return main, insertion_phase(ctx, SEARCHES, main), batches


def test_the_phase_queues_loss_and_content_mgcn_without_loss_and_reuses_the_forward_runs(tmp_path, fake_training):
    ctx = context(tmp_path)
    main, runs, batches = run_phase(ctx)
    assert len(batches) == 1  # one batch, through the runner
    assert [(s.model, s.setting, s.seed) for s in batches[0]] == [
        (model, insertion, seed)
        for model, insertion in (("bm3", "loss"), ("bm3", "content"), ("mgcn", "content"))
        for seed in SEEDS
    ]
    for spec in batches[0]:  # the +BeFA winner's configuration, the insertion alone changed
        assert spec.experiment == EXPERIMENT and spec.modalities == ["image", "text"]
        assert spec.overrides == {**WINNERS[(spec.model, "befa")], "befa.insertion": spec.setting}
    # MostPop, 2 models x 2 adapters x 3 seeds in the main table, then the 9 new runs; forward not trained again
    assert (ctx.runner.trained, ctx.runner.reused) == (1 + 4 * len(SEEDS) + 9, 0)
    assert set(runs.reused) == {("bm3", "forward"), ("mgcn", "forward")}
    for model in ("bm3", "mgcn"):
        assert [r.run_dir for r in runs.runs[(model, "forward")]] == [r.run_dir for r in main[(model, "befa")]]
        assert [r.run_dir for r in runs.base[model]] == [r.run_dir for r in main[(model, "none")]]
    assert list(runs.skipped) == [("mgcn", "loss")] and "does not exist for MGCN" in runs.skipped[("mgcn", "loss")]
    for (model, insertion), recs in runs.runs.items():
        assert [r.seed for r in recs] == SEEDS
        assert {r.config["befa"]["insertion"] for r in recs} == {insertion}
    rows = pd.DataFrame(ctx.rows)
    test = rows[(rows["experiment"] == EXPERIMENT) & (rows["split"] == "test") & (rows["metric"] == "recall@20")]
    assert test.groupby(["model", "setting", "adapter"]).size().to_dict() == {
        (model, setting, "none" if setting == "base" else "befa"): len(SEEDS)
        for model, settings in (
            ("bm3", ("base", "forward", "loss", "content")),
            ("mgcn", ("base", "forward", "content")),
        )
        for setting in settings
    }
    assert len(runs.distributions) == 5 * 2  # five arms, two modalities


def test_rows_carry_the_tests_gate_health_and_the_collapse_statement(tmp_path, fake_training):
    ctx = context(tmp_path)
    _, runs, _ = run_phase(ctx)
    result = insertion_result(runs, "user_mean", 0.05)
    arms = {(a.model, a.insertion, a.metric): a for a in result.arms}
    assert list(dict.fromkeys((a.model, a.insertion) for a in result.arms)) == [
        ("bm3", "forward"),
        ("bm3", "loss"),
        ("bm3", "content"),
        ("mgcn", "forward"),
        ("mgcn", "content"),
    ]
    assert [a.p_wilcoxon_holm for a in result.arms] == holm([a.test.p_wilcoxon for a in result.arms])
    loss = arms[("bm3", "loss", "recall@20")]
    expected = np.mean([per_user_values("bm3", "loss", s).mean() for s in SEEDS])
    base = np.mean([per_user_values("bm3", "base", s).mean() for s in SEEDS])
    assert loss.mean == pytest.approx(expected) and loss.base_mean == pytest.approx(base)
    assert loss.relative_gain == pytest.approx(expected / base - 1) and loss.test.wins == USERS and loss.significant
    assert loss.adapter_off and loss.collapsed == ["image", "text"]  # collapsed everywhere: not BeFA's effect
    content = arms[("bm3", "content", "recall@20")]
    assert not content.adapter_off and content.collapsed == ["image"]  # text collapsed in one seed of three
    assert not arms[("bm3", "forward", "recall@20")].adapter_off and arms[("bm3", "forward", "ndcg@20")].reused
    gates = {(g.model, g.insertion, g.modality): g for g in result.gates}
    assert len(gates) == 10
    text = gates[("bm3", "content", "text")]
    assert (text.collapsed_seeds, text.seeds) == (1, 3)
    assert text.mean == pytest.approx((1.0 + 0.5 + 0.5) / 3) and text.share_high == pytest.approx(1 / 3)
    assert text.std_items == pytest.approx(0.02 / 3) and text.share_low == 0.0
    assert result.skipped == {"mgcn/loss": runs.skipped[("mgcn", "loss")]}
    assert result.configurations["mgcn/content"] == {**WINNERS[("mgcn", "befa")], "befa.insertion": "content"}
    assert result.configurations["bm3/forward"] == WINNERS[("bm3", "befa")]


def test_the_report_renders_the_section_and_the_gate_plot(tmp_path, fake_training):
    ctx = context(tmp_path)
    _, runs, _ = run_phase(ctx)
    result = insertion_result(runs, "user_mean", 0.05)
    data = study_data(insertions=result)
    assert StudyData.model_validate_json(data.model_dump_json()).insertions == result  # study.json round trip
    files = write_study_report(tmp_path / "report", results_frame(ctx.rows), data)
    plot = files["plot_insertion_gates"]
    assert plot.name == "insertion_gates.png" and plot.stat().st_size > 20_000
    md, html = files["report_md"].read_text(), unescape(files["report_html"].read_text())
    for text in (md, html):
        assert "Where BeFA acts: the insertion ablation" in text and "plots/insertion_gates.png" in text
        assert f"{COLLAPSED}: its gain is not BeFA's effect" in text  # bm3 loss, instead of BeFA's gain
        assert "BeFA, with the image gate collapsed in every seed" in text  # bm3 content
        assert "mgcn loss: not run (MGCN: befa.insertion='loss' does not exist for MGCN" in text
        assert f"bm3: forward {result.arms[0].relative_gain * 100:+.2f}%" in text and f"loss {COLLAPSED}" in text
        assert "Gate health at the best valid epoch" in text and "Trained gate distributions" in text
    assert "| bm3 | +BeFA loss | 3 seeds |" in md and "| bm3 | +BeFA forward | main table, 3 seeds |" in md
    assert "| bm3 | content | text | 0.667 | 0.0067 | 33.3% | 0.0% | 1 of 3 seeds |" in md
    assert "id='insertion-gates-plot'" in html
    empty = pd.DataFrame(columns=["experiment"])
    assert "insertion ablation" not in render_markdown(study_data(), empty, {})
    assert "id='insertions'" not in render_html(study_data(), empty, {})


def test_the_switch(tmp_path, fake_training):
    assert StudyParams().insertions == ["forward", "loss", "content"]
    assert StudyParams(insertions=None).insertions is None
    assert StudyParams(insertions=["content", "loss", "content"]).insertions == ["content", "loss"]
    for bad in ([], ["sideways"]):
        with pytest.raises(ValueError):
            StudyParams(insertions=bad)
    off = context(tmp_path / "off", insertions=None)
    main, runs, batches = run_phase(off)
    assert runs is None and batches == [] and off.queued == []
    assert not any(row["experiment"] == EXPERIMENT for row in off.rows)
    only = context(tmp_path / "only", insertions=["content"])
    _, runs, batches = run_phase(only)
    assert [(s.model, s.setting) for s in batches[0]][:: len(SEEDS)] == [("bm3", "content"), ("mgcn", "content")]
    assert not runs.reused and not runs.skipped


def test_the_cli_takes_the_switch(monkeypatch):
    seen: dict[str, Any] = {}

    def stub(params, settings, log=None):
        seen["params"] = params
        raise PipelineError("stopped before any work")

    monkeypatch.setattr(cli_job, "run_study", stub)
    env = {"COLUMNS": "200"}
    assert "--insertions" in CliRunner().invoke(app, ["study", "--help"], env=env).output
    CliRunner().invoke(app, ["study", "--insertions", "none"], env=env)
    assert seen["params"].insertions is None
    CliRunner().invoke(app, ["study", "--insertions", "forward,content"], env=env)
    assert seen["params"].insertions == ["forward", "content"]


def test_an_inert_arm_reads_inert_before_collapsed():
    """An adapter no term reaches never trains: its gate stays near 0.5 with no spread, which the
    collapse rule also flags; the reading names the cause instead (RunRecord.befa_inert)."""
    from pipeline.study.report.insertions import reading
    from pipeline.study.rows import InsertionArmRow

    row = InsertionArmRow(
        model="freedom", insertion="loss", metric="recall@20", mean=0.35, std=0.0, seeds=3, base_mean=0.35,
        base_std=0.0, relative_gain=0.0, adapter_off=True, collapsed=["image"], inert="reg = 0 skips the terms",
    )  # fmt: skip
    assert reading(row).startswith("BeFA is inert (reg = 0 skips the terms)")
    assert "collapsed" in reading(row.model_copy(update={"inert": None}))
