"""The study's runs: content-addressed run folders, trained once and reused after.

A run's folder name hashes its model config, modalities, split, budget and feature
snapshots, so a study interrupted and restarted resumes, and equal configurations in
different experiments are not trained twice.

A phase hands its independent runs over as one batch (:meth:`StudyRunner.run_many`):
trained through the run executor (``pipeline.training.executor``): one after another
here, or with ``cluster`` one Ray task each (the folders and their cache on storage the
workers share).
Either way the cache is checked here first, so a finished run is never resubmitted, and
each run is seeded by its own spec, so its metrics do not depend on where it ran.

A search trial that its pruner stops (``on_epoch_end`` raises :class:`RunPruned`, here only,
not on Ray) is recorded with status ``pruned``: not a finished run, so the cache never hands
it out as one; a later call that needs it trained resumes it from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from pipeline.features.bundle import FeatureBundle
from pipeline.settings import Settings
from pipeline.study.params import StudyParams
from pipeline.training.api import train_model
from pipeline.training.executor import claim_run, die_once_when_armed, executor_for
from pipeline.training.liveness import interrupted_note
from pipeline.training.record import FINISHED, LAST, PER_USER, RECORD, RunRecord, now
from pipeline.training.search import PRUNED, RunPruned

__all__ = ["PRUNED", "RunPruned", "RunSpec", "StudyRunner"]
EpochHook = Callable[[int, RunRecord], None]


class RunSpec(BaseModel):
    """One training run of the study: what it is, not where (the folder is derived)."""

    model: str
    overrides: dict[str, Any]
    modalities: list[str]
    split: str  # split parquet path
    seed: int
    experiment: str
    setting: str

    @property
    def adapter(self) -> str:
        return self.overrides.get("adapter", "none")


class StudyRunner:
    """Trains (or reuses) content-addressed runs; keeps the counts and the log."""

    def __init__(
        self,
        params: StudyParams,
        settings: Settings,
        folder: Path,
        catalog_dir: str,
        features: FeatureBundle,
        log: Callable[[str], None],
    ):
        self.params, self.settings, self.folder = params, settings, folder
        self.catalog_dir, self.features, self.log = catalog_dir, features, log
        self.trained = self.reused = 0
        self.seconds = 0.0

    def run_dir(self, spec: RunSpec) -> Path:
        # the split file name carries its content (e.g. random-s2024, ...-train50); runs of
        # one study share one catalog, so name + config + modalities + budget identify a run
        key = json.dumps(
            {
                "model": spec.model,
                "overrides": spec.overrides,
                "modalities": sorted(spec.modalities),
                "split": Path(spec.split).name,
                "epochs": self.params.epochs,
                "patience": self.params.patience,
                "snapshots": {m: self.features.snapshots[m] for m in sorted(spec.modalities)},
            },
            sort_keys=True,
            default=str,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        return self.folder / "runs" / f"{spec.model}-{spec.adapter}-{digest}-s{spec.seed}"

    def train(self, spec: RunSpec) -> RunRecord:
        """The run's record, training it unless an identical finished run exists."""
        return self.run_many([spec])[0]

    def run_many(self, specs: list[RunSpec], hooks: list[EpochHook | None] | None = None) -> list[RunRecord]:
        """The records of independent runs (in order), training those no finished run covers:
        one after another here, or as Ray tasks with ``cluster``. Equal specs train once.
        ``hooks``: one ``on_epoch_end`` per spec (a search's pruning), called here only (not on Ray)."""
        dirs = [self.run_dir(spec) for spec in specs]
        hook_of = dict(zip(dirs, hooks or []))
        todo: dict[Path, RunSpec] = {}
        for spec, run_dir in zip(specs, dirs):
            if run_dir in todo or self._finished(run_dir):
                self.reused += 1
            else:
                todo[run_dir] = spec
        calls = [(spec, run_dir) for run_dir, spec in todo.items()]
        executor = executor_for(self.params.cluster, self.params.cpus_per_run, self.params.device)
        common = (self.params, self.settings, self.catalog_dir, self.features)
        if executor.remote:
            fn, args = train_on_worker, calls
        else:
            fn, args = train_spec_here, [(spec, run_dir, hook_of.get(run_dir)) for spec, run_dir in calls]
        executor.map(fn, args, common=common, on_result=lambda i, took: self._done(*calls[i], took))
        return [RunRecord.load(run_dir) for run_dir in dirs]

    def ended_record(self, spec: RunSpec) -> RunRecord | None:
        """The record of the spec's run when it ended, finished or pruned; else None (the caller
        counts it in ``reused`` when it uses it instead of training)."""
        run_dir = self.run_dir(spec)
        if not (run_dir / RECORD).exists():
            return None
        rec = RunRecord.load(run_dir)
        return rec if rec.status == PRUNED or self._finished(run_dir) else None

    def _finished(self, run_dir: Path) -> bool:
        """Whether a finished run is there to reuse (an interrupted one is said so, then resumed)."""
        if not (run_dir / RECORD).exists():
            return False
        rec = RunRecord.load(run_dir)
        if rec.status in FINISHED and (run_dir / PER_USER).exists():
            return True
        if rec.state == "interrupted":  # a killed study: say so, then continue the run where it stopped
            self.log(f"  {interrupted_note(rec)}: the study resumes it now")
        return False

    def _done(self, spec: RunSpec, run_dir: Path, took: float) -> None:
        self.seconds += took
        self.trained += 1
        rec = RunRecord.load(run_dir)
        self.log(
            f"  {spec.experiment} {spec.setting}: {spec.model} {'+BeFA' if spec.adapter == 'befa' else 'base'} "
            f"seed {spec.seed}: {len(rec.epochs)} epochs{' (pruned)' if rec.status == PRUNED else ''}, "
            f"valid R@20 {rec.best_valid.get('recall@20', float('nan')):.4f} ({took:.0f} s)"
        )


def train_spec(
    params: StudyParams,
    settings: Settings,
    catalog_dir: str,
    features: FeatureBundle,
    spec: RunSpec,
    run_dir: Path,
    num_threads: int | None,
    on_epoch_end: Callable[[int, RunRecord], None] | None = None,
) -> float:
    """Train one study run into ``run_dir`` (continuing a run a kill left there); returns its seconds."""
    start = time.perf_counter()
    train_model(
        catalog_dir,
        spec.split,
        features.subset(spec.modalities),
        spec.model,
        overrides=spec.overrides,
        run_dir=run_dir,
        seed=spec.seed,
        device=params.device,
        max_epochs=params.epochs,
        patience=params.patience,
        resume=(run_dir / LAST).exists() and (run_dir / RECORD).exists(),
        quiet=True,
        overwrite=True,
        num_threads=num_threads,
        graph_cache_dir=settings.home / "graph-cache",
        on_epoch_end=on_epoch_end,
    )
    return time.perf_counter() - start


def train_spec_here(
    params: StudyParams,
    settings: Settings,
    catalog_dir: str,
    features: FeatureBundle,
    spec: RunSpec,
    run_dir: Path,
    on_epoch_end: EpochHook | None = None,
) -> float:
    """:func:`train_spec` in this process, with the study's thread setting; a run its hook
    prunes (:class:`RunPruned`) is recorded ``pruned``, its folder kept for a later resume."""
    start = time.perf_counter()
    try:
        return train_spec(params, settings, catalog_dir, features, spec, run_dir, params.num_threads, on_epoch_end)
    except RunPruned:
        record = RunRecord.load(run_dir)
        record.status, record.finished_at = PRUNED, now()
        record.save(run_dir)
        return time.perf_counter() - start


def train_on_worker(
    params: StudyParams, settings: Settings, catalog_dir: str, features: FeatureBundle, spec: RunSpec, run_dir: Path
) -> float:
    """:func:`train_spec` as a Ray task: as many torch threads as the CPUs it reserved. A retried
    task (its worker was lost) continues from the run's last checkpoint, as a resumed study does."""
    claim_run(run_dir)
    return train_spec(params, settings, catalog_dir, features, spec, run_dir, params.cpus_per_run, die_once_when_armed)
