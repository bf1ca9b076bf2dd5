"""Selection on VALID only (spec section 1), and a plain grid search that uses it.

``select_on_valid`` (with ``grid_points``, from the search core ``pipeline.training.search``,
which ``befa run``'s fit shares) is the one selection step of the study: it is only ever handed the
trials' valid metrics. The study's own search (``pipeline.study.tuning``: seeded TPE with
pruning, through optuna) picks its winners with it; ``grid_search`` trains one run per point
of the Cartesian product of a dict of lists, picks the point with the best VALID Recall@20
(at each run's best valid epoch; ties go to the earlier point in grid order) and reports the
TEST metrics of the winner alone.

The reference toolbox picks its grid winner by the test metric, a leak. Here test metrics
of the losers are never read into the result (they stay in their own run folders). The one
reader of the search trials' test metrics is the report's selection-bias line
(``pipeline.study.selection_bias``), after every decision is made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pipeline.evaluation.metrics import SELECTION_METRIC
from pipeline.training.search import grid_points, select_on_valid
from storage.atomic import write_json

__all__ = ["GridResult", "Trial", "grid_points", "grid_search", "point_name", "select_on_valid"]


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
