"""The VALID-only search core, shared by the study's search (``pipeline.study.tuning``) and
``befa run``'s fit (``pipeline.training.catalog_fit``).

A search explores a **space**: config keys (dotted for nested: ``befa.t``), each with a list of
values that optuna draws as a categorical, so TPE stays on the grid and never proposes a value
between two of its points; the model's default value of a key joins its list where the grid
lacks it (:func:`space_with_defaults`), so the first trial, the default configuration, is a point
of the space that TPE learns from like any other.

- **Sampler**: TPE, seeded (:func:`make_sampler`); its first trial is the default configuration
  (enqueued), the next few its random start (:func:`tpe_startup`), the rest its suggestions.
- **Budget**: a number of trials. A suggestion whose resolved config an earlier trial already
  has is told that trial's result and not counted; after :data:`MAX_REPEATS` of them in a row a
  seeded random point not yet tried is enqueued, so a search always gets its budget (or tries
  the whole space).
- **Pruning**: each epoch's valid Recall@20 goes to a median pruner (:func:`make_pruner`); a
  pruned trial stops (its hook raises :class:`RunPruned`) and never wins. The pruner sees valid
  metrics only.
- **Selection**: :func:`select_on_valid` over the complete trials' valid metrics. No test
  metric is read here.

What trains a trial is the caller's: :class:`SpaceSearch` hands out candidates
(:meth:`SpaceSearch.ask`) and is told each one's run record (:meth:`SpaceSearch.finish`).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from models import get_model_class, make_config
from pipeline.evaluation.metrics import SELECTION_METRIC
from pipeline.training.loop import TrainingInterrupted
from pipeline.training.record import FINISHED, RunRecord

DEFAULT_LR_GRID = [1e-4, 5e-4, 1e-3, 5e-3]  # the authors' lr grid, searched in both arms
DEFAULT_BEFA_GRID: dict[str, list[Any]] = {"befa.t": [1.0, 2.0, 4.0, 8.0], "befa.dropout": [0.1, 0.3, 0.5, 0.7]}
PRIMITIVE = (type(None), bool, int, float, str)  # what optuna keeps as a categorical choice as it is
# the median pruner: complete trials before it may prune, and trials that must have reached an epoch
# for it to compare there (the pruned trial's best valid Recall@20 so far against their median)
PRUNER_STARTUP, PRUNER_MIN_TRIALS = 2, 2
MAX_REPEATS = 20  # suggestions of already-tried configurations in a row before an untried point is enqueued
PRUNED = "pruned"  # the status of a run its search pruned: ended, but not finished


class RunPruned(TrainingInterrupted):
    """Raised by a search trial's ``on_epoch_end`` hook: its pruner stops the run."""


# -- selection ----------------------------------------------------------------------------------
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


# -- the space ----------------------------------------------------------------------------------
def config_value(config: dict[str, Any], key: str) -> Any:
    """The value of a dotted config key (``befa.t``) in a dumped config."""
    value: Any = config
    for part in key.split("."):
        value = value[part]
    return value


def default_grid(model: str, adapter: str) -> dict[str, list[Any]]:
    """The grid a model is searched over by default: lr (:data:`DEFAULT_LR_GRID`), then its
    documented ``GRID`` (which may name lr itself), then for +BeFA :data:`DEFAULT_BEFA_GRID`."""
    grid = {"lr": list(DEFAULT_LR_GRID), **(getattr(get_model_class(model), "GRID", {}) or {})}
    return grid if adapter == "none" else {**grid, **DEFAULT_BEFA_GRID}


def defaults_of(model: str, fixed: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The default value of each key: the model's config under the fixed overrides."""
    config = make_config(get_model_class(model), dict(fixed)).model_dump(mode="json")
    return {key: config_value(config, key) for key in keys}


def space_with_defaults(model: str, fixed: Mapping[str, Any], grid: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
    """Config key -> the values trials draw from (the grid's, plus the default where it lacks it)."""
    defaults = defaults_of(model, fixed, list(grid))
    return {key: list(values) if defaults[key] in values else [*values, defaults[key]] for key, values in grid.items()}


def space_size(space: Mapping[str, list[Any]]) -> int:
    return math.prod(len(values) for values in space.values())


def choice(value: Any) -> Any:
    """A grid value as optuna's categorical choice (a list or a mapping as its JSON text)."""
    return value if isinstance(value, PRIMITIVE) else json.dumps(value, sort_keys=True)


def from_choice(drawn: Any, values: list[Any]) -> Any:
    """The grid value a drawn choice stands for."""
    return {json.dumps(choice(v)): v for v in values}[json.dumps(drawn)]


# -- sampler and pruner -------------------------------------------------------------------------
def tpe_startup(budget: int) -> int:
    """TPE's random start (the default trial among them): half the budget, 2 to 10 trials."""
    return min(10, max(2, budget // 2))


def make_sampler(seed: int, budget: int) -> optuna.samplers.TPESampler:
    """The seeded TPE sampler: the same trials for the same seed and results."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=tpe_startup(budget))


def make_pruner(warmup: int | None) -> optuna.pruners.BasePruner:
    """The median pruner on valid Recall@20 per epoch, after ``warmup`` epochs (none without it)."""
    if warmup is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNER_STARTUP, n_warmup_steps=warmup, n_min_trials=PRUNER_MIN_TRIALS
    )


def search_settings(seed: int, warmup: int | None, budget: int) -> dict[str, Any]:
    """The sampler and pruner as a search record states them."""
    pruner = (
        None
        if warmup is None
        else {
            "name": "MedianPruner",
            "metric": "valid recall@20",
            "n_startup_trials": PRUNER_STARTUP,
            "n_warmup_steps": warmup,
            "n_min_trials": PRUNER_MIN_TRIALS,
        }
    )
    sampler = {"name": "TPESampler", "seed": seed, "n_startup_trials": tpe_startup(budget)}
    return {"sampler": sampler, "pruner": pruner, "budget": budget}


# -- trials -------------------------------------------------------------------------------------
class TrialPruning:
    """One trial's per-epoch valid Recall@20, reported to its pruner: live, as the run's
    ``on_epoch_end`` hook, or replayed from a recorded run."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial, self.reported, self.pruned_at = trial, 0, None

    def observe(self, record: RunRecord) -> bool:
        """Report the epochs not reported yet; True once the pruner stops the trial."""
        for log in record.epochs[self.reported :]:
            if self.pruned_at is not None:
                break
            self.trial.report(log.valid.get(SELECTION_METRIC, math.nan), log.epoch)
            self.reported += 1
            if self.trial.should_prune():
                self.pruned_at = log.epoch
        return self.pruned_at is not None

    def hook(self, epoch: int, record: RunRecord) -> None:
        if self.observe(record):
            raise RunPruned(f"search trial {self.trial.number} pruned at epoch {self.pruned_at}")


def best_upto(record: RunRecord, last_epoch: int) -> tuple[dict[str, float], int | None]:
    """The valid metrics and epoch of the best valid Recall@20 up to ``last_epoch`` (a pruned trial's)."""
    best: dict[str, float] = {}
    at = None
    for log in record.epochs:
        score = log.valid.get(SELECTION_METRIC, -math.inf)
        if log.epoch <= last_epoch and score > best.get(SELECTION_METRIC, -math.inf):
            best, at = dict(log.valid), log.epoch
    return best, at


@dataclass
class Candidate:
    """A trial to train: its drawn values, the overrides that make its config, its pruning."""

    trial: optuna.Trial
    params: dict[str, Any]  # every key of the space
    point: dict[str, Any]  # the values that differ from the defaults
    overrides: dict[str, Any]  # the fixed overrides, then the point
    pruning: TrialPruning


def resolved(model: str, overrides: Mapping[str, Any]) -> str:
    """The config these overrides make, as text: two trials with the same one are the same trial."""
    return make_config(get_model_class(model), dict(overrides)).model_dump_json()


class SpaceSearch:
    """One search: its optuna study over ``space`` for ``model`` under the ``fixed`` overrides,
    its trials so far (one row each) and its winner."""

    def __init__(
        self,
        model: str,
        fixed: Mapping[str, Any],
        space: Mapping[str, list[Any]],
        budget: int,
        seed: int,
        prune_warmup: int | None,
    ) -> None:
        self.model, self.fixed, self.space, self.budget = model, dict(fixed), dict(space), budget
        self.seed, self.prune_warmup = seed, prune_warmup
        self.defaults = defaults_of(model, self.fixed, list(self.space))
        self.study = optuna.create_study(
            direction="maximize", sampler=make_sampler(seed, budget), pruner=make_pruner(prune_warmup)
        )
        self.study.enqueue_trial({k: choice(v) for k, v in self.defaults.items()})
        self.rows: list[dict[str, Any]] = []
        self.tried: dict[str, int] = {}  # resolved config -> its row
        self.repeats, self.streak, self.exhausted, self.seconds = 0, 0, False, 0.0
        self.rng = random.Random(seed)

    @property
    def done(self) -> bool:
        return self.exhausted or len(self.rows) >= self.budget

    def ask(self) -> Candidate | None:
        """The next configuration not tried yet (None when the search is done); repeats are told on the way."""
        while not self.done:
            trial = self.study.ask()
            params = {
                k: from_choice(trial.suggest_categorical(k, [choice(v) for v in vals]), vals)
                for k, vals in self.space.items()
            }
            point = {k: v for k, v in params.items() if v != self.defaults[k]}
            overrides = {**self.fixed, **point}
            key = resolved(self.model, overrides)
            if key in self.tried:
                self._tell_repeat(trial, self.rows[self.tried[key]])
                self.streak += 1
                if self.streak >= MAX_REPEATS:
                    self.streak = 0
                    self._enqueue_untried()
                continue
            self.streak, self.tried[key] = 0, len(self.rows)
            return Candidate(trial, params, point, overrides, TrialPruning(trial))
        return None

    def conclude(self, cand: Candidate, record: RunRecord) -> bool:
        """Tell the trial's result from its run's record (its epochs replayed through the pruner);
        False when the record is a pruned run that this search lets go on (it trains further)."""
        if cand.pruning.observe(record):
            valid, epoch = best_upto(record, cand.pruning.pruned_at)
            self.study.tell(cand.trial, state=TrialState.PRUNED)
            self._add_row(cand, record, valid, epoch, "pruned")
            return True
        if record.status not in FINISHED:
            return False
        value = record.best_valid.get(SELECTION_METRIC, math.nan)
        if math.isfinite(value):
            self.study.tell(cand.trial, value)
        else:
            self.study.tell(cand.trial, state=TrialState.FAIL)
        self._add_row(cand, record, dict(record.best_valid), record.best_epoch, "complete")
        return True

    def finish(self, cand: Candidate, record: RunRecord) -> None:
        """The trial's run was trained (or reused): tell its result."""
        if not self.conclude(cand, record):
            raise RuntimeError(f"{record.run_dir}: search trial ended with status {record.status!r}")

    def _add_row(
        self, cand: Candidate, record: RunRecord, valid: dict[str, float], epoch: int | None, state: str
    ) -> None:
        self.rows.append(
            {
                "point": cand.point,
                "params": cand.params,
                "overrides": cand.overrides,
                "valid": valid,
                "run_dir": record.run_dir,
                "best_epoch": epoch,
                "state": state,
            }
        )

    def _tell_repeat(self, trial: optuna.Trial, row: dict[str, Any]) -> None:
        """A suggestion of a configuration already tried: told that trial's result, not counted."""
        self.repeats += 1
        value = row["valid"].get(SELECTION_METRIC, math.nan)
        if row["state"] == "complete" and math.isfinite(value):
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=TrialState.PRUNED if row["state"] == PRUNED else TrialState.FAIL)

    def _enqueue_untried(self) -> None:
        """Enqueue a seeded random point of the space not tried yet (none left: the search is done)."""
        points = grid_points(self.space) if self.space else [{}]
        self.rng.shuffle(points)
        for params in points:
            point = {k: v for k, v in params.items() if v != self.defaults[k]}
            if resolved(self.model, {**self.fixed, **point}) not in self.tried:
                self.study.enqueue_trial({k: choice(v) for k, v in params.items()})
                return
        self.exhausted = True

    def winner(self, select: Callable[[Sequence[Mapping[str, float]]], int] = select_on_valid) -> int:
        """The row of the best complete trial by valid Recall@20 (``select``); 0 when none completed."""
        complete = [i for i, row in enumerate(self.rows) if row["state"] == "complete"]
        return complete[select([self.rows[i]["valid"] for i in complete])] if complete else 0

    def result(self, select: Callable[[Sequence[Mapping[str, float]]], int] = select_on_valid) -> dict[str, Any]:
        """The search record: the space, sampler and pruner, every trial's valid metrics, the winner."""
        winner = self.winner(select)
        return {
            "model": self.model,
            "grid": self.space,
            **search_settings(self.seed, self.prune_warmup, self.budget),
            "trials": self.rows,
            "repeats": self.repeats,
            "winner": winner,
            "winner_overrides": self.rows[winner]["overrides"] if self.rows else dict(self.fixed),
            "winner_params": self.rows[winner]["params"] if self.rows else dict(self.defaults),
            "seconds": self.seconds,
        }
