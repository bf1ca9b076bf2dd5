"""The epoch loop of one training run: what it carries from epoch to epoch (:class:`EpochLoop`,
what ``last.pt`` restores), one epoch (train, evaluate valid and test, checkpoint), and
the loop to early stopping or ``max_epochs``. :func:`pipeline.training.trainer.fit` sets a
run up and closes it; the protocol is described there.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from models.base import ModelConfig, Recommender
from pipeline.device import peak_memory, sync
from pipeline.evaluation.evaluator import EvalResult, evaluate_model
from pipeline.evaluation.metrics import SELECTION_METRIC
from pipeline.training.batching import MIN_BATCHES_PER_EPOCH
from pipeline.training.best_results import keep_best_results
from pipeline.training.checkpoints import load_last, rng_state, save_last, save_weights, set_rng_state
from pipeline.training.epochs import make_optimiser, run_epoch
from pipeline.training.gate_health import model_gate_stats
from pipeline.training.prepare import PreparedData
from pipeline.training.record import BEST, LAST, EpochLog, RunRecord, now
from pipeline.training.sampling import NegativeSampler


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
    map_new_items: bool = Field(
        True,
        description="after a content model's run on a split with cold items, fit the content mappers "
        "(pipeline.training.mapping) so cold and new items get representations from their content",
    )


class TrainingInterrupted(RuntimeError):
    """Raised by an ``on_epoch_end`` hook to stop a run (tests simulate a kill with it)."""


def say(message: str) -> None:
    """Above the bar on a terminal; else a plain print, which a Prefect task (log_prints) logs."""
    if sys.stderr.isatty():
        tqdm.write(message)
    else:
        print(message, flush=True)


@dataclass
class EpochLoop:
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
    ) -> "EpochLoop":
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


def restore(loop: EpochLoop) -> None:
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
        f"resuming {loop.run_dir} at epoch {loop.start_epoch} "
        f"(best valid R@20 {loop.best:.4f}, {loop.bad_epochs} epochs without gain)"
    )


def train_epochs(loop: EpochLoop, on_epoch_end: Callable[[int, RunRecord], None] | None) -> str:
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
            if one_epoch(loop, epoch, on_epoch_end):
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


def one_epoch(loop: EpochLoop, epoch: int, on_epoch_end: Callable[[int, RunRecord], None] | None) -> bool:
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
    gates = model_gate_stats(model)  # +BeFA only: one gate pass over every item per modality, after the evaluation
    record.epochs.append(
        EpochLog(epoch=epoch, loss=mean_loss, lr=lr, train_s=train_s, eval_s=eval_s, valid=valid, gates=gates)
    )
    score = valid[SELECTION_METRIC]
    improved = score > loop.best
    inputs = list(data.features.values())
    if improved:
        loop.best, loop.bad_epochs, loop.best_results = score, 0, res
        record.best_epoch, record.best_valid, record.test = epoch, valid, res["test"].metrics
        keep_best_results(record, model, loop.prepared.evaluator, res, loop.run_dir)
        save_weights(loop.run_dir / BEST, model, inputs, {"epoch": str(epoch)})
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
