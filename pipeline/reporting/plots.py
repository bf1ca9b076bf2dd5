"""The pipeline report's plots: valid-metric training curves per epoch from the run records
(``curves.png``) and test metrics of base next to +BeFA from the metrics table, with the
relative gains and their paired bootstrap intervals as error bars (``base_vs_befa.png``);
``pipeline_report.write_report`` writes both."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from pipeline.reporting.common import ADAPTER_LABEL, pyplot, save_figure
from pipeline.reporting.floor_section import draw_floor
from pipeline.training.record import RunRecord

CURVE_METRIC = "recall@20"
GAIN_COLORS = ("tab:purple", "tab:gray")  # one per metric in the gains panel


def plot_training_curves(records: Sequence[RunRecord], path: str | Path, metric: str = CURVE_METRIC) -> Path:
    """Valid ``metric`` per epoch, one line per model x adapter (dashed = +BeFA); MostPop, which
    has no epochs, as a horizontal reference line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    models = list(dict.fromkeys(r.model for r in records))
    for rec in records:
        epochs = [e for e in rec.epochs if metric in e.valid]
        if not epochs or rec.status == "evaluated_only":  # nothing trained: no curve, the floor line below
            continue
        color = colors[models.index(rec.model) % len(colors)]
        style = "--" if rec.adapter == "befa" else "-"
        xs = [e.epoch for e in epochs]
        ys = [e.valid[metric] for e in epochs]
        ax.plot(
            xs,
            ys,
            style,
            color=color,
            marker="o",
            markersize=3,
            label=f"{rec.model} {ADAPTER_LABEL.get(rec.adapter, rec.adapter)}",
        )
        if rec.best_epoch in xs:
            ax.plot([rec.best_epoch], [ys[xs.index(rec.best_epoch)]], "*", color=color, markersize=10)
    draw_floor(ax, records, metric)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"valid {metric}")
    ax.set_title(f"Training curves (valid {metric}; star = best epoch; dotted = MostPop floor)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_base_vs_befa(
    metrics: pd.DataFrame,
    path: str | Path,
    metric_names: Sequence[str] = ("recall@20", "ndcg@20"),
    gains: pd.DataFrame | None = None,
) -> Path:
    """Grouped bars: per model and metric, base next to +BeFA (test split); with ``gains``
    (``gains.gains_frame``) a last panel of the relative gains, their 95% intervals as
    error bars (hatched: the interval covers 0, not distinguishable from noise)."""
    plt = pyplot()
    models = list(dict.fromkeys(metrics["model"]))
    shown = _gains_shown(gains, metric_names)
    panels = len(metric_names) + (1 if shown is not None else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.8), dpi=110, squeeze=False)
    width = 0.38
    for ax, metric in zip(axes[0], metric_names):
        sub = metrics[metrics["metric"] == metric]
        for j, adapter in enumerate(("none", "befa")):
            xs, vals = [], []
            for i, model in enumerate(models):
                hit = sub[(sub["model"] == model) & (sub["adapter"] == adapter)]["value"]
                if len(hit):  # a model trained one way only gets one bar, centred on its name, not a fake 0
                    both = sub[sub["model"] == model]["adapter"].nunique() > 1
                    xs.append(i + (j - 0.5) * width if both else i)
                    vals.append(float(hit.iloc[0]))
            bars = ax.bar(xs, vals, width, label=ADAPTER_LABEL[adapter], color=f"C{j}")
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks(range(len(models)), models)
        ax.set_title(f"test {metric}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if shown is not None:
        _plot_gains(axes[0][-1], shown, metric_names)
    fig.tight_layout()
    return save_figure(fig, path)


def _gains_shown(gains: pd.DataFrame | None, metric_names: Sequence[str]) -> pd.DataFrame | None:
    """The gains rows the gain panel draws (models trained both ways); None when there are none."""
    if gains is None or gains.empty:
        return None
    rows = gains[gains["metric"].isin(metric_names) & gains["relative_gain"].notna()]
    return rows if len(rows) else None


def _plot_gains(ax: Any, gains: pd.DataFrame, metric_names: Sequence[str]) -> None:
    """Relative gain (%) per model, one bar per metric, the interval as an error bar."""
    models = list(dict.fromkeys(gains["model"]))
    width = 0.8 / len(metric_names)
    for j, metric in enumerate(metric_names):
        labelled = False
        for i, model in enumerate(models):
            row = gains[(gains["model"] == model) & (gains["metric"] == metric)]
            if not len(row):
                continue
            r = row.iloc[0]
            x, gain = i + (j - (len(metric_names) - 1) / 2) * width, 100 * float(r["relative_gain"])
            low, high = (_finite_pct(r.get(k)) for k in ("ci_low", "ci_high"))
            noise = low is not None and high is not None and low <= 0 <= high
            color = GAIN_COLORS[j % len(GAIN_COLORS)]  # neutral: not red/green, which would read as bad/good
            bar = ax.bar(x, gain, width, color=color, alpha=0.45 if noise else 0.9, hatch="//" if noise else None)
            if low is not None and high is not None:
                yerr = [[max(0.0, gain - low)], [max(0.0, high - gain)]]
                ax.errorbar(x, gain, yerr=yerr, fmt="none", ecolor="black", capsize=4, lw=1)
            # the value on the other side of the zero line, on white where an error bar crosses it
            ax.annotate(
                f"{gain:+.1f}%",
                (x, 0),
                xytext=(0, -3 if gain >= 0 else 3),
                textcoords="offset points",
                ha="center",
                va="top" if gain >= 0 else "bottom",
                fontsize=7,
                zorder=5,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
            )
            if not labelled:
                bar.set_label(metric)
                labelled = True
    ax.axhline(0, color="black", lw=0.8)
    _gain_limits(ax, gains)
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("relative gain, +BeFA vs base (%)")
    ax.set_title("gain, 95% paired bootstrap CI\n(hatched: CI covers 0, noise)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def _gain_limits(ax: Any, gains: pd.DataFrame) -> None:
    """y limits holding 0, every gain and every finite interval end, with room on both sides of
    the zero line for the value labels."""
    values = [0.0] + [v for k in ("relative_gain", "ci_low", "ci_high") for v in map(_finite_pct, gains[k])]
    lo, hi = min(v for v in values if v is not None), max(v for v in values if v is not None)
    pad = 0.15 * (hi - lo) or 1.0
    ax.set_ylim(lo - pad, hi + pad)


def _finite_pct(value: Any) -> float | None:
    """A relative gain as a finite percentage, else None (no interval, or an end at infinity)."""
    if value is None or value != value or math.isinf(float(value)):
        return None
    return 100 * float(value)
