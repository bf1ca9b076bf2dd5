"""The study's search (pipeline.study.tuning): seeded TPE over lr and the model's grid in both
arms, the default configuration first, the same budget for base and +BeFA, pruning that the
run cache never mistakes for a finished run, selection on VALID only, and the report's
selection-bias line from the trials' TEST metrics.

Training is replaced by a fake ``train_model`` (each configuration a known valid curve and a
test metric that ranks the configurations otherwise); the study runner, its run cache and the
search itself are the real ones.
"""

from __future__ import annotations

import json
from html import unescape
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

import pipeline.study.runner as runner_module
import pipeline.study.tuning as tuning
from models import get_model_class, make_config
from pipeline.study.params import StudyParams
from pipeline.study.report.page import render_html
from pipeline.study.report.tables import StudyData
from pipeline.study.report.write import render_markdown
from pipeline.study.runner import PRUNED, StudyRunner
from pipeline.study.search_space import search_space, trial_budget
from pipeline.study.selection_bias import gains_if_picked_on_test
from pipeline.training.record import LAST, PER_USER, EpochLog, RunRecord
from tests.study_data import study_data

KEYS = [("freedom", "none"), ("freedom", "befa")]
LR = [1e-4, 5e-4, 1e-3, 5e-3]


def quality(config: dict[str, Any]) -> float:
    """Final valid Recall@20 of a configuration: higher lr and reg and t are better (known to the test)."""
    q = 0.10 + 0.02 * LR.index(config["lr"]) + 10 * config["reg"] + 0.01 * config["edge_dropout"]
    if config["adapter"] == "befa":
        q += 0.002 * config["befa"]["t"]
    return q


def held_out_value(config: dict[str, Any]) -> float:
    """Test Recall@20: ranks the configurations the other way round from valid."""
    return 0.5 - quality(config)


def fake_train_model(catalog, split, features, model, overrides, run_dir, seed, max_epochs, resume, on_epoch_end, **_):
    """Writes a run folder as the trainer does: record after each epoch, then the hook, then the end."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = make_config(get_model_class(model), overrides).model_dump(mode="json")
    rec = (
        RunRecord.load(run_dir)
        if resume
        else RunRecord(model=model, config=config, seed=seed, device="cpu", split_id="s")
    )
    rec.status, q = "running", quality(config)
    for epoch in range(len(rec.epochs), max_epochs):
        valid = {"recall@20": q * (1 - 0.5 ** (epoch + 1)), "ndcg@20": q / 2}
        rec.epochs.append(EpochLog(epoch=epoch, loss=0.0, lr=config["lr"], train_s=0.0, eval_s=0.0, valid=valid))
        rec.best_epoch, rec.best_valid = epoch, valid
        rec.test = {"recall@20": held_out_value(config), "ndcg@20": held_out_value(config) / 2, "only_on_test@20": 1.0}
        rec.save(run_dir)
        (run_dir / LAST).write_text("")
        if on_epoch_end is not None:
            on_epoch_end(epoch, rec)
    rec.status = "max_epochs"
    rec.save(run_dir)
    (run_dir / PER_USER).write_text("")


def make_runner(folder: Path, **changes: Any) -> StudyRunner:
    fields = {"models": ["freedom"], "seeds": [7], "epochs": 6, "patience": 10, "max_trials": 6, "prune_warmup": None}
    params = StudyParams(**{**fields, **changes})
    features = SimpleNamespace(snapshots={}, subset=lambda mods: None)
    settings = SimpleNamespace(home=folder)
    return StudyRunner(params, settings, folder, "catalog", features, lambda msg: None)


@pytest.fixture
def fake_training(monkeypatch):
    monkeypatch.setattr(runner_module, "train_model", fake_train_model)


def search(folder: Path, **changes: Any):
    runner = make_runner(folder, **changes)
    return runner, tuning.run_searches(runner, KEYS, "split.parquet", [])


def test_the_search_is_seeded_with_the_default_first_lr_in_both_arms_and_the_same_budget(tmp_path, fake_training):
    _, first = search(tmp_path / "a")
    _, again = search(tmp_path / "b")
    _, other = search(tmp_path / "c", search_seed=5)
    params = {key: [t["params"] for t in s["trials"]] for key, s in first.items()}
    assert params == {key: [t["params"] for t in s["trials"]] for key, s in again.items()}  # same seed, same trials
    assert params != {key: [t["params"] for t in s["trials"]] for key, s in other.items()}
    base, befa = first[("freedom", "none")], first[("freedom", "befa")]
    assert len(base["trials"]) == len(befa["trials"]) == base["budget"] == befa["budget"] == 6
    for s in (base, befa):
        assert s["grid"]["lr"] == LR and s["sampler"] == {"name": "TPESampler", "seed": 0, "n_startup_trials": 3}
        assert s["trials"][0]["point"] == {} and s["trials"][0]["overrides"] == {"adapter": s["adapter"]}
        assert len({t["params"]["lr"] for t in s["trials"]}) > 1  # lr is searched in both arms
        assert len({json.dumps(t["params"], sort_keys=True) for t in s["trials"]}) == 6  # no configuration twice
    assert befa["trials"][0]["params"] == {
        "lr": 1e-3,
        "edge_dropout": 0.8,
        "reg": 1e-3,
        "befa.t": 1.0,
        "befa.dropout": 0.3,
    }
    assert set(befa["grid"]) == {"lr", "edge_dropout", "reg", "befa.t", "befa.dropout"}
    assert set(base["grid"]) == {"lr", "edge_dropout", "reg"}


def test_budget_is_the_same_for_both_arms_and_capped_by_the_base_space():
    p = StudyParams(models=["mgcn"], focus_model="mgcn", max_trials=50)
    assert trial_budget(p, "mgcn") == 4 * 3  # lr x cl_weight, for base and +BeFA alike
    none = StudyParams(models=["mgcn"], focus_model="mgcn", grid="none")
    assert trial_budget(none, "mgcn") == 1  # defaults only, both arms
    custom = StudyParams(models=["freedom"], befa_grid={"befa.t": [0.5, 2.0]}, lr_grid=None)
    assert search_space(custom, "freedom", "befa")["befa.t"] == [0.5, 2.0, 1.0]  # the default joins the grid
    assert "lr" not in search_space(custom, "freedom", "none")


def test_pruned_trials_are_recorded_never_reused_as_finished_and_replayed_the_same(tmp_path, fake_training):
    runner, first = search(tmp_path, prune_warmup=1)
    states = {key: [t["state"] for t in s["trials"]] for key, s in first.items()}
    pruned = [t for s in first.values() for t in s["trials"] if t["state"] == "pruned"]
    assert pruned and all(s[0] == "complete" for s in states.values())  # the default trial is never pruned
    for s in first.values():
        assert s["trials"][s["winner"]]["state"] == "complete"
    for t in pruned:
        rec = RunRecord.load(t["run_dir"])
        assert rec.status == PRUNED and len(rec.epochs) < 6 and t["best_epoch"] == len(rec.epochs) - 1
        assert not runner._finished(Path(t["run_dir"]))  # never handed out as a finished run

    again_runner, again = search(tmp_path, prune_warmup=1)  # a rerun: replayed from the cache
    assert again_runner.trained == 0 and again_runner.reused == sum(len(s["trials"]) for s in first.values())
    for key in KEYS:
        assert {**again[key], "seconds": 0} == {**first[key], "seconds": 0}  # the same trials, states and winner

    # a later phase that needs the pruned configuration resumes its run to the end...
    spec = runner_module.RunSpec(
        model="freedom",
        overrides=pruned[0]["overrides"],
        modalities=[],
        split="split.parquet",
        seed=7,
        experiment="main",
        setting="main",
    )
    rec = make_runner(tmp_path, prune_warmup=1).run_many([spec])[0]
    assert rec.status == "max_epochs" and len(rec.epochs) == 6
    # ...and the search, replaying that finished run's epochs, still prunes the trial where it did
    _, third = search(tmp_path, prune_warmup=1)
    assert {k: [t["state"] for t in s["trials"]] for k, s in third.items()} == states


def test_selection_sees_valid_only_and_the_bias_line_reads_the_trials_test(tmp_path, fake_training, monkeypatch):
    seen: list[list[dict[str, float]]] = []
    real = tuning.select_on_valid
    monkeypatch.setattr(tuning, "select_on_valid", lambda metrics, *a: seen.append(list(metrics)) or real(metrics, *a))
    _, searches = search(tmp_path)
    assert len(seen) == 2
    for metrics, s in zip(seen, searches.values()):
        assert metrics == [t["valid"] for t in s["trials"]]  # the trials' valid metrics, nothing else
        assert all("only_on_test@20" not in m for m in metrics)
        scores = [m["recall@20"] for m in metrics]
        assert scores[s["winner"]] == max(scores)
        assert all("test" not in t for t in s["trials"])

    rows = gains_if_picked_on_test(searches, ["freedom"])
    assert [r.metric for r in rows] == ["recall@20", "ndcg@20"]
    r = rows[0]
    tests = {
        a: [RunRecord.load(t["run_dir"]).test["recall@20"] for t in searches[("freedom", a)]["trials"]]
        for a in ("none", "befa")
    }
    winners = {a: searches[("freedom", a)]["winner"] for a in ("none", "befa")}
    assert (r.test_picked_base, r.test_picked_befa) == (max(tests["none"]), max(tests["befa"]))
    assert (r.valid_picked_base, r.valid_picked_befa) == (
        tests["none"][winners["none"]],
        tests["befa"][winners["befa"]],
    )
    assert r.valid_picked_gain == pytest.approx(r.valid_picked_befa / r.valid_picked_base - 1)
    assert r.test_picked_gain == pytest.approx(r.test_picked_befa / r.test_picked_base - 1)
    assert r.trials_base == r.trials_befa == 6 and r.test_picked_base != r.valid_picked_base

    data = study_data(selection_bias=rows)
    md = render_markdown(data, pd.DataFrame(columns=["experiment"]), {})
    html = unescape(render_html(data, pd.DataFrame(columns=["experiment"]), {}))
    gain = f"{r.test_picked_gain * 100:+.2f}% Recall@20"
    for text in (md, html):
        assert "Selection bias" in text and "picked on TEST, as the paper's code does" in text and gain in text
        assert f"{r.valid_picked_gain * 100:+.2f}%" in text and "TPE sampler seeded with 0" in text


def test_an_older_study_json_loads_and_renders_without_the_new_fields():
    data = json.loads(study_data().model_dump_json())
    data.pop("selection_bias")
    data["searches"] = [
        {
            "model": "freedom",
            "adapter": "none",
            "trials": 4,
            "grid_size": 8,
            "winner": {"reg": 0.001},
            "winner_valid_r20": 0.1,
            "seconds": 3.0,
        }
    ]
    old = StudyData.model_validate(data)
    assert old.selection_bias == [] and old.searches[0].pruned == 0 and old.searches[0].winner_params == {}
    md = render_markdown(old, pd.DataFrame(columns=["experiment"]), {})
    assert '| freedom | base | 4 | 0 | 8 | {"reg": 0.001} |' in md and "Selection bias" not in md
