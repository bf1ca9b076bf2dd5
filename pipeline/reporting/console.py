"""Tables for a terminal: rich tables of metrics, one row per run."""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.features.summary import ExtractSummary
from pipeline.reporting.gains import INTERVAL_METRICS, ReportGain, fmt_gain, fmt_interval
from pipeline.training.trainer import RunResult


def metrics_table(
    rows: Mapping[str, Mapping[str, float]] | list[RunResult],
    metrics: tuple[str, ...] = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@20", "map@20"),
    title: str | None = None,
) -> Any:
    """A rich Table: one row per run (label -> metrics, or RunResults: their test metrics)."""
    from rich.table import Table

    if isinstance(rows, list):
        rows = {
            f"{r.record.model}{'+befa' if r.record.config.get('adapter') == 'befa' else ''}": r.record.test
            for r in rows
        }
    table = Table(title=title)
    table.add_column("run")
    for m in metrics:
        table.add_column(m, justify="right")
    for label, values in rows.items():
        table.add_row(label, *(f"{values[m]:.4f}" if m in values else "-" for m in metrics))
    return table


def gains_table(gains: list[ReportGain], metrics: tuple[str, ...] = INTERVAL_METRICS, title: str | None = None) -> Any:
    """A rich Table of base vs +BeFA per model trained both ways: the relative gain, its 95%
    paired bootstrap interval over test users and the verdict (yellow: not distinguishable
    from noise)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title or "base vs +BeFA (test, best valid epoch; 95% paired bootstrap CI over users)")
    for col in ("model", "metric", "base", "+BeFA", "gain", "95% CI", "verdict"):
        table.add_column(col, justify="left" if col in ("model", "metric", "verdict") else "right")
    for g in gains:
        if g.metric not in metrics or g.relative_gain is None:
            continue
        style = "yellow" if g.verdict.startswith("not ") else ("green" if g.verdict.startswith("+") else None)
        table.add_row(
            g.model,
            g.metric,
            "-" if g.base is None else f"{g.base:.4f}",
            "-" if g.befa is None else f"{g.befa:.4f}",
            fmt_gain(g.relative_gain),
            escape(fmt_interval(g.ci_low, g.ci_high)),
            f"[{style}]{g.verdict}[/]" if style else g.verdict,
        )
    return table


def item_groups_table(groups: Mapping[str, Mapping[str, Any]], title: str | None = None) -> Any:
    """A rich Table of metrics per item group: part -> group -> ``ItemGroupMetrics`` (run
    record) or ``GroupResult`` (evaluator); both have ``users``, ``heldout``, ``metrics``."""
    from rich.table import Table

    table = Table(title=title or "by item group (held-out items of the group only; ranks over all items)")
    for col in ("part", "group", "users", "held-out", "recall@20", "ndcg@20"):
        table.add_column(col, justify="left" if col in ("part", "group") else "right")
    for part, by_group in groups.items():
        for group, g in by_group.items():
            values = [g.metrics.get(m) for m in ("recall@20", "ndcg@20")]
            table.add_row(
                part, group, str(g.users), str(g.heldout), *("-" if v is None or v != v else f"{v:.4f}" for v in values)
            )
    return table


def summary_table(summary: ExtractSummary, max_failed: int = 10):
    """The summary as a rich Table (one row per modality, failed items listed under it)."""
    from rich.table import Table

    table = Table(title=f"extract {summary.dataset} ({summary.seconds:.1f} s)")
    for col, justify in (
        ("modality", "left"),
        ("encoder / fingerprint", "left"),
        ("weights", "left"),
        ("encoded", "right"),
        ("skipped", "right"),
        ("failed", "right"),
        ("no content", "right"),
        ("items/s", "right"),
        ("device", "left"),
        ("snapshot", "left"),
    ):
        table.add_column(col, justify=justify)
    for s in summary.modalities.values():
        table.add_row(
            s.modality,
            f"{s.encoder}\n{s.fingerprint} ({s.dim}-d)",
            f"weights: {s.weights}",
            str(s.encoded),
            str(s.skipped),
            str(s.failed),
            str(s.no_content),
            f"{s.throughput:.1f}",
            f"{s.device}\n{s.precision}" + (f"\n{s.backend}" if s.backend else ""),
            f"{s.snapshot_id}\n{s.snapshot_rows} rows",
        )
    failed = summary.failed_items
    if failed:
        table.caption = (
            "failed: "
            + "; ".join(f"{f['modality']} item {f['item_id']}: {f['reason']}" for f in failed[:max_failed])
            + (f"; ... {len(failed) - max_failed} more" if len(failed) > max_failed else "")
        )
    return table
