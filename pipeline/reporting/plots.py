"""The pipeline report's plots: valid-metric training curves per epoch from the run records
(``curves.png``) and test metrics of base next to +BeFA from the metrics table
(``base_vs_befa.png``); ``pipeline_report.write_report`` writes both."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from pipeline.reporting.common import ADAPTER_LABEL, pyplot, save_figure
from pipeline.reporting.floor_section import draw_floor
from pipeline.training.record import RunRecord

CURVE_METRIC = "recall@20"


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
    metrics: pd.DataFrame, path: str | Path, metric_names: Sequence[str] = ("recall@20", "ndcg@20")
) -> Path:
    """Grouped bars: per model and metric, base next to +BeFA (test split)."""
    plt = pyplot()
    models = list(dict.fromkeys(metrics["model"]))
    fig, axes = plt.subplots(1, len(metric_names), figsize=(4.2 * len(metric_names), 3.8), dpi=110, squeeze=False)
    width = 0.38
    for ax, metric in zip(axes[0], metric_names):
        sub = metrics[metrics["metric"] == metric]
        for j, adapter in enumerate(("none", "befa")):
            xs, vals = [], []
            for i, model in enumerate(models):
                hit = sub[(sub["model"] == model) & (sub["adapter"] == adapter)]["value"]
                if len(hit):  # a model trained one way only gets one bar, not a fake 0
                    xs.append(i + (j - 0.5) * width)
                    vals.append(float(hit.iloc[0]))
            bars = ax.bar(xs, vals, width, label=ADAPTER_LABEL[adapter], color=f"C{j}")
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks(range(len(models)), models)
        ax.set_title(f"test {metric}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
