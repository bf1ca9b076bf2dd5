"""The study by item group (warm, cold, long tail): mean ± std over seeds of base and +BeFA
per model, group and headline metric, with paired per-user tests on the group's users.

Group metrics come from the run records (``RunRecord.item_groups``, test at the best valid
epoch; definition in ``pipeline.evaluation.groups``); the paired tests read the runs'
per-user ``<group>/<metric>`` columns (NaN for a user with no held-out item in the group,
dropped before testing). Holm adjustment runs over the whole family (experiments x models
x groups x metrics) of one study. Runs recorded before item groups existed simply have no
group rows.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.study.analysis import Runs, paired_per_user
from pipeline.study.report.tables import HEADLINE
from pipeline.study.stats import holm, paired_frame, paired_test


def group_significance(
    experiments: dict[str, Runs], models: list[str], pooling: str, alpha: float
) -> list[dict[str, Any]]:
    """Paired per-user tests per experiment x model x group x headline metric (Holm-adjusted)."""
    out = []
    for experiment, runs in experiments.items():
        for model, (b_tabs, a_tabs) in paired_per_user(runs, models):
            groups = sorted({c.split("/", 1)[0] for t in b_tabs for c in t.columns if "/" in c})
            for group in groups:
                for metric in HEADLINE:
                    column = f"{group}/{metric}"
                    if not all(column in t.columns for t in b_tabs + a_tabs):
                        continue
                    pairs = paired_frame(b_tabs, a_tabs, column).dropna(subset=["base", "befa"])
                    if pairs.empty:
                        continue
                    test = paired_test(pairs, column, pooling)  # type: ignore[arg-type]
                    out.append(
                        {"experiment": experiment, "model": model, "group": group, **test.to_dict(), "metric": metric}
                    )
    adjusted = holm([r["p_wilcoxon"] for r in out])
    for r, p in zip(out, adjusted):
        r["p_wilcoxon_holm"] = p
        r["significant"] = p is not None and p < alpha
    return out


def group_table_rows(
    frame: pd.DataFrame, sig: list[dict[str, Any]], experiments: tuple[str, ...] = ("main", "cold_items")
) -> list[dict[str, Any]]:
    """Per experiment x model x group x headline metric: base and +BeFA mean ± std over seeds,
    relative gain, users in the group and the paired test."""
    tests = {(s["experiment"], s["model"], s["group"], s["metric"]): s for s in sig}
    sub = frame[
        (frame["split"] == "test")
        & frame["metric"].str.contains("/", regex=False)
        & frame["experiment"].isin(experiments)
    ]
    if sub.empty:
        return []
    sub = sub.assign(group=sub["metric"].str.split("/").str[0], base_metric=sub["metric"].str.split("/").str[1])
    rows = []
    for (experiment, model, group, metric), g in sub.groupby(
        ["experiment", "model", "group", "base_metric"], sort=False
    ):
        if metric not in HEADLINE:
            continue
        arms = {a: g[g["adapter"] == a]["value"] for a in ("none", "befa")}
        if arms["none"].empty or arms["befa"].empty:
            continue
        b, a = float(arms["none"].mean()), float(arms["befa"].mean())
        s = tests.get((experiment, model, group, metric), {})
        rows.append(
            {
                "experiment": experiment,
                "model": model,
                "group": group,
                "metric": metric,
                "base_mean": b,
                "base_std": float(arms["none"].std(ddof=1)) if len(arms["none"]) > 1 else 0.0,
                "befa_mean": a,
                "befa_std": float(arms["befa"].std(ddof=1)) if len(arms["befa"]) > 1 else 0.0,
                "seeds": int(min(len(arms["none"]), len(arms["befa"]))),
                "relative_gain": (a - b) / b if b else None,
                "users": s.get("n_pairs"),
                "p_wilcoxon": s.get("p_wilcoxon"),
                "p_wilcoxon_holm": s.get("p_wilcoxon_holm"),
                "significant": s.get("significant"),
            }
        )
    order = {e: k for k, e in enumerate(experiments)}
    rows.sort(
        key=lambda r: (order.get(r["experiment"], len(order)), r["model"], r["group"], HEADLINE.index(r["metric"]))
    )
    return rows
