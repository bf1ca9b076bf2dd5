"""Batching rules: the small-catalog minimum of steps per epoch, and the opt-in large-catalog cap.

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

Torch-free, like :mod:`pipeline.training.record`.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel

MIN_BATCHES_PER_EPOCH = 16


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
                f"batch size {self.configured_batch_size} -> {self.batch_size}, "
                f"lr {self.configured_lr:g} -> {self.lr:g}: {self.train_interactions:,} train interactions "
                f"would give more than {self.max_batches} batches per epoch "
                f"(rule max_batches_per_epoch={self.max_batches}, lr by the square root of the batch growth)"
            )
        return (
            f"batch size {self.configured_batch_size} -> {self.batch_size}: {self.train_interactions:,} "
            f"train interactions would give fewer than {self.min_batches} batches per epoch "
            f"(rule min_batches_per_epoch={self.min_batches})"
        )


def _batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size) if n else 0


def plan_batches(
    train_interactions: int,
    batch_size: int,
    min_batches: int = MIN_BATCHES_PER_EPOCH,
    max_batches: int | None = None,
    lr: float | None = None,
) -> BatchPlan:
    """The batch size (and lr) an epoch uses: ``batch_size``; smaller so an epoch has
    ``min_batches`` steps; or, with ``max_batches``, larger so it has at most that many, the
    lr scaled by the square root of the growth."""
    if max_batches is not None and max_batches < min_batches:
        raise ValueError(
            f"--set max_batches_per_epoch={max_batches} "
            f"is below the small-catalog rule's {min_batches} batches per epoch"
        )
    effective, effective_lr = batch_size, lr
    if train_interactions and _batches(train_interactions, batch_size) < min_batches:
        effective = max(1, min(batch_size, train_interactions // min_batches))
    elif max_batches is not None and _batches(train_interactions, batch_size) > max_batches:
        effective = _batches(train_interactions, max_batches)
        effective_lr = None if lr is None else lr * math.sqrt(effective / batch_size)
    return BatchPlan(
        min_batches=min_batches,
        train_interactions=train_interactions,
        configured_batch_size=batch_size,
        batch_size=effective,
        batches_per_epoch=_batches(train_interactions, effective),
        max_batches=max_batches,
        configured_lr=lr,
        lr=effective_lr,
    )
