"""The MostPop floor every trained run is checked against, and the likely causes of a run below it.

**The floor (``RunRecord.floor``).** Before a trainable run starts, MostPop is evaluated on
the same split (one full-ranking pass, no RNG drawn). A run whose best valid Recall@20 ends
below MostPop's valid Recall@20 is flagged, with the likely causes read off its record. The
comparison is on valid, the selection split; test values are recorded beside it for the
reports.

Torch-free, like :mod:`pipeline.training.record`.
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import BaseModel, Field

from pipeline.training.batching import BatchPlan

FLOOR_MODEL = "mostpop"
FLOOR_METRIC = "recall@20"
# Below this many optimiser steps before the best epoch, a BPR model has rarely converged
# on the protocol's catalogs (LightGCN on movielens peaks after ~1,300: 22 batches x 60 epochs).
FEW_STEPS = 1000
# A training loss that fell by less than this share between the first and the best epoch
# "barely moved".
FLAT_LOSS = 0.10


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
                f"too few optimiser steps: the best epoch {best} came after {steps} steps "
                f"({plan.batches_per_epoch} batches of {plan.batch_size} per epoch); "
                "try a smaller batch (--set '*.batch_size=256') or more --patience / --epochs"
            )
    losses = [e.loss for e in epochs if e.loss is not None]
    flat = False
    if len(losses) >= 2:
        first, at_best = losses[0], losses[min(best, len(losses) - 1)]
        flat = first > 0 and (first - at_best) / first < FLAT_LOSS
        if flat:
            causes.append(
                f"a flat training loss: it barely moved ({first:.4f} -> {at_best:.4f}), "
                f"learning rate {lr:g} too low for this budget; try --set '*.lr=5e-3'"
            )
    if len(epochs) > best + 1 and best <= 1 and not flat:  # a flat loss learned nothing: its "peak" is noise
        causes.append(
            f"an early peak: valid {FLOOR_METRIC} peaked at epoch {best} and never improved after, "
            f"learning rate {lr:g} may be too high"
        )
    if not causes:
        causes.append(
            "unsuited hyper-parameters: nothing in the record points elsewhere; search them on valid with `befa study`"
        )
    return causes
