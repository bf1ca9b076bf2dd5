"""The study's search (spec section 1): per model and adapter (an arm), an optuna study over
the arm's space (``pipeline.study.search_space``), maximising VALID Recall@20.

- **Sampler**: TPE, seeded with ``search_seed``; its first trial is the arm's default
  configuration (enqueued), the next few its random start, the rest its suggestions.
- **Budget**: ``trial_budget``, the same for base and +BeFA. A suggestion whose resolved config
  an earlier trial of the arm already has is told that trial's result and not counted; after
  :data:`MAX_REPEATS` of them in a row, a seeded random point not yet tried is enqueued, so
  an arm always gets its budget. ``max_minutes`` stops an arm's new trials after that time.
- **Pruning**: each epoch's valid Recall@20 is reported to a median pruner
  (``search_space.make_pruner``); a pruned trial stops (``pipeline.study.runner.RunPruned``)
  and its run is recorded ``pruned``, never a finished run of the cache. The pruner sees valid
  metrics only. A trial whose run the cache already holds (finished or pruned) is replayed:
  its recorded epochs go through the same pruner, so a study that reuses its runs makes the
  same decisions; on Ray, where the hook cannot reach the workers, the same replay prunes
  after the run (the decisions are the same, the time is not saved).
- **Selection**: the winner is :func:`pipeline.study.search.select_on_valid` over the complete
  trials' valid metrics (a pruned trial never wins). No test metric is read here.

Without ``max_minutes`` the arms advance together: each round trains one trial of every arm as
one batch (``StudyRunner.run_many``, spread on Ray with ``cluster``); each arm's trials depend
on its own results only, so rounds do not change what an arm tries.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from models import get_model_class, make_config
from pipeline.evaluation.metrics import SELECTION_METRIC
from pipeline.study.params import StudyParams
from pipeline.study.runner import PRUNED, RunPruned, RunSpec, StudyRunner
from pipeline.study.search import grid_points, select_on_valid
from pipeline.study.search_space import (
    arm_defaults,
    choice,
    from_choice,
    make_pruner,
    make_sampler,
    search_settings,
    search_space,
    trial_budget,
)
from pipeline.training.record import FINISHED, RunRecord

MAX_REPEATS = 20  # suggestions of already-tried configurations in a row before an untried point is enqueued


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


@dataclass
class Pending:
    """A trial of one arm that needs training."""

    arm: "ArmSearch"
    trial: optuna.Trial
    params: dict[str, Any]  # every key of the space
    point: dict[str, Any]  # the values that differ from the arm's defaults
    spec: RunSpec
    pruning: TrialPruning


def _resolved(model: str, overrides: dict[str, Any]) -> str:
    return make_config(get_model_class(model), overrides).model_dump_json()


def best_upto(record: RunRecord, last_epoch: int) -> tuple[dict[str, float], int | None]:
    """The valid metrics and epoch of the best valid Recall@20 up to ``last_epoch`` (a pruned trial's)."""
    best: dict[str, float] = {}
    at = None
    for log in record.epochs:
        score = log.valid.get(SELECTION_METRIC, -math.inf)
        if log.epoch <= last_epoch and score > best.get(SELECTION_METRIC, -math.inf):
            best, at = dict(log.valid), log.epoch
    return best, at


class ArmSearch:
    """The search of one (model, adapter): its optuna study, its trials so far, its winner."""

    def __init__(self, params: StudyParams, model: str, adapter: str, split: str, modalities: list[str]) -> None:
        self.params, self.model, self.adapter, self.split, self.modalities = params, model, adapter, split, modalities
        self.space = search_space(params, model, adapter)
        self.defaults = arm_defaults(params, model, adapter, list(self.space))
        self.budget = trial_budget(params, model)
        self.study = optuna.create_study(
            direction="maximize", sampler=make_sampler(params, self.budget), pruner=make_pruner(params)
        )
        self.study.enqueue_trial({k: choice(v) for k, v in self.defaults.items()})
        self.rows: list[dict[str, Any]] = []
        self.tried: dict[str, int] = {}  # resolved config -> its row
        self.repeats, self.exhausted, self.seconds = 0, False, 0.0
        self.rng = random.Random(params.search_seed)

    @property
    def done(self) -> bool:
        return self.exhausted or len(self.rows) >= self.budget

    def next_trial(self, runner: StudyRunner) -> Pending | None:
        """The arm's next trial to train; repeats and trials the run cache decides are told on the way."""
        streak = 0
        while not self.done:
            trial = self.study.ask()
            params = {
                k: from_choice(trial.suggest_categorical(k, [choice(v) for v in vals]), vals)
                for k, vals in self.space.items()
            }
            pending = self._pending(trial, params)
            key = _resolved(self.model, pending.spec.overrides)
            if key in self.tried:
                self._tell_repeat(trial, self.rows[self.tried[key]])
                streak += 1
                if streak >= MAX_REPEATS:
                    streak = 0
                    self._enqueue_untried()
                continue
            self.tried[key] = len(self.rows)
            record = runner.ended_record(pending.spec)
            if record is not None and self.conclude(pending, record):  # decided from the run cache
                runner.reused += 1
                continue
            return pending
        return None

    def _pending(self, trial: optuna.Trial, params: dict[str, Any]) -> Pending:
        point = {k: v for k, v in params.items() if v != self.defaults[k]}
        spec = RunSpec(
            model=self.model,
            overrides={**self.params.fixed_overrides(self.model), "adapter": self.adapter, **point},
            modalities=self.modalities,
            split=self.split,
            seed=self.params.seeds[0],
            experiment="search",
            setting=json.dumps(point) if point else "default",
        )
        return Pending(self, trial, params, point, spec, TrialPruning(trial))

    def conclude(self, pending: Pending, record: RunRecord) -> bool:
        """Tell the trial's result from its run's record (its epochs replayed through the pruner);
        False when the record is a pruned run that this search lets go on (it trains further)."""
        if pending.pruning.observe(record):
            valid, epoch = best_upto(record, pending.pruning.pruned_at)
            self.study.tell(pending.trial, state=TrialState.PRUNED)
            self._add_row(pending, record, valid, epoch, "pruned")
            return True
        if record.status not in FINISHED:
            return False
        value = record.best_valid.get(SELECTION_METRIC, math.nan)
        if math.isfinite(value):
            self.study.tell(pending.trial, value)
        else:
            self.study.tell(pending.trial, state=TrialState.FAIL)
        self._add_row(pending, record, dict(record.best_valid), record.best_epoch, "complete")
        return True

    def finish(self, pending: Pending, record: RunRecord) -> None:
        """The trial's run was trained (or reused) in a batch: tell its result."""
        if not self.conclude(pending, record):
            raise RuntimeError(f"{record.run_dir}: search trial ended with status {record.status!r}")

    def _add_row(
        self, pending: Pending, record: RunRecord, valid: dict[str, float], epoch: int | None, state: str
    ) -> None:
        self.rows.append(
            {
                "point": pending.point,
                "params": pending.params,
                "overrides": pending.spec.overrides,
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
        """Enqueue a seeded random point of the space not tried yet (none left: the arm is done)."""
        points = grid_points(self.space) if self.space else [{}]
        self.rng.shuffle(points)
        fixed = {**self.params.fixed_overrides(self.model), "adapter": self.adapter}
        for params in points:
            point = {k: v for k, v in params.items() if v != self.defaults[k]}
            if _resolved(self.model, {**fixed, **point}) not in self.tried:
                self.study.enqueue_trial({k: choice(v) for k, v in params.items()})
                return
        self.exhausted = True

    def result(self) -> dict[str, Any]:
        """The search record: the space, sampler and pruner, every trial's valid metrics, the winner."""
        complete = [i for i, row in enumerate(self.rows) if row["state"] == "complete"]
        winner = complete[select_on_valid([self.rows[i]["valid"] for i in complete])] if complete else 0
        return {
            "model": self.model,
            "adapter": self.adapter,
            "grid": self.space,
            **search_settings(self.params, self.budget),
            "trials": self.rows,
            "repeats": self.repeats,
            "winner": winner,
            "winner_overrides": self.rows[winner]["overrides"],
            "winner_params": self.rows[winner]["params"],
            "seconds": self.seconds,
        }


def run_searches(
    runner: StudyRunner, keys: list[tuple[str, str]], split: str, modalities: list[str]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Every arm's search: together, one trial of each per batch; with ``max_minutes``, one arm
    after another, its budget checked between its trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the runner logs every trial itself
    p = runner.params
    arms = {key: ArmSearch(p, *key, split, modalities) for key in keys}
    if p.max_minutes is None:
        _advance(runner, list(arms.values()), None)
    else:
        for arm in arms.values():
            _advance(runner, [arm], 60 * p.max_minutes)
    return {key: arm.result() for key, arm in arms.items()}


def _advance(runner: StudyRunner, arms: list[ArmSearch], budget_s: float | None) -> None:
    """Rounds of one trial per arm still searching, each round one batch, until every arm is done."""
    start, active = time.perf_counter(), list(arms)
    while active:
        if budget_s is not None and all(a.rows for a in active) and time.perf_counter() - start > budget_s:
            for arm in active:
                runner.log(
                    f"  search {arm.model} {arm.adapter}: time budget of {runner.params.max_minutes} min "
                    f"reached after {len(arm.rows)} trials"
                )
            break
        pending = [t for t in (arm.next_trial(runner) for arm in active) if t is not None]
        if pending:
            records = runner.run_many([t.spec for t in pending], [t.pruning.hook for t in pending])
            for t, record in zip(pending, records):
                t.arm.finish(t, record)
        active = [arm for arm in active if not arm.done]
    for arm in arms:
        arm.seconds = time.perf_counter() - start  # with several arms, the batches' time: they ran together
