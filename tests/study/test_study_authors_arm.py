"""LATTICE as the authors ran it (pipeline.study.authors_arm): the phase queues base LATTICE, MGCN's
authors skeleton + BeFA and that skeleton with the purifier gate for every seed, the (b) and (c)
configurations differ in the gate alone, three paired comparisons Holm-adjusted together, the
report's section in markdown and HTML, and the switch.

Training is replaced by a fake ``train_model`` (each arm a known per-user Recall@20 and NDCG@20);
the study runner, its run cache and the phase itself are the real ones.
"""

from __future__ import annotations

from html import unescape
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

import pipeline.study.runner as runner_module
from models import get_model_class, make_config
from pipeline.study.authors_arm import EXPERIMENT, authors_arm_phase, authors_arm_result
from pipeline.study.params import StudyParams
from pipeline.study.phases import StudyContext
from pipeline.study.report.page import render_html
from pipeline.study.report.tables import StudyData
from pipeline.study.report.write import render_markdown
from pipeline.study.runner import RunSpec, StudyRunner
from pipeline.study.stats import holm
from pipeline.training.record import PER_USER, EpochLog, RunRecord
from tests.study_data import study_data, tiny_study_params

SEEDS = [1, 2, 3]
USERS = 40
LATTICE_WIN = {"embedding_dim": 8, "adapter": "none", "lr": 5e-4, "lambda_coeff": 0.9}
MGCN_BEFA_WIN = {"embedding_dim": 8, "adapter": "befa", "lr": 5e-3, "cl_weight": 0.1, "befa.t": 2.0}
SEARCHES = {
    ("lattice", "none"): {"winner_overrides": LATTICE_WIN},
    ("mgcn", "none"): {"winner_overrides": {"embedding_dim": 8, "adapter": "none", "lr": 1e-4}},
    ("mgcn", "befa"): {"winner_overrides": MGCN_BEFA_WIN},
}


def arm_of(model: str, config: dict[str, Any]) -> str:
    if model == "lattice":
        return "lattice"
    return "authors_befa" if config["adapter"] == "befa" else "authors_purifier"


# per-user Recall@20 of each arm: (b) the best, (c) in between, (a) the lowest
LEVEL = {"lattice": 0.20, "authors_purifier": 0.24, "authors_befa": 0.30}


def per_user_values(arm: str, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed * 100 + USERS).uniform(-0.05, 0.05, USERS)  # shared by the arms: paired
    return LEVEL[arm] * (1 + 0.1 * np.arange(USERS) / USERS) + noise  # arm - reference > 0, varying by user


def fake_train_model(catalog, split, features, model, overrides, run_dir, seed, **_):
    """A finished run: its config validated as the trainer would, per-user metrics known to the test."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = make_config(get_model_class(model), overrides).model_dump(mode="json")
    recall = per_user_values(arm_of(model, config), seed)
    frame = pd.DataFrame({"part": "test", "user_idx": np.arange(USERS), "recall@20": recall, "ndcg@20": recall / 2})
    frame.to_parquet(run_dir / PER_USER)
    test = {"recall@20": float(recall.mean()), "ndcg@20": float(recall.mean() / 2)}
    rec = RunRecord(model=model, config=config, seed=seed, device="cpu", split_id="s", status="max_epochs")
    rec.epochs.append(EpochLog(epoch=0, loss=0.0, lr=config["lr"], train_s=0.0, eval_s=0.0, valid=test))
    rec.best_epoch, rec.best_valid, rec.test = 0, test, test
    rec.save(run_dir)


@pytest.fixture
def fake_training(monkeypatch):
    monkeypatch.setattr(runner_module, "train_model", fake_train_model)


def context(folder: Path, **changes: Any) -> StudyContext:
    params = StudyParams(**{"models": ["lattice", "mgcn"], "focus_model": "mgcn", "seeds": SEEDS, **changes})
    mods = {"image": "snap-i", "text": "snap-t"}
    features = SimpleNamespace(features=dict.fromkeys(mods), snapshots=mods, subset=lambda m: None)
    runner = StudyRunner(params, SimpleNamespace(home=folder), folder, "catalog", features, lambda msg: None)
    split = SimpleNamespace(path="split.parquet")
    return StudyContext(params, None, folder, lambda msg: None, None, None, split, None, features, runner)  # type: ignore[arg-type]


def test_the_phase_queues_the_three_arms_for_every_seed_and_reuses_the_main_lattice_runs(tmp_path, fake_training):
    ctx = context(tmp_path)
    main_lattice = RunSpec(
        model="lattice",
        overrides=LATTICE_WIN,
        modalities=["image", "text"],
        split="split.parquet",
        seed=SEEDS[0],
        experiment="main",
        setting="main",
    )
    ctx.runner.run_many([main_lattice])  # the main table trained LATTICE's winner with the first seed
    authors = authors_arm_phase(ctx, SEARCHES)
    specs = [spec for spec, _, _ in ctx.queued]
    assert [(s.setting, s.model, s.seed) for s in specs] == [
        (arm, model, seed)
        for arm, model in (("lattice", "lattice"), ("authors_befa", "mgcn"), ("authors_purifier", "mgcn"))
        for seed in SEEDS
    ]
    assert {s.experiment for s in specs} == {EXPERIMENT} and all(s.modalities == ["image", "text"] for s in specs)
    # (a) LATTICE's search winner; (b) and (c) the MGCN +BeFA winner's shared keys, (b) its befa.* too
    shared = {"embedding_dim": 8, "lr": 5e-3, "cl_weight": 0.1}
    assert authors.configurations == {
        "lattice": LATTICE_WIN,
        "authors_befa": {**shared, "adapter": "befa", "befa.t": 2.0, "befa.variant": "authors"},
        "authors_purifier": {**shared, "adapter": "none", "skeleton": "authors"},
    }
    assert (
        "+BeFA search winner" in authors.sources["authors_purifier"] and "search winner" in authors.sources["lattice"]
    )
    befa, control = (make_config("mgcn", authors.configurations[k]) for k in ("authors_befa", "authors_purifier"))
    assert befa.authors_skeleton and control.authors_skeleton and (befa.adapter, control.adapter) == ("befa", "none")
    drop = {"adapter", "befa", "skeleton"}
    assert {k: v for k, v in befa.model_dump().items() if k not in drop} == {
        k: v for k, v in control.model_dump().items() if k not in drop
    }  # the same hyper-parameters: (b) vs (c) is the gate alone

    ctx.run_batch()
    assert ctx.runner.trained == 1 + 8 and ctx.runner.reused == 1  # the main table's LATTICE run is not retrained
    assert {k: [r.seed for r in recs] for k, recs in authors.runs.items()} == dict.fromkeys(authors.runs, SEEDS)
    rows = pd.DataFrame(ctx.rows)
    test = rows[(rows["split"] == "test") & (rows["metric"] == "recall@20")]
    assert len(test) == 9 and set(test["experiment"]) == {EXPERIMENT}
    assert test.groupby(["setting", "adapter"]).size().to_dict() == {
        ("authors_befa", "befa"): 3,
        ("authors_purifier", "none"): 3,
        ("lattice", "none"): 3,
    }


def test_the_comparisons_and_the_report_section(tmp_path, fake_training):
    ctx = context(tmp_path)
    authors = authors_arm_phase(ctx, SEARCHES)
    ctx.run_batch()
    result = authors_arm_result(authors, "user_mean", 0.05)
    assert [(r.arm, r.metric, r.seeds) for r in result.arms] == [
        (arm, metric, 3)
        for arm in ("lattice", "authors_befa", "authors_purifier")
        for metric in ("recall@20", "ndcg@20")
    ]
    lattice = next(r for r in result.arms if r.arm == "lattice" and r.metric == "recall@20")
    assert lattice.mean == pytest.approx(np.mean([per_user_values("lattice", s).mean() for s in SEEDS]))
    assert [(c.comparison, c.metric) for c in result.comparisons] == [
        (c, m) for c in ("(b) vs (a)", "(b) vs (c)", "(c) vs (a)") for m in ("recall@20", "ndcg@20")
    ]
    assert [c.p_wilcoxon_holm for c in result.comparisons] == holm([c.test.p_wilcoxon for c in result.comparisons])
    means = {(r.arm, r.metric): r.mean for r in result.arms}
    for c in result.comparisons:
        assert c.test.mean_befa == pytest.approx(means[(c.arm, c.metric)])  # "befa" is the compared arm
        assert c.test.mean_base == pytest.approx(means[(c.reference, c.metric)])
        assert c.relative_gain == pytest.approx(means[(c.arm, c.metric)] / means[(c.reference, c.metric)] - 1)
        assert c.test.wins == USERS and c.significant  # every user higher: each arm beats its reference
    isolates = {c.comparison: c.isolates for c in result.comparisons}
    assert "adapter on the authors' skeleton" in isolates["(b) vs (c)"]
    assert "change of architecture" in isolates["(c) vs (a)"] and "together" in isolates["(b) vs (a)"]

    data = study_data(authors_arm=result)
    assert StudyData.model_validate_json(data.model_dump_json()).authors_arm == result  # study.json round trip
    empty = pd.DataFrame(columns=["experiment"])
    md, html = render_markdown(data, empty, {}), unescape(render_html(data, empty, {}))
    gain = result.comparisons[2].relative_gain  # (b) vs (c), recall@20
    for text in (md, html):
        assert "LATTICE as the authors ran it" in text and "(c) the same skeleton with MGCN's plain purifier" in text
        assert "(b) vs (c) isolates the adapter on the authors' skeleton" in text
        assert "(c) vs (a) isolates the change of architecture" in text
        assert f"the adapter on the authors' skeleton ((b) vs (c)): {gain * 100:+.2f}%" in text
        assert "(b) authors' skeleton +BeFA (their LATTICE_BeFA)" in text and '"skeleton": "authors"' in text
    without = study_data()
    assert "LATTICE as the authors ran it" not in render_markdown(without, empty, {})
    assert "authors-arm" not in render_html(without, empty, {})
    older = json_without_authors_arm(data)
    assert StudyData.model_validate(older).authors_arm is None  # a study.json written before the arm existed


def json_without_authors_arm(data: StudyData) -> dict[str, Any]:
    raw = data.model_dump(mode="json")
    raw.pop("authors_arm")
    return raw


def test_the_switch(tmp_path, fake_training):
    assert StudyParams(models=["lattice", "mgcn"], focus_model="mgcn").runs_authors_arm  # auto: LATTICE compared
    assert not StudyParams(models=["freedom", "mgcn"]).runs_authors_arm  # auto: no LATTICE
    assert not StudyParams(models=["lattice"], focus_model="lattice", authors_arm="off").runs_authors_arm
    assert StudyParams(models=["freedom"], authors_arm=True).authors_arm == "on"
    assert StudyParams(models=["lattice"], focus_model="lattice", authors_arm=False).authors_arm == "off"
    with pytest.raises(ValueError):
        StudyParams(authors_arm="sometimes")

    off = context(tmp_path / "off", authors_arm="off")
    assert authors_arm_phase(off, SEARCHES) is None and off.queued == []

    # on without LATTICE or MGCN searched: every arm from its defaults, under the study's fixed overrides
    on = context(tmp_path / "on", models=["freedom"], focus_model="freedom", authors_arm="on")
    on.params.model_overrides["*"] = {"embedding_dim": 8}
    authors = authors_arm_phase(on, {})
    assert len(on.queued) == 3 * len(SEEDS)
    assert authors.configurations["lattice"] == {"embedding_dim": 8, "adapter": "none"}
    assert authors.configurations["authors_purifier"] == {"embedding_dim": 8, "adapter": "none", "skeleton": "authors"}
    assert all("defaults" in source for source in authors.sources.values())


def test_the_tiny_study_params_turn_it_on_and_the_cold_study_off(tmp_path):
    cat = SimpleNamespace(ingest_options=lambda: {})
    assert StudyParams(**tiny_study_params(cat)).runs_authors_arm  # lattice is among the tiny study's models
    assert not StudyParams(**tiny_study_params(cat, models=["freedom"])).runs_authors_arm
