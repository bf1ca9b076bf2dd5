"""The MostPop floor every trained run is checked against, and what the run's epoch log
measures when it ends below it.

**The floor (``RunRecord.floor``).** Before a trainable run starts, MostPop is evaluated on
the same split (one full-ranking pass, no RNG drawn). A run whose best valid Recall@20 ends
below MostPop's valid Recall@20 is flagged. The comparison is on valid, the selection split;
test values are recorded beside it for the reports.

**The diagnosis** is measured, not guessed (``pipeline.training.diagnosis``): "overfits after
epoch N" when the train loss kept falling while valid fell after its peak, a flat loss, an
early peak, a run still improving at ``max_epochs``; or, when the log shows none of them,
what it does show. Beside it: what was tried (``befa run``'s fit, a search on valid,
``RunRecord.fit``, or nothing) and what to try, each with a flag ``befa run`` and ``befa train``
take (``--set MODEL.KEY=VALUE``, ``--epochs``; ``--fit``/``--fit-trials`` are ``befa run``'s).

Torch-free, like :mod:`pipeline.training.record`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from pipeline.training.batching import BatchPlan
from pipeline.training.diagnosis import FLAT_LOSS, early_peak, flat_loss, overfit, still_improving

__all__ = ["FLAT_LOSS", "FLOOR_METRIC", "FLOOR_MODEL", "FloorCheck", "judge_floor", "likely_causes", "to_try"]

FLOOR_MODEL = "mostpop"
FLOOR_METRIC = "recall@20"


class FloorCheck(BaseModel):
    """MostPop on the run's split, and where the run ended against it."""

    model: str = FLOOR_MODEL
    metric: str = FLOOR_METRIC
    floor_valid: float
    floor_test: float
    run_valid: float | None = None
    run_test: float | None = None
    below: bool | None = Field(None, description="best valid metric < MostPop's valid metric; None while training")
    # what the epoch log measures, each "<short name>: <detail>"
    causes: list[str] = Field(default_factory=list)
    tried: str | None = Field(None, description="what was tried to fit the model to the catalog (None: older records)")
    to_try: list[str] = Field(default_factory=list, description="what to try next, each with its flag")

    def line(self, label: str) -> str:
        """One console/report line; empty when the run is at or above the floor."""
        if not self.below:
            return ""
        text = (
            f"{label} ended BELOW the MostPop floor: valid {self.metric} {self.run_valid:.4f} < {self.floor_valid:.4f} "
            f"(test {self.run_test or 0.0:.4f} vs {self.floor_test:.4f}). Measured: " + "; ".join(self.causes)
        )
        if self.tried:
            text += f". Tried: {self.tried}"
        if self.to_try:
            text += ". Try: " + "; ".join(self.to_try)
        return text


def judge_floor(check: FloorCheck, record: Any, plan: BatchPlan | None = None) -> FloorCheck:
    """``check`` completed with the run's best metrics and, when below, the diagnosis."""
    out = check.model_copy()
    out.run_valid = record.best_valid.get(check.metric)
    out.run_test = record.test.get(check.metric)
    out.below = out.run_valid is not None and out.run_valid < check.floor_valid
    out.causes = likely_causes(record, plan) if out.below else []
    out.tried = tried(record) if out.below else None
    out.to_try = to_try(record) if out.below else []
    return out


def likely_causes(record: Any, plan: BatchPlan | None = None) -> list[str]:
    """What the epoch log measures (``pipeline.training.diagnosis``); each reads ``"<short name>: <detail>"``."""
    epochs, best, causes = record.epochs, record.best_epoch, []
    over = overfit(epochs, best)
    if over is not None:
        causes.append(over.cause())
    flat = flat_loss(epochs, best) if over is None else None  # a loss that kept falling after the peak learned
    if flat is not None:
        lr = float(record.config.get("lr") or float("nan"))
        causes.append(f"a flat training loss: it barely moved ({flat[0]:.4f} -> {flat[1]:.4f}) at learning rate {lr:g}")
    if early_peak(epochs, best) and flat is None and over is None:  # a flat loss learned nothing: its peak is noise
        causes.append(f"an early peak: valid {FLOOR_METRIC} peaked at epoch {best} and never improved after")
    if still_improving(epochs, best, record.status):
        causes.append(f"still improving: the best epoch {best} is the last one ({record.status})")
    if not causes:
        causes.append(no_pattern(record, plan))
    return causes


def no_pattern(record: Any, plan: BatchPlan | None) -> str:
    """What the log shows when none of the patterns is in it: the numbers, no claim."""
    losses = [e.loss for e in record.epochs if e.loss is not None]
    moved = f"the loss went {losses[0]:.4f} -> {losses[-1]:.4f}, " if len(losses) >= 2 else ""
    batches = f" ({plan.batches_per_epoch} batches of {plan.batch_size} per epoch)" if plan is not None else ""
    last = record.epochs[-1].valid.get(FLOOR_METRIC) if record.epochs else None
    ended = f", ending at {last:.4f}" if last is not None else ""
    return (
        f"no training pattern: {moved}valid {FLOOR_METRIC} peaked at epoch {record.best_epoch} of "
        f"{len(record.epochs)} at {record.best_valid.get(FLOOR_METRIC, float('nan')):.4f}{ended}{batches}; "
        "the configuration itself falls short on this catalog"
    )


def tried(record: Any) -> str:
    """The search the run came out of (``RunRecord.fit``), or that it trained the defaults as given."""
    fit = getattr(record, "fit", None)
    if fit is None:
        return "no search: the run trained its configuration as given"
    return fit.tried()


def to_try(record: Any) -> list[str]:
    """What to try next for this run, each with a flag ``befa run`` takes."""
    model, config, epochs, best = record.model, record.config, record.epochs, record.best_epoch
    out = []
    if overfit(epochs, best) is not None and int(config.get("embedding_dim") or 0) >= 16:
        out.append(f"less capacity: --set {model}.embedding_dim={int(config['embedding_dim']) // 2}")
    lr, over = config.get("lr"), overfit(epochs, best) is not None
    if lr and not over and flat_loss(epochs, best) is not None:
        out.append(f"a higher learning rate: --set {model}.lr={float(lr) * 5:g}")
    elif lr and not over and early_peak(epochs, best):
        out.append(f"a lower learning rate: --set {model}.lr={float(lr) / 5:g}")
    if still_improving(epochs, best, record.status):
        out.append(f"more epochs: --epochs {2 * int(record.trainer.get('max_epochs') or len(epochs))}")
    fit = getattr(record, "fit", None)
    if fit is None:
        out.append("a seeded search on valid of lr and the model's grid: befa run --fit on")
    elif fit.exhausted:
        out.append("the answer over several seeds (the fit tried its whole space): befa study")
    else:
        out.append(f"a longer search: befa run --fit on --fit-trials {2 * fit.budget}")
    return out
