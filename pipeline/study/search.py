"""Hyper-parameter search, selected on VALID only (spec section 1).

The study's search (:func:`run_search`) tries, per model and adapter, the default
configuration and then a seeded sample of the grid (:func:`search_plan`: base and +BeFA
get the same model hyper-parameters trial by trial, +BeFA adding its own t and dropout).
``grid_search`` trains one run per point of the Cartesian product of a dict of lists,
picks the point with the best VALID Recall@20 (at each run's best valid epoch; ties go
to the earlier point in grid order) and reports the TEST metrics of the winner alone.

The reference toolbox picks its grid winner by the test metric, a leak. Here the
selection step is a separate function, ``select_on_valid``, that is only ever handed
the trials' valid metrics; test metrics of the losers are never read into the result
(they stay in their own run folders, which the study must not consult either).
"""

from __future__ import annotations

import itertools
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from models import get_model_class, make_config
from pipeline.evaluation.metrics import SELECTION_METRIC
from pipeline.study.params import StudyParams, model_grid
from pipeline.study.runner import RunSpec, StudyRunner
from storage.atomic import write_json


@dataclass
class Trial:
    overrides: dict[str, Any]
    run_dir: Path
    valid: dict[str, float]  # at the run's best valid epoch
    best_epoch: int | None


@dataclass
class GridResult:
    trials: list[Trial]
    winner: int
    test: dict[str, float]  # the winner's test metrics (its best valid epoch)
    metric: str = SELECTION_METRIC
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Trial:
        return self.trials[self.winner]

    def to_dict(self) -> dict[str, Any]:
        return {
            "selection_metric": f"valid {self.metric}",
            "winner": self.winner,
            "winner_overrides": self.best.overrides,
            "winner_run": str(self.best.run_dir),
            "winner_test": self.test,
            "trials": [
                {"overrides": t.overrides, "run_dir": str(t.run_dir), "valid": t.valid, "best_epoch": t.best_epoch}
                for t in self.trials
            ],
        }


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination, keys in the given order (the last key varies fastest)."""
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"grid[{key!r}] must be a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def select_on_valid(valid_metrics: Sequence[Mapping[str, float]], metric: str = SELECTION_METRIC) -> int:
    """Index of the best trial by a VALID metric (first one wins ties). Sees nothing else."""
    if not valid_metrics:
        raise ValueError("no trials to select from")
    best_i, best_v = 0, float("-inf")
    for i, m in enumerate(valid_metrics):
        v = m.get(metric, float("nan"))
        if v > best_v:  # NaN never wins
            best_i, best_v = i, v
    return best_i


def point_name(point: Mapping[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in point.items()).replace("/", "_") or "default"


def grid_search(
    train_fn: Callable[..., Any],
    grid: Mapping[str, Sequence[Any]],
    run_root: str | Path,
    base_overrides: Mapping[str, Any] | None = None,
    metric: str = SELECTION_METRIC,
    **train_kwargs: Any,
) -> GridResult:
    """Train every grid point with ``train_fn(overrides=..., run_dir=..., **train_kwargs)``.

    ``train_fn`` is normally ``pipeline.training.trainer.train_model`` with catalog, split, features
    and model bound in ``train_kwargs``; it must return a RunResult (``.record.best_valid``,
    ``.record.test``, ``.record.best_epoch``). Writes ``<run_root>/grid.json``.
    """
    run_root = Path(run_root)
    trials: list[Trial] = []
    test_of: list[dict[str, float]] = []  # kept aside; selection never receives it
    for point in grid_points(grid):
        overrides = {**(base_overrides or {}), **point}
        run_dir = run_root / point_name(point)
        result = train_fn(overrides=overrides, run_dir=run_dir, **train_kwargs)
        record = result.record
        trials.append(
            Trial(overrides=overrides, run_dir=run_dir, valid=dict(record.best_valid), best_epoch=record.best_epoch)
        )
        test_of.append(dict(record.test))
    winner = select_on_valid([t.valid for t in trials], metric)
    result = GridResult(trials=trials, winner=winner, test=test_of[winner], metric=metric)
    write_json(run_root / "grid.json", json.loads(json.dumps(result.to_dict(), default=str)))
    return result


# -- the study's search ------------------------------------------------------------------
def search_points(grid: dict[str, list[Any]], max_trials: int, seed: int) -> list[dict[str, Any]]:
    """Default point first, then a seeded random sample of the grid, ``max_trials`` in all."""
    points = grid_points(grid) if grid else []
    rng = random.Random(seed)
    rng.shuffle(points)
    return ([{}] + points)[:max_trials]


def _resolved(model: str, overrides: dict[str, Any]) -> str:
    return make_config(get_model_class(model), overrides).model_dump_json()


def search_plan(params: StudyParams, model: str, adapter: str, spare: int = 4) -> list[dict[str, Any]]:
    """The points one search tries, in order (more than ``max_trials``: spares replace duplicates).

    Paired design: the k-th +BeFA trial uses the same model hyper-parameters as the k-th base
    trial (default first, then the same seeded sample of the model's grid), combined with
    the k-th point of a seeded sample of ``befa_grid`` (BeFA's defaults first). So both arms
    explore the same base-model configurations within the same budget, and +BeFA's extra
    freedom is only its own t and dropout."""
    n = params.max_trials * spare
    model_pts = search_points(model_grid(params, model), n, params.search_seed)
    if adapter == "none":
        return model_pts
    befa_pts = search_points(params.befa_grid, n, params.search_seed + 1)
    return [{**mp, **befa_pts[k % len(befa_pts)]} for k, mp in enumerate(model_pts)] or [{}]


def search_trials(
    p: StudyParams, model: str, adapter: str, split: str, modalities: list[str]
) -> list[tuple[dict[str, Any], RunSpec]]:
    """The trials of one (model, adapter) search, in order: (grid point, run spec), at most
    ``max_trials``, a point whose resolved configuration an earlier one has (the default may
    equal a grid point) skipped. They are independent: a phase submits them as one batch."""
    fixed = {**p.fixed_overrides(model), "adapter": adapter}
    trials: list[tuple[dict[str, Any], RunSpec]] = []
    seen = set()
    for point in search_plan(p, model, adapter):
        if len(trials) >= p.max_trials:
            break
        overrides = {**fixed, **point}
        key = _resolved(model, overrides)
        if key in seen:
            continue
        seen.add(key)
        setting = json.dumps(point) if point else "default"
        trials.append(
            (
                point,
                RunSpec(
                    model=model,
                    overrides=overrides,
                    modalities=modalities,
                    split=split,
                    seed=p.seeds[0],
                    experiment="search",
                    setting=setting,
                ),
            )
        )
    return trials


def search_result(
    p: StudyParams,
    model: str,
    adapter: str,
    trials: list[tuple[dict[str, Any], RunSpec]],
    records: list[Any],
    seconds: float,
) -> dict[str, Any]:
    """One search's winner (on VALID only) and every trial's valid metrics, from its trials' records."""
    grid = model_grid(p, model) if adapter == "none" else {**model_grid(p, model), **p.befa_grid}
    rows = [
        {
            "point": point,
            "overrides": spec.overrides,
            "valid": dict(rec.best_valid),
            "run_dir": rec.run_dir,
            "best_epoch": rec.best_epoch,
        }
        for (point, spec), rec in zip(trials, records)
    ]
    winner = select_on_valid([t["valid"] for t in rows])
    return {
        "model": model,
        "adapter": adapter,
        "grid": grid,
        "trials": rows,
        "winner": winner,
        "winner_overrides": rows[winner]["overrides"],
        "seconds": seconds,
    }


def run_search(runner: StudyRunner, model: str, adapter: str, split: str, modalities: list[str]) -> dict[str, Any]:
    """One search's trials one after another, with the ``max_minutes`` budget checked between
    them (what a time budget needs; without one, the study batches every search's trials)."""
    p = runner.params
    done, records = [], []
    start = time.perf_counter()
    for trial in search_trials(p, model, adapter, split, modalities):
        if done and p.max_minutes is not None and time.perf_counter() - start > 60 * p.max_minutes:
            runner.log(
                f"  search {model} {adapter}: time budget of {p.max_minutes} min reached after {len(done)} trials"
            )
            break
        records.append(runner.train(trial[1]))
        done.append(trial)
    return search_result(p, model, adapter, done, records, time.perf_counter() - start)
