"""Gate health in the reports: per +BeFA run and modality, BeFA's gate at the best valid
epoch (mean, spread over items, shares at the ends; definitions and the collapse rule in
``pipeline.training.gate_health``), and for a collapsed gate the line "BeFA's gate
collapsed: the adapter is off": that run's +BeFA number measures the base model with an
adapter that selects nothing, not BeFA's effect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.reporting.common import ADAPTER_LABEL, fmt_number, markdown_table
from pipeline.training.gate_health import COLLAPSED, END_SHARE, HIGH, LOW, SPREAD_FLOOR, collapse_line
from pipeline.training.record import RunRecord

INERT = "BeFA is inert in this run: its adapter reaches neither the loss nor the scores"


def run_label(rec: RunRecord) -> str:
    """``model +BeFA (insertion)``: the insertion where the config names one."""
    insertion = (rec.config.get("befa") or {}).get("insertion")
    label = f"{rec.model} {ADAPTER_LABEL.get(rec.adapter, rec.adapter)}"
    return f"{label} ({insertion})" if insertion else label


def befa_runs(records: Sequence[RunRecord]) -> list[RunRecord]:
    return [r for r in records if r.adapter == "befa"]


def collapse_lines(records: Sequence[RunRecord]) -> list[str]:
    """One warning per +BeFA run whose adapter was inert (it reached nothing), and per +BeFA
    run and modality whose gate had collapsed at the best valid epoch."""
    inert = [f"{run_label(rec)}: {INERT}: {rec.befa_inert}" for rec in befa_runs(records) if rec.befa_inert]
    return inert + [
        collapse_line(run_label(rec), modality, stats)
        for rec in befa_runs(records)
        for modality, stats in rec.best_gates.items()
        if stats.collapsed
    ]


def collapsed_models(records: Sequence[RunRecord]) -> dict[str, list[str]]:
    """model -> the sorted modalities whose gate collapsed at the best epoch in any of its +BeFA runs."""
    out: dict[str, set[str]] = {}
    for rec in befa_runs(records):
        out.setdefault(rec.model, set()).update(m for m, collapsed in rec.gate_collapsed.items() if collapsed)
    return {model: sorted(ms) for model, ms in out.items() if ms}


def gains_caveats(records: Sequence[RunRecord]) -> list[str]:
    """Lines for under the base vs +BeFA table: the models whose +BeFA number is not BeFA's effect."""
    inert = sorted({rec.model for rec in befa_runs(records) if rec.befa_inert})
    return [f"{model} +BeFA: {INERT}; its gain is not BeFA's effect (see Gate health)." for model in inert] + [
        f"{model} +BeFA ({', '.join(ms)}): {COLLAPSED}; its gain is not BeFA's effect (see Gate health)."
        for model, ms in collapsed_models(records).items()
        if model not in inert
    ]


def gate_section(records: Sequence[RunRecord]) -> list[str]:
    """Markdown: the Gate health section; nothing when no run used BeFA."""
    runs = befa_runs(records)
    if not runs:
        return []
    lines = [
        "",
        "## Gate health",
        "",
        f"BeFA's gate over every item at the best valid epoch. Spread = std over items per dimension, "
        f"averaged over dimensions; collapsed = spread < {SPREAD_FLOOR:g} or more than {END_SHARE:.0%} of "
        f"the values > {HIGH} or < {LOW}.",
        "",
    ]
    rows, unrecorded = [], []
    for rec in runs:
        gates = rec.best_gates
        if not gates:
            unrecorded.append(rec)
        for modality, s in gates.items():
            rows.append(
                [
                    run_label(rec),
                    modality,
                    "-" if rec.best_epoch is None else rec.best_epoch,
                    fmt_number(s.mean, 3),
                    fmt_number(s.std_items, 4),
                    f"{s.share_high:.1%}",
                    f"{s.share_low:.1%}",
                    "**COLLAPSED**" if s.collapsed else "ok",
                    f"`{Path(rec.run_dir or '.').name}`",
                ]
            )
    if rows:
        header = ["run", "modality", "best epoch", "mean", "spread", f"> {HIGH}", f"< {LOW}", "gate", "folder"]
        lines += markdown_table(header, rows, ["---", "---", "---:", "---:", "---:", "---:", "---:", "---", "---"])
    warnings = collapse_lines(runs)
    if warnings:
        lines += [""] + [f"- **{w}**" for w in warnings]
    if unrecorded:
        lines += ["", "No gate recorded (runs written before gate health): " + ", ".join(map(run_label, unrecorded))]
    return lines
