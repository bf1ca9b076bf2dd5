"""``befa run``'s fit: a model fitted to the catalog by a short, seeded search on VALID before
its run (``PipelineParams.fit``; when it runs and what is recorded: ``pipeline.training.fit_record``).

The search is the study's core (:class:`pipeline.training.search.SpaceSearch`):

- **space**: lr over the authors' grid, the model's documented ``GRID``, and for +BeFA its t
  and dropout (:func:`pipeline.training.search.default_grid`), less the keys the user fixed
  with ``--set`` (what the user set stays set);
- **sampler**: TPE seeded with the run's seed; the first trial is the default configuration;
- **budget**: ``fit_trials`` (fewer when the space is smaller); ``fit_minutes`` stops starting
  new trials after that time;
- **pruning**: a median pruner on valid Recall@20 per epoch after :data:`FIT_PRUNE_WARMUP` epochs;
- **selection**: the best complete trial by valid Recall@20 (``select_on_valid``). No test
  metric is read for any decision.

Every trial is a whole training run (the run's seed, epochs and patience) in
``<run_dir>/fit/trial-NN``, quiet, one log line each. The winner's files are then copied into
the run folder (``run.json`` last, so a kill never leaves a record beside another run's
weights), its record gains ``fit`` and its floor check is judged again, now knowing what was
tried. The run that follows (checkpoint verification, recommendations, the report) is the
winner's, as if trained there.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna

from pipeline.training.fit_record import FitRecord, FitTrial
from pipeline.training.floor_check import judge_floor
from pipeline.training.loop import say
from pipeline.training.record import RECORD, RunRecord
from pipeline.training.search import (
    PRUNED,
    Candidate,
    RunPruned,
    SpaceSearch,
    default_grid,
    search_settings,
    space_size,
    space_with_defaults,
)
from storage.atomic import TMP_PREFIX, atomic_path

FIT_PRUNE_WARMUP = 10  # epochs every trial trains before the median pruner may stop it
FIT_DIR = "fit"  # in a run folder: the fit's trials
EpochHook = Callable[[int, RunRecord], None]
# trains one trial: (overrides, run folder, on_epoch_end hook) -> its record (raises RunPruned when pruned)
TrainTrial = Callable[[dict[str, Any], Path, EpochHook], Any]


@dataclass(frozen=True)
class FitBudget:
    trials: int
    minutes: float | None
    seed: int


def fit_space(model: str, fixed: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The space the fit searches for ``model`` under ``fixed`` (the run's overrides, adapter
    included): the default grid less the keys the user set."""
    adapter = str(fixed.get("adapter", "none"))
    grid = {k: v for k, v in default_grid(model, adapter).items() if k not in fixed}
    return space_with_defaults(model, fixed, grid)


def search_fit(
    train: TrainTrial,
    model: str,
    fixed: Mapping[str, Any],
    run_dir: str | Path,
    budget: FitBudget,
    reason: str,
    log: Callable[[str], None] = say,
) -> RunRecord:
    """Fit ``model`` on valid, then make the winner the run in ``run_dir``; returns its record."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_dir = Path(run_dir)
    root = run_dir / FIT_DIR
    shutil.rmtree(root, ignore_errors=True)  # trials of an earlier fit of this folder
    space = fit_space(model, fixed)
    size = space_size(space)
    search = SpaceSearch(model, fixed, space, max(1, min(budget.trials, size)), budget.seed, FIT_PRUNE_WARMUP)
    start, stopped = time.perf_counter(), "budget"
    while True:
        if budget.minutes is not None and search.rows and time.perf_counter() - start > 60 * budget.minutes:
            stopped = "minutes"
            break
        cand = search.ask()
        if cand is None:
            stopped = "space" if search.exhausted or search.budget >= size else "budget"
            break
        search.finish(cand, _train_trial(train, cand, root / f"trial-{len(search.rows):02d}"))
        log(_trial_line(model, fixed, search, len(search.rows) - 1))
    search.seconds = time.perf_counter() - start
    record = fit_record(search, size, budget, reason, stopped)
    return adopt(Path(record.winner_trial.run_dir), run_dir, record)


def _train_trial(train: TrainTrial, cand: Candidate, trial_dir: Path) -> RunRecord:
    """Train one trial; a trial its pruner stops is recorded ``pruned``."""
    try:
        train(cand.overrides, trial_dir, cand.pruning.hook)
    except RunPruned:
        rec = RunRecord.load(trial_dir)
        rec.status = PRUNED
        rec.save(trial_dir)
    return RunRecord.load(trial_dir)


def _trial_line(model: str, fixed: Mapping[str, Any], search: SpaceSearch, i: int) -> str:
    row = search.rows[i]
    label = f"{model}{'+befa' if fixed.get('adapter') == 'befa' else ''}"
    point = ", ".join(f"{k}={v}" for k, v in row["point"].items()) or "defaults"
    state = " (pruned)" if row["state"] == PRUNED else ""
    return (
        f"  fit {label} trial {i + 1}/{search.budget} [{point}]: valid R@20 "
        f"{row['valid'].get('recall@20', float('nan')):.4f} at epoch {row['best_epoch']}{state}"
    )


def fit_record(search: SpaceSearch, size: int, budget: FitBudget, reason: str, stopped: str) -> FitRecord:
    """The typed record of a finished search."""
    trials = [
        FitTrial(
            number=i,
            point=row["point"],
            state=row["state"],
            valid=row["valid"].get("recall@20"),
            best_epoch=row["best_epoch"],
            epochs=len(RunRecord.load(row["run_dir"]).epochs),
            run_dir=str(row["run_dir"]),
        )
        for i, row in enumerate(search.rows)
    ]
    settings = search_settings(search.seed, search.prune_warmup, search.budget)
    return FitRecord(
        reason=reason,
        space=search.space,
        space_size=size,
        budget=search.budget,
        minutes=budget.minutes,
        seed=search.seed,
        sampler=settings["sampler"],
        pruner=settings["pruner"],
        trials=trials,
        winner=search.winner(),
        stopped_by=stopped,
        seconds=round(search.seconds, 3),
    )


def adopt(winner_dir: Path, run_dir: Path, fit: FitRecord) -> RunRecord:
    """The winner's files copied into ``run_dir`` (``run.json`` last), its record with ``fit``
    and the floor check judged again."""
    (run_dir / RECORD).unlink(missing_ok=True)  # from here until the end, no record names a half-copied run
    files = [p for p in winner_dir.iterdir() if p.is_file() and not p.name.startswith(TMP_PREFIX)]
    for src in sorted(files, key=lambda p: p.name == RECORD):
        with atomic_path(run_dir / src.name) as tmp:
            shutil.copyfile(src, tmp)
    record = RunRecord.load(run_dir)
    record.fit = fit
    if record.floor is not None:
        record.floor = judge_floor(record.floor, record, record.batching)
    record.save(run_dir)
    return RunRecord.load(run_dir)
