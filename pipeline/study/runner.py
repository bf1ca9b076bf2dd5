"""The study's runs: content-addressed run folders, trained once and reused after.

A run's folder name hashes its model config, modalities, split, budget and feature
snapshots, so a study interrupted and restarted resumes, and equal configurations in
different experiments are not trained twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from pipeline.settings import Settings
from pipeline.study.params import StudyParams
from pipeline.training.api import train_model
from pipeline.training.prepare import FeatureBundle
from pipeline.training.record import FINISHED, LAST, PER_USER, RECORD, RunRecord


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

    def __init__(self, params: StudyParams, settings: Settings, folder: Path, catalog_dir: str, features: FeatureBundle, log: Callable[[str], None]):
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
        run_dir = self.run_dir(spec)
        record_path = run_dir / RECORD
        if record_path.exists():
            rec = RunRecord.load(run_dir)
            if rec.status in FINISHED and (run_dir / PER_USER).exists():
                self.reused += 1
                return rec
        sub = self.features.subset(spec.modalities)
        start = time.perf_counter()
        train_model(
            self.catalog_dir, spec.split, sub, spec.model, overrides=spec.overrides, run_dir=run_dir, seed=spec.seed,
            device=self.params.device, max_epochs=self.params.epochs, patience=self.params.patience,
            resume=(run_dir / LAST).exists() and record_path.exists(), quiet=True, overwrite=True,
            num_threads=self.params.num_threads,
            graph_cache_dir=self.settings.home / "graph-cache",
        )
        took = time.perf_counter() - start
        self.seconds += took
        self.trained += 1
        rec = RunRecord.load(run_dir)
        self.log(
            f"  {spec.experiment} {spec.setting}: {spec.model} {'+BeFA' if spec.adapter == 'befa' else 'base'} seed {spec.seed}: "
            f"{len(rec.epochs)} epochs, valid R@20 {rec.best_valid.get('recall@20', float('nan')):.4f} ({took:.0f} s)"
        )
        return rec
