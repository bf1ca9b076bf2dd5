"""Batching rules (small catalogs; large ones, opt-in), and the MostPop floor every trained run is checked against.

**The rule (one, recorded in every run record as ``RunRecord.batching``).** An epoch has at
least :data:`MIN_BATCHES_PER_EPOCH` optimiser steps: when ``ceil(train / batch_size)`` is
smaller, the batch shrinks to ``floor(train / MIN_BATCHES_PER_EPOCH)``. The protocol's batch
of 2048 was tuned on catalogs with tens of batches per epoch; a 10k-interaction catalog
gives 4, so the loss barely moves before early stopping ends the run. 16 keeps every
catalog of the protocol untouched at 2048: movielens-100k (44,630 train interactions at
ratings >= 4, 80,367 with every rating, random split seed 2024: 22 and 40 batches) and
amazon-baby (119,674 in its given split: 59 batches).

**The large-catalog rule (opt-in: ``--set max_batches_per_epoch=N``).** With full-graph
propagation in every step, an epoch costs (batches) x (one pass over the graph): both grow
with the catalog, so at a fixed batch the epoch grows as size^2. With ``N`` set, an epoch
has at most ``N`` steps: the batch grows to ``ceil(train / N)`` and the learning rate by
``sqrt(new batch / asked batch)`` (the square-root rule for Adam), both recorded. It changes
the optimisation, so it is never applied unasked. ``make bench-batch-rule`` measures what it
costs in quality, ``make bench-scale ARGS="--max-batches N"`` what it saves in time.

**The floor (``RunRecord.floor``).** Before a trainable run starts, MostPop is evaluated on
the same split (one full-ranking pass, no RNG drawn). A run whose best valid Recall@20 ends
below MostPop's valid Recall@20 is flagged, with the likely causes read off its record. The
comparison is on valid, the selection split; test values are recorded beside it for the
reports.

Torch-free, like :mod:`pipeline.training.record`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

from pydantic import BaseModel, Field

MIN_BATCHES_PER_EPOCH = 16
FLOOR_MODEL = "mostpop"
FLOOR_METRIC = "recall@20"
# Below this many optimiser steps before the best epoch, a BPR model has rarely converged
# on the protocol's catalogs (LightGCN on movielens peaks after ~1,300: 22 batches x 60 epochs).
FEW_STEPS = 1000
# A training loss that fell by less than this share between the first and the best epoch
# "barely moved".
FLAT_LOSS = 0.10


class BatchPlan(BaseModel):
    """How one run's epochs were batched, and whether a batching rule changed the batch (and lr)."""

    rule: Literal["min_batches_per_epoch"] = "min_batches_per_epoch"
    min_batches: int
    train_interactions: int
    configured_batch_size: int
    batch_size: int
    batches_per_epoch: int
    max_batches: int | None = None  # the large-catalog rule's cap, when asked for
    configured_lr: float | None = None
    lr: float | None = None  # the lr the run uses: configured_lr x sqrt(batch growth) under the cap

    @property
    def adapted(self) -> bool:
        return self.batch_size != self.configured_batch_size

    @property
    def label(self) -> str:
        return "large catalog" if self.batch_size > self.configured_batch_size else "small catalog"

    def note(self) -> str:
        if not self.adapted:
            return ""
        if self.batch_size > self.configured_batch_size:
            return (
                f"batch size {self.configured_batch_size} -> {self.batch_size}, lr {self.configured_lr:g} -> {self.lr:g}: "
                f"{self.train_interactions:,} train interactions would give more than {self.max_batches} batches per epoch "
                f"(rule max_batches_per_epoch={self.max_batches}, lr by the square root of the batch growth)"
            )
        return (
            f"batch size {self.configured_batch_size} -> {self.batch_size}: {self.train_interactions:,} train interactions "
            f"would give fewer than {self.min_batches} batches per epoch (rule min_batches_per_epoch={self.min_batches})"
        )


def _batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size) if n else 0


def plan_batches(
    train_interactions: int, batch_size: int, min_batches: int = MIN_BATCHES_PER_EPOCH,
    max_batches: int | None = None, lr: float | None = None,
) -> BatchPlan:
    """The batch size (and lr) an epoch uses: ``batch_size``; smaller so an epoch has
    ``min_batches`` steps; or, with ``max_batches``, larger so it has at most that many, the
    lr scaled by the square root of the growth."""
    if max_batches is not None and max_batches < min_batches:
        raise ValueError(f"--set max_batches_per_epoch={max_batches} is below the small-catalog rule's {min_batches} batches per epoch")
    effective, effective_lr = batch_size, lr
    if train_interactions and _batches(train_interactions, batch_size) < min_batches:
        effective = max(1, min(batch_size, train_interactions // min_batches))
    elif max_batches is not None and _batches(train_interactions, batch_size) > max_batches:
        effective = _batches(train_interactions, max_batches)
        effective_lr = None if lr is None else lr * math.sqrt(effective / batch_size)
    return BatchPlan(
        min_batches=min_batches, train_interactions=train_interactions, configured_batch_size=batch_size,
        batch_size=effective, batches_per_epoch=_batches(train_interactions, effective),
        max_batches=max_batches, configured_lr=lr, lr=effective_lr,
    )


class FloorCheck(BaseModel):
    """MostPop on the run's split, and where the run ended against it."""

    model: str = FLOOR_MODEL
    metric: str = FLOOR_METRIC
    floor_valid: float
    floor_test: float
    run_valid: float | None = None
    run_test: float | None = None
    below: bool | None = Field(None, description="best valid metric < MostPop's valid metric; None while training")
    causes: list[str] = Field(default_factory=list)

    def line(self, label: str) -> str:
        """One console/report line; empty when the run is at or above the floor."""
        if not self.below:
            return ""
        return (
            f"{label} ended BELOW the MostPop floor: valid {self.metric} {self.run_valid:.4f} < {self.floor_valid:.4f} "
            f"(test {self.run_test or 0.0:.4f} vs {self.floor_test:.4f}). Likely: " + "; ".join(self.causes)
        )


def judge_floor(check: FloorCheck, record: Any, plan: BatchPlan | None) -> FloorCheck:
    """``check`` completed with the run's best metrics and, when below, the likely causes."""
    out = check.model_copy()
    out.run_valid = record.best_valid.get(check.metric)
    out.run_test = record.test.get(check.metric)
    out.below = out.run_valid is not None and out.run_valid < check.floor_valid
    out.causes = likely_causes(record, plan) if out.below else []
    return out


def likely_causes(record: Any, plan: BatchPlan | None) -> list[str]:
    """What in the record explains a run below the floor: few steps, a flat loss, an early peak.
    Each cause reads ``"<short name>: <detail and what to try>"``."""
    epochs: Sequence[Any] = record.epochs
    best = record.best_epoch if record.best_epoch is not None else 0
    lr = float(record.config.get("lr") or float("nan"))
    causes = []
    if plan is not None:
        steps = plan.batches_per_epoch * (best + 1)
        if steps < FEW_STEPS:
            causes.append(
                f"too few optimiser steps: the best epoch {best} came after {steps} steps ({plan.batches_per_epoch} batches "
                f"of {plan.batch_size} per epoch); try a smaller batch (--set batch_size=256) or more --patience / --epochs"
            )
    losses = [e.loss for e in epochs if e.loss is not None]
    flat = False
    if len(losses) >= 2:
        first, at_best = losses[0], losses[min(best, len(losses) - 1)]
        flat = first > 0 and (first - at_best) / first < FLAT_LOSS
        if flat:
            causes.append(f"a flat training loss: it barely moved ({first:.4f} -> {at_best:.4f}), learning rate {lr:g} too low for this budget; try --set lr=5e-3")
    if len(epochs) > best + 1 and best <= 1 and not flat:  # a flat loss learned nothing: its "peak" is noise
        causes.append(f"an early peak: valid {FLOOR_METRIC} peaked at epoch {best} and never improved after, learning rate {lr:g} may be too high")
    if not causes:
        causes.append("unsuited hyper-parameters: nothing in the record points elsewhere; search them on valid with `befa study`")
    return causes
