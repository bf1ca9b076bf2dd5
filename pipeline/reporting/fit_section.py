"""``befa run``'s fit in the pipeline report: per fitted run, the search on valid it came out of
(trials, pruned, valid Recall@20 of the default configuration against the winner's, the
winner's values, what stopped the search) and what its epoch log measures (overfitting after
the peak, ``pipeline.training.diagnosis``). Read from each run's record (``RunRecord.fit``).
"""

from __future__ import annotations

from typing import Sequence

from pipeline.reporting.common import ADAPTER_LABEL, fmt_number, markdown_table
from pipeline.training.diagnosis import overfit
from pipeline.training.record import RunRecord


def _label(rec: RunRecord) -> str:
    return f"{rec.model} {ADAPTER_LABEL.get(rec.adapter, rec.adapter)}"


def _change(gain: float | None) -> str:
    return "-" if gain is None else f"{gain:+.1%}"


def pattern(rec: RunRecord) -> str:
    """The training pattern the run's epoch log measures, or '-'."""
    over = overfit(rec.epochs, rec.best_epoch)
    return f"overfits after epoch {over.after}" if over is not None else "-"


def fit_section(records: Sequence[RunRecord]) -> list[str]:
    """Markdown: the fitted runs, one row each; nothing when no run was fitted."""
    fitted = [r for r in records if r.fit is not None]
    if not fitted:
        return []
    first = fitted[0].fit
    lines = [
        "",
        "## Fit to the catalog",
        "",
        f"Each run below is the winner of a short search on VALID Recall@20 before it ran ({first.reason}): "
        f"TPE seeded with {first.seed}, the default configuration first, a median pruner on valid; "
        "no test metric was read for any decision. The search's trials are in each run's `fit/` folder.",
        "",
    ]
    rows = []
    for rec in fitted:
        fit = rec.fit
        pruned = sum(t.state == "pruned" for t in fit.trials)
        rows.append(
            [
                _label(rec),
                f"{len(fit.trials)} of {fit.space_size} ({pruned} pruned)",
                fmt_number(fit.default_valid),
                fmt_number(fit.winner_valid),
                _change(fit.gain),
                fit.winner_text(),
                fit.stopped_by,
                f"{fit.seconds:.0f}",
                pattern(rec),
            ]
        )
    lines += markdown_table(
        ["run", "trials", "valid R@20 defaults", "winner", "change", "winner's values", "stopped by", "s", "epoch log"],
        rows,
        ["---", "---:", "---:", "---:", "---:", "---", "---", "---:", "---"],
    )
    return lines
