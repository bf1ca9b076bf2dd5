"""Base vs +BeFA in the pipeline report: per model and metric, the relative gain, its paired
bootstrap interval over test users (``pipeline.evaluation.bootstrap``, from each run's
``per_user.parquet``) and a verdict; and a flag on a pair whose arms stopped far apart.

One run per arm says little: a +BeFA run that early-stopped in a dip its base climbed out
of prints a large loss that another budget turns into a gain. So every gain carries its
interval ("not distinguishable from noise" when it covers 0), a pair whose epochs run
differ more than :data:`STOP_RATIO` times is flagged (its gain hangs on an early stop),
and the section points to ``befa study`` (several seeds per arm) for the seeded answer.

Relative gain is ``(befa - base) / base``; it is left empty (not infinite) when the base
metric is 0, which happens with tiny test configurations.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from pydantic import BaseModel

from pipeline.evaluation.bootstrap import (
    CONFIDENCE,
    NOISE,
    RESAMPLES,
    SEED,
    GainInterval,
    paired_bootstrap,
    paired_users,
)
from pipeline.reporting.common import fmt_number, markdown_table
from pipeline.reporting.gate_section import gains_caveats
from pipeline.training.record import PER_USER, RunRecord, read_per_user

HEADLINE_METRICS: tuple[str, ...] = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
INTERVAL_METRICS: tuple[str, ...] = ("recall@20", "ndcg@20")  # the metrics per_user.parquet holds
STOP_RATIO = 2.0  # arms whose epochs run differ more than this many times: the gain hangs on an early stop
STUDY_POINTER = "`befa study` (several seeds per arm, the gain tested over them) gives the seeded answer"
GAIN_COLUMNS = ["model", "metric", "base", "befa", "relative_gain", "ci_low", "ci_high", "n_users", "verdict"]


class ReportGain(BaseModel):
    """One row of the base vs +BeFA table: a model's metric both ways and the gain's interval."""

    model: str
    metric: str
    base: float | None
    befa: float | None
    relative_gain: float | None
    ci_low: float | None = None  # the gain's paired bootstrap interval (None: no per-user metrics)
    ci_high: float | None = None
    n_users: int | None = None
    verdict: str = "-"


def relative_gain(base: float | None, adapted: float | None) -> float | None:
    if base is None or adapted is None or (isinstance(base, float) and math.isnan(base)):
        return None
    if adapted != adapted:  # NaN
        return None
    return (adapted - base) / base if base != 0 else None


def pairs(records: Sequence[RunRecord]) -> dict[str, tuple[RunRecord, RunRecord]]:
    """model -> (base run, +BeFA run) for the models trained both ways (the last run of each)."""
    by_key = {(r.model, r.adapter): r for r in records}
    return {m: (by_key[(m, "none")], by_key[(m, "befa")]) for m, a in by_key if a == "befa" and (m, "none") in by_key}


def gain_intervals(
    records: Sequence[RunRecord],
    metric_names: Sequence[str] = INTERVAL_METRICS,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[tuple[str, str], GainInterval]:
    """(model, metric) -> the paired bootstrap interval of the test gain, for each model whose
    two runs both wrote per-user metrics holding ``metric``."""
    out: dict[tuple[str, str], GainInterval] = {}
    for model, (base, befa) in pairs(records).items():
        if not all(r.run_dir and (Path(r.run_dir) / PER_USER).exists() for r in (base, befa)):
            continue
        b_tab, a_tab = read_per_user(base.run_dir), read_per_user(befa.run_dir)
        for metric in metric_names:
            if metric in b_tab.columns and metric in a_tab.columns:
                b, a = paired_users(b_tab, a_tab, metric)
                out[(model, metric)] = paired_bootstrap(b, a, metric, resamples=resamples, seed=seed)
    return out


def gains_frame(
    metrics: pd.DataFrame,
    metric_names: Sequence[str] = HEADLINE_METRICS,
    intervals: dict[tuple[str, str], GainInterval] | None = None,
) -> pd.DataFrame:
    """Per model and metric: base value, +BeFA value, relative gain (None when undefined), and
    from ``intervals`` the gain's interval, the users resampled and the verdict.

    Models trained only one way get a row with the other side empty."""
    if metrics.empty:
        return pd.DataFrame(columns=GAIN_COLUMNS)
    intervals = intervals or {}
    wanted = metrics[metrics["metric"].isin(metric_names)]
    rows = []
    for (model, metric), group in wanted.groupby(["model", "metric"], sort=False):
        by_adapter = dict(zip(group["adapter"], group["value"]))
        base, befa = by_adapter.get("none"), by_adapter.get("befa")
        ci = intervals.get((model, metric))
        rows.append(
            {
                "model": model,
                "metric": metric,
                "base": base,
                "befa": befa,
                "relative_gain": relative_gain(base, befa),
                "ci_low": ci.low if ci else None,
                "ci_high": ci.high if ci else None,
                "n_users": ci.n_users if ci else None,
                "verdict": ci.verdict if ci else "-",
            }
        )
    out = pd.DataFrame(rows, columns=GAIN_COLUMNS)
    order = {m: i for i, m in enumerate(metric_names)}
    models_order = {m: i for i, m in enumerate(dict.fromkeys(metrics["model"]))}
    out = out.sort_values(["model", "metric"], key=lambda s: s.map(models_order if s.name == "model" else order))
    return out.reset_index(drop=True)


def report_gains(gains: pd.DataFrame) -> list[ReportGain]:
    """The gains frame as typed rows (NaN read as None)."""
    clean = gains.astype(object).where(gains.notna(), None)
    return [ReportGain(**rec) for rec in clean.to_dict("records")]


def mean_gains(gains: pd.DataFrame) -> dict[str, float | None]:
    """Relative gain averaged over the models that have both sides (the paper's summary figure)."""
    out: dict[str, float | None] = {}
    for metric, group in gains.groupby("metric", sort=False):
        vals = [float(g) for g in group["relative_gain"] if g is not None and g == g]
        out[metric] = sum(vals) / len(vals) if vals else None
    return out


def fmt_gain(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value * 100:+.2f}%"


def fmt_interval(low: Any, high: Any) -> str:
    if low is None or high is None or low != low or high != high:
        return "-"
    return f"[{fmt_gain(low)}, {fmt_gain(high)}]"


def gains_table_rows(gains: pd.DataFrame) -> list[dict[str, Any]]:
    """The gains as JSON-friendly rows (model, metric, base, +BeFA, gain in %, its 95%
    interval, the verdict), for artifacts."""
    rows = []
    for rec in gains.to_dict("records"):
        rows.append(
            {
                "model": rec["model"],
                "metric": rec["metric"],
                "base": fmt_number(rec["base"]),
                "+BeFA": fmt_number(rec["befa"]),
                "relative gain": fmt_gain(rec["relative_gain"]),
                f"{CONFIDENCE:.0%} CI": fmt_interval(rec.get("ci_low"), rec.get("ci_high")),
                "verdict": rec.get("verdict") or "-",
            }
        )
    return rows


def stop_flags(records: Sequence[RunRecord], ratio: float = STOP_RATIO) -> list[str]:
    """One line per model whose base and +BeFA runs stopped more than ``ratio`` times apart in
    epochs run (best valid epochs given beside them): its gain hangs on an early stop."""
    out = []
    for model, (base, befa) in pairs(records).items():
        n_base, n_befa = len(base.epochs), len(befa.epochs)
        if min(n_base, n_befa) == 0 or max(n_base, n_befa) <= ratio * min(n_base, n_befa):
            continue
        best = f"best valid epochs {_epoch(befa.best_epoch)} and {_epoch(base.best_epoch)}"
        out.append(
            f"{model} +BeFA stopped after {n_befa} epochs, base after {n_base} (epochs run; {best}): "
            f"the gain hangs on an early stop; {STUDY_POINTER}."
        )
    return out


def _epoch(value: int | None) -> str:
    return "-" if value is None else str(value)


def interval_note(gains: pd.DataFrame) -> str | None:
    """How the intervals were made, with their limits; None when no row has one."""
    users = [int(n) for n in gains.get("n_users", pd.Series(dtype=object)) if n is not None and n == n]
    if not users:
        return None
    return (
        f"{CONFIDENCE:.0%} CI: paired bootstrap over the {max(users):,} test users ({RESAMPLES} resamples, "
        f"seed {SEED}, percentile interval) of the relative gain of the mean, for {' and '.join(INTERVAL_METRICS)}; "
        f"'{NOISE}' when it covers 0. It holds the two trained models fixed: training noise "
        f"(seed, where early stopping fell) is not in it. {STUDY_POINTER}."
    )


def results_section(gains: pd.DataFrame, records: Sequence[RunRecord]) -> list[str]:
    """Markdown: the base vs +BeFA table with intervals and verdicts, the mean gain, how the
    intervals were made, the early-stop flags and the gate caveats."""
    lines = ["", "## Test metrics (best valid epoch), base vs +BeFA", ""]
    if gains.empty:
        return lines + ["No finished runs."]
    lines += markdown_table(
        ["model", "metric", "base", "+BeFA", "relative gain", f"{CONFIDENCE:.0%} CI", "verdict"],
        [list(r.values()) for r in gains_table_rows(gains)],
        ["---", "---", "---:", "---:", "---:", "---:", "---"],
    )
    means = mean_gains(gains)
    if any(v is not None for v in means.values()):
        lines += ["", "Mean relative gain over models: " + ", ".join(f"{m} {fmt_gain(v)}" for m, v in means.items())]
    note = interval_note(gains)
    if note:
        lines += ["", note]
    flags = stop_flags(records)
    caveats = gains_caveats(records)  # a collapsed gate: that model's +BeFA number is not BeFA's effect
    return lines + ([""] + [f"**{c}**" for c in [*flags, *caveats]] if flags or caveats else [])
