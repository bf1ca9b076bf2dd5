"""The trainer: BPR epochs, early stopping on VALID Recall@20, checkpoints, run record.

Protocol (spec section 1):

- one epoch = every train interaction once, shuffled, in batches of ``config.batch_size``
  (2048); one uniform negative per positive (``pipeline.training.sampling``), or plain
  (user, item) pairs when ``config.uses_negatives`` is False (BM3);
- Adam at ``config.lr``; with ``config.lr_decay = (gamma, step)`` the lr of epoch e is
  lr * gamma ** (e / step) (``LambdaLR``, stepped once per epoch);
- after every epoch: full-ranking evaluation of valid (and test, from the same top-K
  pass, which costs one extra lookup); early stopping when valid Recall@20 has not
  strictly improved for ``patience`` (10) consecutive epochs. (The reference toolbox
  stops one epoch later, after patience + 1; we follow the spec's wording.) befa compares
  the raw float valid Recall@20, where the reference rounds the valid metric to 4 decimals
  before comparing: there a gain that does not show in the 4th decimal is no improvement,
  here any strict gain is, so on the same curve befa may pick a slightly later best epoch
  and stop later than the reference. Test metrics
  are reported at the best valid epoch and never used for any decision;
- ``max_epochs`` (1000) bounds the run;
- models with ``trainable = False`` (MostPop) or without trainable parameters are
  evaluated once, with no optimisation;
- small catalogs (``pipeline.training.batching``): an epoch has at least
  ``min_batches_per_epoch`` (16) batches, the batch shrinking when the train split is too
  small for 16 batches of ``batch_size`` (``RunRecord.batching``; with ``max_batches_per_epoch``
  set, at most that many, the batch and lr growing); every trainable run is checked against
  MostPop on the same split (``RunRecord.floor``), flagged when its best valid R@20 is below it.

Determinism: ``torch.manual_seed(seed)`` before the model is built, and one
``torch.Generator`` seeded with ``seed`` for shuffling and negatives. On CPU two runs
with the same seed give identical metrics (tested). Resuming: after each epoch
``last.pt`` holds model, optimiser, scheduler, epoch, best-so-far, the early-stopping
counter, the record so far and every RNG state (global CPU/CUDA and the sampler's), so
``resume=True`` continues exactly where an uninterrupted run would be (tested).
Models should draw their randomness from torch's RNG (dropout, FREEDOM's edge sampling
do), which is what the checkpoint restores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from models.base import ModelConfig, Recommender
from models.mostpop import MostPop
from pipeline.device import cpu_count, peak_memory, sync, torch_threads
from pipeline.evaluation.evaluator import EvalResult, evaluate_model
from pipeline.evaluation.metrics import SELECTION_METRIC
from pipeline.training.allocator import keep_freed_memory
from pipeline.training.batching import plan_batches
from pipeline.training.best_results import keep_best_results
from pipeline.training.build import build_model
from pipeline.training.checkpoints import load_weights, save_weights
from pipeline.training.epochs import is_trainable
from pipeline.training.floor_check import FLOOR_METRIC, FloorCheck, judge_floor
from pipeline.training.liveness import mark_active, this_process
from pipeline.training.loop import EpochLoop, TrainerConfig, TrainingInterrupted, restore, say, train_epochs
from pipeline.training.mapping import map_run
from pipeline.training.prepare import PreparedData
from pipeline.training.record import (
    BEST,
    LAST,
    RECORD,
    EpochLog,
    RunRecord,
    code_version,
    now,
)
from pipeline.training.run_folder import FeaturesChanged, RunFolderBusy, check_previous

__all__ = ["FeaturesChanged", "RunFolderBusy", "RunResult", "TrainerConfig", "TrainingInterrupted", "fit"]


@dataclass
class RunResult:
    run_dir: Path
    record: RunRecord
    model: Recommender  # best weights loaded
    valid: EvalResult | None = None  # at the best epoch
    test: EvalResult | None = None  # at the best epoch
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def valid_metrics(self) -> dict[str, float]:
        return self.record.best_valid

    @property
    def test_metrics(self) -> dict[str, float]:
        return self.record.test


def fit(
    model_cls: type[Recommender],
    config: ModelConfig,
    prepared: PreparedData,
    run_dir: str | Path,
    trainer: TrainerConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    catalog: str | None = None,
    on_epoch_end: Callable[[int, RunRecord], None] | None = None,
    sources: dict[str, str | None] | None = None,
    allow_new_features: bool = False,
) -> RunResult:
    """Train ``model_cls(prepared.train, config)`` to early stop; write the run folder.

    ``config.batch_size`` is the asked-for batch; the run uses (and records as its config)
    the one the small-catalog rule gives. ``resume`` continues the folder's run only on the
    feature snapshots it recorded, unless ``allow_new_features``. The torch thread count is
    set for the run and restored afterwards."""
    trainer = trainer or TrainerConfig()
    run_dir = Path(run_dir)
    device = prepared.train.device
    with torch_threads((trainer.num_threads or cpu_count()) if device.type == "cpu" else None):
        plan = plan_batches(
            int(prepared.train.train_items.numel()),
            config.batch_size,
            trainer.min_batches_per_epoch,
            config.max_batches_per_epoch,
            config.lr,
        )
        config = config.model_copy(update={"batch_size": plan.batch_size, "lr": plan.lr})
        _check_run_folder(prepared, run_dir, resume, overwrite, config, allow_new_features)
        floor = _floor(model_cls, prepared) if trainer.floor else None
        model, graph_build_s = _build_model(model_cls, config, prepared, trainer.seed)
        record = _new_record(model, config, prepared, trainer, graph_build_s, catalog, sources)
        if not is_trainable(model):
            return _evaluate_once(model, prepared, record, run_dir, trainer)
        record.batching, record.floor = plan, floor
        loop = EpochLoop.start(model, config, prepared, trainer, record, run_dir)
        if resume and (run_dir / LAST).exists():
            restore(loop)
        if plan.adapted:
            loop.log(f"{loop.label}: {plan.note()}")
        record.save(run_dir)  # from here on a kill leaves a record that names its process
        mark_active(run_dir, True)
        try:
            result = _finish(loop, train_epochs(loop, on_epoch_end), graph_build_s)
        finally:
            mark_active(run_dir, False)
        _map_cold_items(result, prepared, trainer)
        return result


def _map_cold_items(result: RunResult, prepared: PreparedData, trainer: TrainerConfig) -> None:
    """On a split with cold items, a content model's run gets its mappers (``befa map``)."""
    if not (trainer.map_new_items and "cold" in prepared.evaluator.item_groups and prepared.train.features):
        return
    record = map_run(result.model, prepared, result.run_dir, seed=trainer.seed)
    if not trainer.quiet:
        for method, m in record.methods.items():
            cold = m.cold_setting.get("test")
            hybrid = m.hybrid_groups.get("test", {}).get("cold")
            say(
                f"{result.record.model}: {method} mapper ({m.fit['seconds']:.1f} s): cold-setting test R@20 "
                f"{cold.metrics.get('recall@20', float('nan')) if cold else float('nan'):.4f}, hybrid cold R@20 "
                f"{hybrid.metrics.get('recall@20', float('nan')) if hybrid else float('nan'):.4f}"
            )


def _check_run_folder(
    prepared: PreparedData, run_dir: Path, resume: bool, overwrite: bool, config: ModelConfig, allow_new_features: bool
) -> None:
    if prepared.train.device.type == "cpu":
        keep_freed_memory()
    if prepared.evaluator.heldout["valid"].users_with_items().numel() == 0:
        raise ValueError(
            f"split {prepared.train.split_id}: no valid rows, so early stopping on valid Recall@20 is impossible"
        )
    if (run_dir / RECORD).exists():
        check_previous(
            RunRecord.load(run_dir),
            prepared.train.feature_snapshots,
            config.model_dump(mode="json"),
            resume,
            overwrite,
            allow_new_features,
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if prepared.train.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(prepared.train.device)


def _floor(model_cls: type[Recommender], prepared: PreparedData) -> FloorCheck | None:
    """MostPop on the run's split (one evaluation; no random numbers drawn); None for a model with nothing to train."""
    if not getattr(model_cls, "trainable", True):
        return None
    res = evaluate_model(MostPop(prepared.train).to(prepared.train.device), prepared.evaluator, ("valid", "test"))
    return FloorCheck(floor_valid=res["valid"].metrics[FLOOR_METRIC], floor_test=res["test"].metrics[FLOOR_METRIC])


def _build_model(
    model_cls: type[Recommender], config: ModelConfig, prepared: PreparedData, seed: int
) -> tuple[Recommender, float]:
    """The model on its device, seeded; returns it with its build time (graphs included)."""
    device = prepared.train.device
    t0 = time.perf_counter()
    model = build_model(model_cls, prepared.train, config, seed)
    sync(device)
    return model, time.perf_counter() - t0


def _new_record(
    model: Recommender,
    config: ModelConfig,
    prepared: PreparedData,
    trainer: TrainerConfig,
    graph_build_s: float,
    catalog: str | None,
    sources: dict[str, str | None] | None,
) -> RunRecord:
    data = prepared.train
    return RunRecord(
        model=type(model).name,
        config=config.model_dump(mode="json"),
        trainer=trainer.model_dump(mode="json"),
        seed=trainer.seed,
        device=str(data.device),
        catalog=catalog,
        split_id=data.split_id,
        feature_snapshots=dict(data.feature_snapshots),
        feature_sets=dict(prepared.feature_sets),
        data_counts=dict(prepared.counts),
        data_notes=list(prepared.notes),
        code_version=code_version(),
        started_at=now(),
        parameters=model.parameter_report(),
        befa_inert=model.befa_inert() if config.adapter == "befa" else None,
        graph_build_s=graph_build_s,
        sources=dict(sources or {}),
        process=this_process(),
    )


def _evaluate_once(
    model: Recommender, prepared: PreparedData, record: RunRecord, run_dir: Path, trainer: TrainerConfig
) -> RunResult:
    """A model with nothing to train (MostPop): evaluate it once and record that."""
    device = prepared.train.device
    t1 = time.perf_counter()
    res = evaluate_model(model, prepared.evaluator, ("valid", "test"))
    eval_s = time.perf_counter() - t1
    record.epochs = [EpochLog(epoch=0, loss=None, lr=None, train_s=0.0, eval_s=eval_s, valid=res["valid"].metrics)]
    record.best_epoch, record.best_valid, record.test = 0, res["valid"].metrics, res["test"].metrics
    keep_best_results(record, model, prepared.evaluator, res, run_dir)
    record.status, record.finished_at = "evaluated_only", now()
    record.wall = {"train_total_s": 0.0, "eval_mean_s": eval_s, "graph_build_s": record.graph_build_s or 0.0}
    record.memory = peak_memory(device)
    save_weights(run_dir / BEST, model, list(prepared.train.features.values()), {"epoch": "0"})
    record.save(run_dir)
    if not trainer.quiet:
        say(f"{record.model}: not trainable, evaluated once: valid R@20 {res['valid'].metrics[SELECTION_METRIC]:.4f}")
    return RunResult(run_dir, record, model, res["valid"], res["test"])


def _finish(loop: EpochLoop, status: str, graph_build_s: float) -> RunResult:
    """Close the record, reload the best weights and return them with their metrics."""
    record = loop.record
    train_times = [e.train_s for e in record.epochs]
    eval_times = [e.eval_s for e in record.epochs]
    record.status, record.finished_at = status, now()
    record.wall = {
        "graph_build_s": graph_build_s,
        "train_total_s": sum(train_times),
        "train_epoch_mean_s": sum(train_times) / max(len(train_times), 1),
        "eval_mean_s": sum(eval_times) / max(len(eval_times), 1),
        "epochs": len(record.epochs),
    }
    record.memory = peak_memory(loop.device)
    if record.floor is not None:
        record.floor = judge_floor(record.floor, record, record.batching)
    record.save(loop.run_dir)
    load_weights(loop.run_dir / BEST, loop.model)
    best = loop.best_results
    if best is None:  # resumed after the best epoch: recompute from the best checkpoint
        best = evaluate_model(loop.model, loop.prepared.evaluator, ("valid", "test"))
    loop.log(
        f"{loop.label}: {status} after {len(record.epochs)} epochs; best epoch {record.best_epoch}: "
        f"valid R@20 {record.best_valid.get(SELECTION_METRIC, float('nan')):.4f}, "
        f"test R@20 {record.test.get(SELECTION_METRIC, float('nan')):.4f}"
        # the callers (befa train, befa run, the flow) print the full line with the likely causes
        + (f"; BELOW the MostPop floor (valid R@20 {record.floor.floor_valid:.4f})" if record.below_floor else "")
    )
    return RunResult(loop.run_dir, record, loop.model, best["valid"], best["test"])
