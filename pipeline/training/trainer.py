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

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from models.base import ModelConfig, Recommender
from models.mostpop import MostPop
from pipeline.device import cpu_count, peak_memory, sync, torch_threads
from pipeline.evaluation.evaluator import EvalResult, evaluate_model
from pipeline.evaluation.metrics import SELECTION_METRIC
from pipeline.training.allocator import keep_freed_memory
from pipeline.training.batching import MIN_BATCHES_PER_EPOCH, plan_batches
from pipeline.training.build import build_model
from pipeline.training.checkpoints import (
    load_last,
    load_weights,
    rng_state,
    save_last,
    save_per_user,
    save_weights,
    set_rng_state,
)
from pipeline.training.epochs import is_trainable, make_optimiser, run_epoch
from pipeline.training.floor_check import FLOOR_METRIC, FloorCheck, judge_floor
from pipeline.training.liveness import mark_active, this_process
from pipeline.training.prepare import PreparedData
from pipeline.training.record import (
    BEST,
    LAST,
    PER_USER,
    RECORD,
    EpochLog,
    RunRecord,
    code_version,
    item_group_metrics,
    now,
)
from pipeline.training.run_folder import FeaturesChanged, RunFolderBusy, check_previous
from pipeline.training.sampling import NegativeSampler

__all__ = ["FeaturesChanged", "RunFolderBusy", "RunResult", "TrainerConfig", "TrainingInterrupted", "fit"]


class TrainerConfig(BaseModel):
    """How to train (not what): the model's own hyper-parameters live in its Config."""

    max_epochs: int = Field(1000, ge=1)
    patience: int = Field(10, ge=1, description="stopping_step: epochs without a strict valid Recall@20 improvement")
    seed: int = 999
    device: str | None = Field(None, description="torch device; default cuda if available else cpu")
    num_threads: int | None = Field(None, ge=1, description="CPU threads; default: the CPUs this process may use")
    amp: bool = Field(False, description="bf16 autocast for the loss on CUDA (off by default: not validated here)")
    quiet: bool = False
    min_batches_per_epoch: int = Field(
        MIN_BATCHES_PER_EPOCH,
        ge=1,
        description="small-catalog rule: the batch shrinks so an epoch has at least this many",
    )
    floor: bool = Field(True, description="evaluate MostPop on the split first and flag a run that ends below it")


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


class TrainingInterrupted(RuntimeError):
    """Raised by an ``on_epoch_end`` hook to stop a run (tests simulate a kill with it)."""


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
        loop = _Loop.start(model, config, prepared, trainer, record, run_dir)
        if resume and (run_dir / LAST).exists():
            _restore(loop)
        if plan.adapted:
            loop.log(f"{loop.label}: {plan.note()}")
        record.save(run_dir)  # from here on a kill leaves a record that names its process
        mark_active(run_dir, True)
        try:
            return _finish(loop, _train_epochs(loop, on_epoch_end), graph_build_s)
        finally:
            mark_active(run_dir, False)


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
    record.item_groups = item_group_metrics(res)
    record.status, record.finished_at = "evaluated_only", now()
    record.wall = {"train_total_s": 0.0, "eval_mean_s": eval_s, "graph_build_s": record.graph_build_s or 0.0}
    record.memory = peak_memory(device)
    save_weights(run_dir / BEST, model, list(prepared.train.features.values()), {"epoch": "0"})
    save_per_user(run_dir / PER_USER, res)
    record.save(run_dir)
    if not trainer.quiet:
        say(f"{record.model}: not trainable, evaluated once: valid R@20 {res['valid'].metrics[SELECTION_METRIC]:.4f}")
    return RunResult(run_dir, record, model, res["valid"], res["test"])


def say(message: str) -> None:
    """Above the bar on a terminal; else a plain print, which a Prefect task (log_prints) logs."""
    if sys.stderr.isatty():
        tqdm.write(message)
    else:
        print(message, flush=True)


@dataclass
class _Loop:
    """One training run in progress: what it trains on, where it writes, and what the epoch
    loop carries from one epoch to the next (``last.pt`` restores the latter)."""

    model: Recommender
    config: ModelConfig
    prepared: PreparedData
    trainer: TrainerConfig
    record: RunRecord
    run_dir: Path
    optimiser: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    sampler: NegativeSampler | None
    start_epoch: int = 0
    best: float = float("-inf")
    bad_epochs: int = 0
    best_results: dict[str, EvalResult] | None = None

    @classmethod
    def start(
        cls,
        model: Recommender,
        config: ModelConfig,
        prepared: PreparedData,
        trainer: TrainerConfig,
        record: RunRecord,
        run_dir: Path,
    ) -> "_Loop":
        data = prepared.train
        optimiser, scheduler = make_optimiser(model, config)
        generator = torch.Generator(device=data.device).manual_seed(trainer.seed)
        sampler = (
            NegativeSampler(data.num_items, data.train_users, data.train_items, generator)
            if config.uses_negatives
            else None
        )
        return cls(model, config, prepared, trainer, record, run_dir, optimiser, scheduler, generator, sampler)

    @property
    def device(self) -> torch.device:
        return self.prepared.train.device

    def state(self, epoch: int) -> dict[str, Any]:
        return {
            "optimiser": self.optimiser.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.generator, self.device),
            "epoch": epoch,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "record": self.record.model_dump_json(),
        }

    @property
    def label(self) -> str:
        return f"{self.record.model}{'+befa' if self.record.adapter == 'befa' else ''}"

    def log(self, message: str) -> None:
        if not self.trainer.quiet:
            say(message)


def _restore(loop: _Loop) -> None:
    """Continue from ``last.pt``: weights, optimiser, schedule, RNG states and the record so far."""
    state = load_last(loop.run_dir / LAST, loop.model)
    loop.optimiser.load_state_dict(state["optimiser"])
    loop.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], loop.generator, loop.device)
    loop.start_epoch, loop.best, loop.bad_epochs = state["epoch"] + 1, state["best"], state["bad_epochs"]
    previous, record = RunRecord.model_validate(json.loads(state["record"])), loop.record
    record.epochs, record.best_epoch = previous.epochs, previous.best_epoch
    record.best_valid, record.test = previous.best_valid, previous.test
    record.item_groups = previous.item_groups
    record.started_at = previous.started_at
    record.resumed_at = [*previous.resumed_at, now()]
    loop.log(
        f"resuming {loop.run_dir} at epoch {loop.start_epoch} (best valid R@20 {loop.best:.4f}, {loop.bad_epochs} epochs without gain)"
    )


def _train_epochs(loop: _Loop, on_epoch_end: Callable[[int, RunRecord], None] | None) -> str:
    """Epochs until early stop or ``max_epochs``; returns the run's status."""
    if loop.bad_epochs >= loop.trainer.patience:
        return "early_stopped"
    # the bar only on a terminal: in a log, the epoch lines alone (a bar there is a \r-smeared line)
    quiet = loop.trainer.quiet or not sys.stderr.isatty()
    bar = tqdm(
        range(loop.start_epoch, loop.trainer.max_epochs),
        desc=loop.label,
        disable=quiet,
        leave=False,
        dynamic_ncols=True,
    )
    try:
        for epoch in bar:
            if _one_epoch(loop, epoch, on_epoch_end):
                return "early_stopped"
    except TrainingInterrupted:
        raise  # a simulated kill: leave the folder exactly as a killed process would
    except Exception as exc:
        loop.record.status, loop.record.finished_at, loop.record.error = "failed", now(), f"{type(exc).__name__}: {exc}"
        loop.record.save(loop.run_dir)
        raise
    finally:
        bar.close()
    return "max_epochs"


def _one_epoch(loop: _Loop, epoch: int, on_epoch_end: Callable[[int, RunRecord], None] | None) -> bool:
    """Train one epoch, evaluate, checkpoint; True when early stopping says stop."""
    model, record, data, device = loop.model, loop.record, loop.prepared.train, loop.device
    model.train()
    sync(device)
    t1 = time.perf_counter()
    amp = loop.trainer.amp and device.type == "cuda"
    mean_loss, _ = run_epoch(
        model, loop.optimiser, data, loop.config.batch_size, loop.generator, loop.sampler, epoch, amp
    )
    if not math.isfinite(mean_loss):
        raise FloatingPointError(
            f"{record.model}: loss became {mean_loss} in epoch {epoch} (lr {loop.scheduler.get_last_lr()[0]:g})"
        )
    lr = loop.scheduler.get_last_lr()[0]
    loop.scheduler.step()
    sync(device)
    train_s = time.perf_counter() - t1

    t2 = time.perf_counter()
    res = evaluate_model(model, loop.prepared.evaluator, ("valid", "test"))
    eval_s = time.perf_counter() - t2
    valid = res["valid"].metrics
    record.epochs.append(EpochLog(epoch=epoch, loss=mean_loss, lr=lr, train_s=train_s, eval_s=eval_s, valid=valid))
    score = valid[SELECTION_METRIC]
    improved = score > loop.best
    inputs = list(data.features.values())
    if improved:
        loop.best, loop.bad_epochs, loop.best_results = score, 0, res
        record.best_epoch, record.best_valid, record.test = epoch, valid, res["test"].metrics
        record.item_groups = item_group_metrics(res)
        save_weights(loop.run_dir / BEST, model, inputs, {"epoch": str(epoch)})
        save_per_user(loop.run_dir / PER_USER, res)
    else:
        loop.bad_epochs += 1
    save_last(loop.run_dir / LAST, model, inputs, loop.state(epoch))
    record.memory = peak_memory(device)
    record.save(loop.run_dir)
    loop.log(
        f"{loop.label} epoch {epoch:4d}  loss {mean_loss:.4f}  valid R@20 {score:.4f}"
        f"{' *' if improved else '  '}  {train_s:.2f} s/epoch  eval {eval_s:.2f} s"
    )
    if on_epoch_end is not None:
        on_epoch_end(epoch, record)
    return loop.bad_epochs >= loop.trainer.patience


def _finish(loop: _Loop, status: str, graph_build_s: float) -> RunResult:
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
