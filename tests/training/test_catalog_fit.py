"""``befa run``'s fit (pipeline.training.catalog_fit): the study's search core on VALID, seeded,
the default configuration first, a budget in trials or minutes, keys the user set left alone,
pruned trials recorded, the winner made the run (record.fit, the floor check re-judged), and no
test metric read for the choice.

Most tests train with a fake trainer that writes run folders as the real one does (each
configuration a known valid curve, test metrics ranking the configurations the other way);
the last one fits with the real trainer on a tiny sparse catalog and re-evaluates the winner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models import get_model_class, make_config
from pipeline.data.catalog import build_catalog
from pipeline.data.splits import split_random
from pipeline.training.api import evaluate_run, train_model
from pipeline.training.catalog_fit import FIT_DIR, FIT_PRUNE_WARMUP, FitBudget, fit_space, search_fit
from pipeline.training.floor_check import FloorCheck
from pipeline.training.record import BEST, PER_USER, EpochLog, RunRecord
from pipeline.training.search import DEFAULT_LR_GRID

EPOCHS = FIT_PRUNE_WARMUP + 6


def quality(config: dict[str, Any]) -> float:
    """Peak valid Recall@20 of a configuration: higher lr, fewer layers and more reg are better."""
    return 0.05 + 0.01 * DEFAULT_LR_GRID.index(config["lr"]) - 0.005 * config["num_layers"] + 5 * config["reg"]


class FakeTrainer:
    """A trainer writing a run folder per configuration; counts the runs it trained."""

    def __init__(self) -> None:
        self.trained: list[dict[str, Any]] = []

    def __call__(self, overrides: dict[str, Any], run_dir: Path, hook: Any) -> None:
        config = make_config(get_model_class("lightgcn"), overrides).model_dump(mode="json")
        self.trained.append(overrides)
        run_dir.mkdir(parents=True, exist_ok=True)
        q = quality(config)
        rec = RunRecord(model="lightgcn", config=config, seed=1, device="cpu", split_id="s", status="running")
        rec.floor = FloorCheck(floor_valid=0.2, floor_test=0.2)  # every configuration ends below it
        for epoch in range(EPOCHS):
            valid = {"recall@20": q * min(1.0, (epoch + 1) / 8)}
            rec.epochs.append(EpochLog(epoch=epoch, loss=0.5, lr=config["lr"], train_s=0, eval_s=0, valid=valid))
            if epoch < 8:
                rec.best_epoch, rec.best_valid = epoch, valid
                rec.test = {"recall@20": 1.0 - q}  # ranks the configurations the other way round
            rec.save(run_dir)
            hook(epoch, rec)
        rec.status = "early_stopped"
        rec.floor.run_valid, rec.floor.below, rec.floor.tried = rec.best_valid["recall@20"], True, "no search"
        rec.save(run_dir)
        for name in (BEST, PER_USER):
            (run_dir / name).write_text(str(q))


def fit(
    tmp: Path, trials: int = 6, minutes: float | None = None, seed: int = 7, **fixed: Any
) -> tuple[RunRecord, FakeTrainer]:
    trainer = FakeTrainer()
    rec = search_fit(
        trainer, "lightgcn", {"adapter": "none", **fixed}, tmp, FitBudget(trials, minutes, seed), "asked", log=print
    )
    return rec, trainer


def test_the_fit_is_seeded_default_first_and_adopts_the_valid_winner(tmp_path):
    rec, trainer = fit(tmp_path / "a")
    again, _ = fit(tmp_path / "b")
    other, _ = fit(tmp_path / "c", seed=8)
    f = rec.fit
    assert trainer.trained[0] == {"adapter": "none"} and f.trials[0].point == {}  # the defaults first
    assert len(f.trials) == f.budget == 6 and f.space_size == 4 * 3 * 3 and f.stopped_by == "budget"
    assert [t.point for t in f.trials] == [t.point for t in again.fit.trials]  # same seed, same trials
    assert [t.point for t in f.trials] != [t.point for t in other.fit.trials]
    complete = [t for t in f.trials if t.state == "complete"]
    assert f.winner_valid == max(t.valid for t in complete) and f.winner_trial.state == "complete"
    assert f.default_valid == pytest.approx(quality(make_config(get_model_class("lightgcn"), {}).model_dump()))
    # the run folder is the winner's run: its files, its config, and the fit on its record
    winner_dir = Path(f.winner_trial.run_dir)
    assert winner_dir.parent == tmp_path / "a" / FIT_DIR
    assert (tmp_path / "a" / BEST).read_text() == (winner_dir / BEST).read_text()
    assert rec.config == RunRecord.load(winner_dir).config and RunRecord.load(tmp_path / "a").fit == f
    # the choice saw valid only: the winner has the worst test value of the complete trials
    tests = [RunRecord.load(t.run_dir).test["recall@20"] for t in complete]
    assert rec.test["recall@20"] == min(tests)
    # its floor check was judged again, knowing what was tried
    assert rec.floor.below and rec.floor.tried.startswith("a search on valid (6 of 36 configurations")
    assert "Tried: a search on valid" in rec.floor.line("lightgcn")


def test_pruned_trials_are_recorded_and_never_win(tmp_path):
    rec, _ = fit(tmp_path, trials=12)
    states = [t.state for t in rec.fit.trials]
    assert "pruned" in states and states[0] == "complete"
    for t in rec.fit.trials:
        if t.state == "pruned":
            assert FIT_PRUNE_WARMUP <= t.epochs < EPOCHS and RunRecord.load(t.run_dir).status == "pruned"
    assert rec.fit.winner_trial.state == "complete" and rec.fit.pruner["n_warmup_steps"] == FIT_PRUNE_WARMUP


def test_keys_the_user_set_stay_fixed_and_budgets_stop_the_search(tmp_path):
    space = fit_space("lightgcn", {"adapter": "none", "reg": 1e-3, "lr": 5e-3})
    assert set(space) == {"num_layers"}  # lr and reg were set with --set: not searched
    rec, trainer = fit(tmp_path / "small", trials=10, reg=1e-3, lr=5e-3)
    assert len(rec.fit.trials) == 3 and rec.fit.stopped_by == "space"  # the whole space: 3 layer counts
    assert all(o["reg"] == 1e-3 and o["lr"] == 5e-3 for o in trainer.trained)
    befa = fit_space("freedom", {"adapter": "befa", "befa.t": 2.0})
    assert "befa.dropout" in befa and "befa.t" not in befa and "lr" in befa
    timed, _ = fit(tmp_path / "timed", trials=10, minutes=1e-9)
    assert len(timed.fit.trials) == 1 and timed.fit.stopped_by == "minutes"  # one trial, then out of time


def test_a_real_fit_leaves_a_run_that_reevaluates_to_its_record(tmp_path):
    rng = np.random.default_rng(0)
    n_users, n_items = 150, 300
    p = 1.0 / np.arange(1, n_items + 1) ** 1.1
    rows = [(u, i) for u in range(n_users) for i in rng.choice(n_items, 4, replace=False, p=p / p.sum())]
    items = pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(n_items)], "title": "t", "text": "x", "image": None, "image_hash": None}
    )
    inter = pd.DataFrame(
        {"user_id": [f"u{u}" for u, _ in rows], "item_id": [f"i{i}" for _, i in rows], "rating": 1.0, "timestamp": 0}
    )
    catalog = build_catalog("sparse", items, inter)
    catalog.save(tmp_path / "catalog")
    split = split_random(catalog, seed=1).save(tmp_path / "catalog" / "splits")

    def trial(overrides: dict[str, Any], run_dir: Path, hook: Any) -> Any:
        return train_model(tmp_path / "catalog", split, None, "lightgcn", overrides={**overrides, "embedding_dim": 8},
                           run_dir=run_dir, max_epochs=3, patience=3, quiet=True, num_threads=1, overwrite=True,
                           on_epoch_end=hook)  # fmt: skip

    rec = search_fit(trial, "lightgcn", {"adapter": "none"}, tmp_path / "run", FitBudget(2, None, 999), "asked")
    assert len(rec.fit.trials) == 2 and rec.floor is not None and rec.status in ("max_epochs", "early_stopped")
    again = evaluate_run(tmp_path / "run")
    assert again["test"]["recall@20"] == pytest.approx(rec.test["recall@20"], abs=1e-6)
