"""The three evaluation settings of a cold-items split, and the mappers' results, as a
terminal table (``befa train``, ``befa evaluate``, ``befa map``) and as rows for the reports.

Rows, for one part (test by default): the model as trained in the hybrid setting (every
item; its cold and warm groups and the share of cold items in the users' top 20), then in
the cold setting (warm items masked: the cold-start papers' protocol) and the warm setting
(cold items masked); then, per mapper method (``pipeline.training.mapping``), the hybrid
setting with the mapped cold items under each calibration mode (relevance, expected,
quantile: ``CALIBRATION_MODES``, the default first) and the cold setting with the mapped ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pipeline.reporting.common import fmt_number, markdown_table
from pipeline.training.mapping import CALIBRATION_MODES, MappedMethod, MappingRecord
from pipeline.training.record import ItemGroupMetrics, RunRecord


@dataclass
class SettingRow:
    how: str  # "as trained" or "mapper: <method>"
    setting: str  # hybrid, cold, warm
    users: int | None
    recall: float | None  # Recall@20 over the setting's held-out items
    ndcg: float | None
    cold_recall: float | None = None  # hybrid only: the cold group's Recall@20 in the mixed ranking
    warm_recall: float | None = None  # hybrid only: the warm group's
    cold_share: float | None = None  # hybrid only: share of cold items in the users' top 20


def _m(g: ItemGroupMetrics | None, key: str) -> float | None:
    return None if g is None else g.metrics.get(key)


def setting_rows(record: RunRecord, mapping: MappingRecord | None = None, part: str = "test") -> list[SettingRow]:
    """The rows above for one run; empty when its split has no cold items."""
    if not record.settings:
        return []
    groups = record.item_groups.get(part, {})
    cold_g, warm_g = groups.get("cold"), groups.get("warm")
    rows = [
        SettingRow(
            "as trained",
            "hybrid",
            None,
            record.test.get("recall@20") if part == "test" else record.best_valid.get("recall@20"),
            record.test.get("ndcg@20") if part == "test" else record.best_valid.get("ndcg@20"),
            _m(cold_g, "recall@20"),
            _m(warm_g, "recall@20"),
            cold_g.top_share if cold_g else None,
        )
    ]
    for setting in ("cold", "warm"):
        g = record.settings.get(setting, {}).get(part)
        rows.append(SettingRow("as trained", setting, g.users if g else None, _m(g, "recall@20"), _m(g, "ndcg@20")))
    for method, m in mapping.methods.items() if mapping else []:
        rows += _mapper_rows(method, m, part)
    return rows


def _mapper_rows(method: str, m: MappedMethod, part: str) -> list[SettingRow]:
    """One mapper's hybrid rows, one per calibration mode evaluated (the default first; an older
    record has its one mode), then its cold-setting row."""
    hybrid = m.hybrid.get(part, {})
    known = {mode: at for at, mode in enumerate(CALIBRATION_MODES)}
    ordered = sorted(m.hybrid_by_calibration, key=lambda mode: known.get(mode, len(known)))  # the default first
    modes = {mode: m.hybrid_by_calibration[mode].get(part, {}) for mode in ordered}
    rows = []
    for mode, hg in (modes or {m.calibration: m.hybrid_groups.get(part, {})}).items():
        default = mode == m.calibration  # the default mode's overall figures are recorded too
        rows.append(
            SettingRow(
                f"mapper: {method} ({mode})",
                "hybrid",
                None,
                hybrid.get("recall@20") if default else None,
                hybrid.get("ndcg@20") if default else None,
                _m(hg.get("cold"), "recall@20"),
                _m(hg.get("warm"), "recall@20"),
                hg["cold"].top_share if hg.get("cold") else None,
            )
        )
    g = m.cold_setting.get(part)
    rows.append(SettingRow(f"mapper: {method}", "cold", g.users if g else None, _m(g, "recall@20"), _m(g, "ndcg@20")))
    return rows


def settings_table(rows: list[SettingRow], title: str | None = None) -> Any:
    """The rows as a rich Table."""
    from rich.table import Table

    table = Table(
        title=title
        or "cold-items split, test: hybrid = every item ranked; cold = warm items masked (the published "
        "cold-start protocol); warm = cold items masked"
    )
    for col in ("how", "setting", "users", "R@20", "N@20", "hybrid cold R@20", "hybrid warm R@20", "cold in top 20"):
        table.add_column(col, justify="left" if col in ("how", "setting") else "right")

    def fmt(v: Any, pct: bool = False) -> str:
        if v is None or v != v:
            return "-"
        return f"{v:.1%}" if pct else (str(v) if isinstance(v, int) else f"{v:.4f}")

    for r in rows:
        table.add_row(
            r.how,
            r.setting,
            fmt(r.users),
            fmt(r.recall),
            fmt(r.ndcg),
            fmt(r.cold_recall),
            fmt(r.warm_recall),
            fmt(r.cold_share, pct=True),
        )
    return table


def mapping_summary(mapping: Mapping[str, Any]) -> str:
    """One line per method: how long the fit took, how well it fits the warm items, and its share
    of the content floor (``pipeline.evaluation.content_blend``) and warm budget, where set."""
    return "; ".join(
        f"{method}: {m.fit['steps']} steps in {m.fit['seconds']:.1f} s, warm cosine {m.fit['warm_cosine']:.3f}, "
        f"{m.mapped_items} items mapped{_blend_note(m)}"
        for method, m in mapping.items()
    )


def _blend_note(m: Any) -> str:
    parts = []
    if getattr(m, "blend_valid", None):
        parts.append(f"blended with ItemKNN-CBF at w = {m.cbf_weight:g} (chosen on valid)")
    relevance = getattr(m, "relevance", None)
    if relevance is not None and relevance.warm_budget is not None:
        parts.append(f"relevance scale {relevance.scale:.3f} for a {relevance.warm_budget:.0%} warm budget")
    return "".join(f", {p}" for p in parts)


def cold_start_section(records: Sequence[RunRecord]) -> list[str]:
    """report.md: per run on a cold-items split, the three settings as trained and with each
    mapper (test); nothing for runs on other splits."""
    lines: list[str] = []
    for rec in records:
        rows = setting_rows(rec, MappingRecord.load(rec.run_dir) if rec.run_dir else None)
        if not rows:
            continue
        if not lines:
            lines += [
                "",
                "## New items: the cold-items split",
                "",
                "Test. hybrid = every item ranked (cold and warm groups, and the share of cold items in the "
                "users' top 20); cold = warm items masked, the cold-start papers' protocol; warm = cold items "
                "masked. Mapper rows: cold items represented by the content mapper (befa map), their hybrid "
                "scores calibrated to the warm items' under each calibration mode (in brackets; R@20 and "
                "N@20 for the default mode).",
            ]
        label = f"{rec.model} {'+BeFA' if rec.adapter == 'befa' else 'base'}"
        lines += ["", f"**{label}**", ""]
        lines += markdown_table(
            ["how", "setting", "users", "R@20", "N@20", "hybrid cold R@20", "hybrid warm R@20", "cold in top 20"],
            [
                [r.how, r.setting, "-" if r.users is None else r.users, fmt_number(r.recall), fmt_number(r.ndcg),
                 fmt_number(r.cold_recall), fmt_number(r.warm_recall),
                 "-" if r.cold_share is None else f"{r.cold_share:.1%}"]
                for r in rows
            ],
        )  # fmt: skip
    return lines
