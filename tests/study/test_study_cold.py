"""The study's item cold-start phase and its resumability: a study stopped after some runs
continues where it stopped, without retraining the runs that finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.settings import get_settings
from pipeline.study.run import run_study
from tests.flows_data import make_small_catalog
from tests.study_data import tiny_study_params


class _Killed(RuntimeError):
    pass


def _params(cat):
    # one model, one seed, one trial: search (2 runs, reused by the main table) + cold items (2 runs)
    return tiny_study_params(
        cat,
        name="tiny-cold",
        models=["freedom"],
        seeds=[1],
        max_trials=1,
        sweep_t=None,
        modality_sets=None,
        train_fractions=None,
        cold_fraction=0.25,
        inspect_items=3,
        inspect_users=1,
    )


def test_a_killed_study_resumes_without_retraining_and_reports_cold_items(tmp_path, datasets_root):
    cat = make_small_catalog(tmp_path / "source", datasets_root)
    settings = get_settings(home=tmp_path / "home", datasets_root=datasets_root)
    trained: list[str] = []

    def kill_in_the_cold_phase(message: str) -> None:
        if message.startswith("  ") and " seed " in message:  # the runner's line after each trained run
            trained.append(message)
            if message.startswith("  cold_items"):  # the first cold run finished: kill the study
                raise _Killed(message)

    with pytest.raises(_Killed):
        run_study(_params(cat), settings, log=kill_in_the_cold_phase)
    runs_dir = settings.runs_dir / "studies" / "tiny-cold" / "runs"
    finished = {p.parent: p.read_text() for p in runs_dir.glob("*/run.json")}
    assert len(finished) == len(trained) >= 3  # search (base, +BeFA) and one cold run at least

    result = run_study(_params(cat), settings)
    total = list(runs_dir.glob("*/run.json"))
    assert len(total) == len(finished) + 1  # the cold +BeFA run the kill prevented
    assert result.runs_trained == 1 and result.runs_reused >= len(finished)
    for run_dir, text in finished.items():  # the finished runs were reused, not rewritten
        assert (run_dir / "run.json").read_text() == text

    data = json.loads((Path(result.folder) / "study.json").read_text())
    cold = data["cold_items"]
    assert cold["split_id"].startswith("cold-items-f25-s2024") and cold["cold_fraction"] == 0.25
    assert {(g["model"], g["metric"]) for g in cold["gains"]} == {("freedom", "recall@20"), ("freedom", "ndcg@20")}
    assert {s["model"] for s in cold["significance"]} == {"freedom"}
    groups = {(g["experiment"], g["group"]) for g in data["item_groups"]}
    assert {("cold_items", "cold"), ("cold_items", "warm"), ("main", "warm"), ("main", "long_tail")} <= groups
    assert ("main", "cold") not in groups  # the main (random) split has no cold items
    # the cold-items split's cold and warm settings (pipeline.evaluation.settings) join the table, tested per user
    assert {("cold_items", "cold_setting"), ("cold_items", "warm_setting")} <= groups
    assert not {g for g in groups if g[0] == "main" and g[1].endswith("_setting")}
    md = (Path(result.folder) / "report.md").read_text()
    assert "Item cold start" in md and "By item group" in md


def test_the_full_benchmark_states_the_protocol(tmp_path, datasets_root):
    from benchmarks.bench_study_full import build_params, parse_args
    from pipeline.study.params import validate_study

    params = validate_study(build_params(parse_args([])), get_settings(home=tmp_path, datasets_root=datasets_root))
    assert (params.epochs, params.patience, params.seeds, params.experiment_seeds) == (
        1000,
        10,
        [999, 1000, 1001],
        None,
    )
    assert params.models == ["bm3", "lattice", "freedom", "mgcn"] and params.dataset == "movielens-100k-posters"
    assert params.encoder == {"image": "effnet:lite2", "text": "minilm"} and params.max_trials == 4
    assert 0.25 in params.train_fractions and params.cold_fraction == 0.2
