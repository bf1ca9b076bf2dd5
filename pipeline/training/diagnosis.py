"""What a run's epoch log measures about how it trained: the patterns the floor check reports
(``pipeline.training.floor_check``), each read off the per-epoch train loss and valid
Recall@20 (``RunRecord.epochs``), none guessed.

- **overfits after epoch N**: valid Recall@20 peaked at epoch N (the best epoch), at least
  :data:`MIN_EPOCHS_AFTER` epochs ran after it, the train loss kept falling after the peak (it
  fell in most post-peak epochs and ended at least :data:`LOSS_STILL_FALLING` below its value at
  the peak) while valid fell (its last value at least :data:`VALID_FELL` below the peak);
- **a flat training loss**: the loss moved by less than :data:`FLAT_LOSS` between the first and
  the best epoch;
- **an early peak**: valid peaked in epoch 0 or 1 and never improved after (with a loss that moved);
- **still improving**: the best epoch is the last one and the run hit ``max_epochs``.

Torch-free, like :mod:`pipeline.training.record`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

METRIC = "recall@20"
MIN_EPOCHS_AFTER = 3  # post-peak epochs needed to call a trend
LOSS_STILL_FALLING = 0.02  # the last loss at least 2% below the loss at the peak
VALID_FELL = 0.02  # the last valid value at least 2% below the peak
FLAT_LOSS = 0.10  # a loss that fell by less than 10% between the first and the best epoch "barely moved"


@dataclass(frozen=True)
class Overfit:
    """Valid fell after its peak while the train loss kept falling."""

    after: int  # the peak (best) epoch
    epochs: int  # epochs run
    loss_at_peak: float
    loss_last: float
    valid_peak: float
    valid_last: float

    def cause(self) -> str:
        return (
            f"overfits after epoch {self.after}: the train loss kept falling "
            f"({self.loss_at_peak:.4f} at the peak -> {self.loss_last:.4f} at epoch {self.epochs - 1}) "
            f"while valid {METRIC} fell from {self.valid_peak:.4f} to {self.valid_last:.4f}"
        )


def _losses(epochs: Sequence[Any]) -> list[tuple[int, float]]:
    return [(e.epoch, float(e.loss)) for e in epochs if e.loss is not None]


def overfit(epochs: Sequence[Any], best_epoch: int | None) -> Overfit | None:
    """The overfitting pattern in an epoch log (see the module), or None."""
    if best_epoch is None:
        return None
    peak = next((e for e in epochs if e.epoch == best_epoch), None)
    after = [e for e in epochs if e.epoch > best_epoch]
    if peak is None or peak.loss is None or len(after) < MIN_EPOCHS_AFTER:
        return None
    losses = [float(peak.loss)] + [float(e.loss) for e in after if e.loss is not None]
    falls = sum(b < a for a, b in zip(losses, losses[1:]))
    loss_falling = falls * 2 > len(losses) - 1 and losses[-1] <= losses[0] * (1 - LOSS_STILL_FALLING)
    valid_peak, valid_last = peak.valid.get(METRIC), after[-1].valid.get(METRIC)
    if valid_peak is None or valid_last is None:
        return None
    valid_fell = valid_last <= valid_peak * (1 - VALID_FELL)
    if not (loss_falling and valid_fell):
        return None
    return Overfit(best_epoch, len(epochs), losses[0], losses[-1], valid_peak, valid_last)


def flat_loss(epochs: Sequence[Any], best_epoch: int | None) -> tuple[float, float] | None:
    """(first loss, loss at the best epoch) when the loss barely moved between them, else None."""
    losses = _losses(epochs)
    if len(losses) < 2:
        return None
    best = best_epoch if best_epoch is not None else 0
    first = losses[0][1]
    at_best = next((loss for epoch, loss in losses if epoch == best), losses[min(best, len(losses) - 1)][1])
    return (first, at_best) if first > 0 and (first - at_best) / first < FLAT_LOSS else None


def early_peak(epochs: Sequence[Any], best_epoch: int | None) -> bool:
    """Valid peaked in epoch 0 or 1 and later epochs ran without improving it."""
    best = best_epoch if best_epoch is not None else 0
    return best <= 1 and len(epochs) > best + 1


def still_improving(epochs: Sequence[Any], best_epoch: int | None, status: str) -> bool:
    """The best epoch is the last one and the run stopped at ``max_epochs``: more epochs may help."""
    return status == "max_epochs" and bool(epochs) and best_epoch == epochs[-1].epoch
