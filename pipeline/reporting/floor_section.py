"""The MostPop floor in the pipeline report: the section that shows it, the runs below it
(with what their epoch log measures, what was tried and what to try: ``pipeline.training.floor_check``),
the small-catalog batch rule where it applied, interrupted runs, and the reference line on
the training curves.

A trained run's record carries the floor it was checked against (``RunRecord.floor``); the
MostPop run itself (``befa run`` always trains it) carries the same numbers as its metrics.
"""

from __future__ import annotations

from typing import Any, Sequence

from pipeline.reporting.common import ADAPTER_LABEL, fmt_number, markdown_table
from pipeline.training.floor_check import FLOOR_METRIC, FLOOR_MODEL
from pipeline.training.liveness import interrupted_note
from pipeline.training.record import RunRecord


def label(rec: RunRecord) -> str:
    return f"{rec.model} {ADAPTER_LABEL.get(rec.adapter, rec.adapter)}"


def floor_values(records: Sequence[RunRecord], metric: str = FLOOR_METRIC) -> tuple[float | None, float | None]:
    """MostPop's (valid, test) ``metric`` on this split: from its own run, else from a run's floor check."""
    for rec in records:
        if rec.model == FLOOR_MODEL and metric in rec.best_valid:
            return rec.best_valid.get(metric), rec.test.get(metric)
    for rec in records:
        if rec.floor is not None and rec.floor.metric == metric:
            return rec.floor.floor_valid, rec.floor.floor_test
    return None, None


def vs_floor(rec: RunRecord) -> str:
    """The runs table's cell: below / above the floor, or '-' (MostPop itself, unchecked runs)."""
    if rec.floor is None or rec.floor.below is None:
        return "-"
    return "**BELOW**" if rec.floor.below else "above"


def floor_section(records: Sequence[RunRecord]) -> list[str]:
    """Markdown: the floor, every run against it, the flagged runs with their diagnosis."""
    valid, test = floor_values(records)
    lines = ["", "## Floor: MostPop", ""]
    if valid is None:
        return lines + ["No MostPop floor was computed for these runs."]
    lines.append(
        f"MostPop (popularity, nothing learned) on this split: valid {FLOOR_METRIC} {valid:.4f}, "
        f"test {fmt_number(test)}. A run whose best valid value ends below it learned less than counting clicks."
    )
    rows = [
        [label(r), fmt_number(r.best_valid.get(FLOOR_METRIC)), fmt_number(r.test.get(FLOOR_METRIC)), vs_floor(r)]
        for r in records
        if r.model != FLOOR_MODEL
    ]
    if rows:
        lines += [""] + markdown_table(
            ["run", f"valid {FLOOR_METRIC}", f"test {FLOOR_METRIC}", "vs floor"], rows, ["---", "---:", "---:", "---"]
        )
    flagged = [r for r in records if r.below_floor]
    if flagged:
        lines += [
            "",
            f"**{len(flagged)} run(s) ended below the floor.** What each run's epoch log measures, "
            "what was tried, what to try:",
            "",
        ]
        lines += [f"- {label(r)}: {flagged_line(r)}" for r in flagged]
    adapted = [r for r in records if r.batching is not None and r.batching.adapted]
    if adapted:
        lines += ["", adapted[0].batching.label.capitalize() + ": " + adapted[0].batching.note() + "."]
    return lines


def flagged_line(rec: RunRecord) -> str:
    """A flagged run's diagnosis: measured causes, then what was tried and what to try."""
    floor = rec.floor
    text = "; ".join(floor.causes)
    if floor.tried:
        text += f". Tried: {floor.tried}"
    if floor.to_try:
        text += ". Try: " + "; ".join(f"`{t.split(': ', 1)[1]}` ({t.split(': ', 1)[0]})" if ": " in t else t
                                      for t in floor.to_try)  # fmt: skip
    return text


def state_notes(records: Sequence[RunRecord]) -> list[str]:
    """Notes for runs whose record says running but whose process is gone."""
    return [interrupted_note(r) for r in records if r.state == "interrupted"]


def draw_floor(ax: Any, records: Sequence[RunRecord], metric: str = FLOOR_METRIC) -> None:
    """MostPop's valid ``metric`` as a horizontal reference line (it has no epochs to plot)."""
    valid, _ = floor_values(records, metric)
    if valid is not None:
        ax.axhline(valid, color="0.35", linestyle=":", linewidth=1.4, label=f"MostPop floor ({valid:.4f})")
