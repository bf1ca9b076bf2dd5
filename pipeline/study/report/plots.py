"""The study report's plots: base vs +BeFA per model (mean ± std over seeds), the
decoupling-space sweep, and the grouped ablation / sparsity plots.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.reporting.common import ADAPTER_LABEL, pyplot, save_figure


# -- plots -------------------------------------------------------------------------------
def _stats(values: pd.Series) -> tuple[float, float]:
    v = values.to_numpy(float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def plot_main(frame: pd.DataFrame, path: Path, metrics=("recall@20", "ndcg@20")) -> Path | None:
    sub = frame[(frame["experiment"] == "main") & (frame["split"] == "test")]
    if sub.empty:
        return None
    plt = pyplot()
    models = list(dict.fromkeys(sub["model"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), dpi=100, squeeze=False)
    w = 0.38
    for ax, metric in zip(axes[0], metrics):
        for j, adapter in enumerate(("none", "befa")):
            xs, ms, ss = [], [], []
            for i, model in enumerate(models):
                v = sub[(sub["model"] == model) & (sub["adapter"] == adapter) & (sub["metric"] == metric)]["value"]
                if len(v):
                    m, s = _stats(v)
                    xs.append(i + (j - 0.5) * w)
                    ms.append(m)
                    ss.append(s)
            ax.bar(xs, ms, w, yerr=ss, capsize=3, label=ADAPTER_LABEL[adapter], color=f"C{j}")
        ax.set_xticks(range(len(models)), models)
        ax.set_title(f"test {metric} (mean ± std over seeds)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sweep(frame: pd.DataFrame, path: Path, metrics=("recall@20", "ndcg@20")) -> Path | None:
    sub = frame[(frame["experiment"] == "sweep_t") & (frame["split"] == "test")]
    if sub.empty or sub["t"].dropna().empty:
        return None
    plt = pyplot()
    model = sub["model"].iloc[0]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), dpi=100, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        m = sub[(sub["metric"] == metric) & (sub["adapter"] == "befa")]
        agg = m.groupby("t")["value"].agg(["mean", lambda s: s.std(ddof=1) if len(s) > 1 else 0.0]).reset_index()
        agg.columns = ["t", "mean", "std"]
        ax.errorbar(agg["t"], agg["mean"], yerr=agg["std"], marker="o", capsize=4, label="+BeFA")
        base = sub[(sub["metric"] == metric) & (sub["adapter"] == "none")]["value"]
        if len(base):
            bm, bs = _stats(base)
            ax.axhline(bm, color="C1", ls="--", label="base (mean)")
            ax.axhspan(bm - bs, bm + bs, color="C1", alpha=0.15, label="base ± std")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(agg["t"]), [f"{t:g}" for t in agg["t"]])
        ax.set_xlabel("decoupling-space multiplier t (h = round(d t))")
        ax.set_title(f"{model}: test {metric} vs t (mean ± std)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_grouped(
    frame: pd.DataFrame, experiment: str, path: Path, xlabel: str, metric: str = "recall@20", line: bool = False
) -> Path | None:
    sub = frame[(frame["experiment"] == experiment) & (frame["split"] == "test") & (frame["metric"] == metric)]
    if sub.empty:
        return None
    plt = pyplot()
    settings = list(dict.fromkeys(sub["setting"]))
    model = sub["model"].iloc[0]
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=100)
    w = 0.38
    for j, adapter in enumerate(("none", "befa")):
        xs, ms, ss = [], [], []
        for i, s in enumerate(settings):
            v = sub[(sub["setting"] == s) & (sub["adapter"] == adapter)]["value"]
            if len(v):
                m, sd = _stats(v)
                xs.append(i if line else i + (j - 0.5) * w)
                ms.append(m)
                ss.append(sd)
        if line:
            ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=4, label=ADAPTER_LABEL[adapter], color=f"C{j}")
        else:
            ax.bar(xs, ms, w, yerr=ss, capsize=3, label=ADAPTER_LABEL[adapter], color=f"C{j}")
    ax.set_xticks(range(len(settings)), settings)
    ax.set_xlabel(xlabel)
    ax.set_title(f"{model}: test {metric} (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
