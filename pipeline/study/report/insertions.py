"""The insertion ablation in the study report (rows: ``pipeline.study.insertions``): where BeFA
acts. A note, a sentence per model, the arms against base, the gate health per modality, and
the trained gate distributions: a plot (one panel per model and insertion, one histogram per
modality) and its short table. The markdown and the HTML report render them alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.reporting.common import pyplot, save_figure
from pipeline.study.report.tables import StudyData, fmt_num
from pipeline.study.rows import InsertionAblation, InsertionArmRow
from pipeline.training.gate_health import COLLAPSED, HIGH, LOW

INSERTIONS_NOTE = (
    "Where BeFA acts (befa.insertion): forward puts E_i * g_m(c_m) on the path the model scores with; loss puts it "
    "in the content loss terms only (the earlier design); content gates the content itself, c_m * g_m(c_m). Each "
    "model's +BeFA search winner (searched under forward, the default) with only the insertion changed, every seed; "
    "the forward arm is the main table's +BeFA runs. Each arm against the main table's base runs: paired Wilcoxon "
    "over test users (per-user differences averaged over seeds), Holm-adjusted over models, insertions and both "
    "metrics. Gate health at each run's best valid epoch, mean over seeds; a gate is collapsed when its spread over "
    f"items is below 1e-3 or more than 99% of its values are above {HIGH} or below {LOW}."
)
GATES_NOTE = (
    "The trained gate g_m(c_m) of each arm's first seed, every item x dimension, recomputed from the run's best "
    "weights in eval mode: the share of values per bin (log scale) and its quantiles."
)


def _pct(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v * 100:+.2f}%"


def _p(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:.3g}"


def reading(row: InsertionArmRow) -> str:
    """What an arm's gain measures: BeFA at that insertion, or nothing of BeFA when its gate collapsed."""
    if row.inert:  # before the gate: an adapter no term reaches never trains, so its gate only looks collapsed
        return f"BeFA is inert ({row.inert}): its gain is not BeFA's effect"
    if row.adapter_off:
        return f"{COLLAPSED}: its gain is not BeFA's effect"
    if row.collapsed:
        return f"BeFA, with the {', '.join(row.collapsed)} gate collapsed in every seed"
    return "BeFA's effect at this insertion"


def insertions_sentence(data: StudyData) -> str:
    """Per model, each insertion's test Recall@20 gain over base and its Holm p, or the collapse."""
    ab = data.insertions
    if ab is None:
        return ""
    parts = []
    for model in dict.fromkeys(a.model for a in ab.arms):
        arms = [a for a in ab.arms if a.model == model and a.metric == "recall@20"]
        said = [
            f"{a.insertion} {COLLAPSED}"
            if a.adapter_off
            else f"{a.insertion} {_pct(a.relative_gain)} (Holm p {_p(a.p_wilcoxon_holm)})"
            for a in arms
        ]
        parts.append(f"{model}: {', '.join(said)}")
    return ("Test Recall@20 against base: " + "; ".join(parts) + ".") if parts else ""


def skipped_lines(data: StudyData) -> list[str]:
    """The arms that did not run, with the model's reason."""
    ab = data.insertions
    return [f"{arm.replace('/', ' ')}: not run ({why})" for arm, why in (ab.skipped if ab else {}).items()]


def _collapsed_seeds(ab: InsertionAblation, model: str, insertion: str) -> str:
    gates = [g for g in ab.gates if g.model == model and g.insertion == insertion]
    return ", ".join(f"{g.modality} {g.collapsed_seeds}/{g.seeds}" for g in gates) or "not recorded"


def insertions_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """Base, then each insertion of each model: test mean ± std, gain and Holm p, collapse, what the gain is."""
    head = ["model", "arm", "runs", "recall@20", "ndcg@20", "R@20 gain", "Holm p R@20", "N@20 gain", "Holm p N@20"]
    head += ["gate collapsed (seeds)", "what the gain measures"]
    ab = data.insertions
    if ab is None:
        return head, []
    rows = []
    for model in dict.fromkeys(a.model for a in ab.arms):
        arms = [a for a in ab.arms if a.model == model]
        first = {a.metric: a for a in arms}
        base = [f"{fmt_num(first[m].base_mean)} ± {fmt_num(first[m].base_std)}" for m in ("recall@20", "ndcg@20")]
        rows.append([model, "base", "main table", *base, *["-"] * 6])
        for insertion in dict.fromkeys(a.insertion for a in arms):
            by = {a.metric: a for a in arms if a.insertion == insertion}
            r, n = by["recall@20"], by["ndcg@20"]
            rows.append(
                [
                    model,
                    f"+BeFA {insertion}",
                    f"main table, {r.seeds} seeds" if r.reused else f"{r.seeds} seeds",
                    f"{fmt_num(r.mean)} ± {fmt_num(r.std)}",
                    f"{fmt_num(n.mean)} ± {fmt_num(n.std)}",
                    _pct(r.relative_gain),
                    _p(r.p_wilcoxon_holm),
                    _pct(n.relative_gain),
                    _p(n.p_wilcoxon_holm),
                    _collapsed_seeds(ab, model, insertion),
                    reading(r),
                ]
            )
    return head, rows


def insertion_gates_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """Gate health per model, insertion and modality (means over seeds at the best valid epoch)."""
    head = ["model", "insertion", "modality", "gate mean", "spread over items", f"> {HIGH}", f"< {LOW}", "collapsed"]
    ab = data.insertions
    rows = [
        [
            g.model,
            g.insertion,
            g.modality,
            fmt_num(g.mean, 3),
            fmt_num(g.std_items, 4),
            f"{g.share_high:.1%}",
            f"{g.share_low:.1%}",
            f"{g.collapsed_seeds} of {g.seeds} seeds",
        ]
        for g in (ab.gates if ab else [])
    ]
    return head, rows


def distributions_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """The plot's numbers: each arm's first-seed gate, its size, mean and quantiles."""
    head = ["model", "insertion", "modality", "seed", "values", "mean", "5%", "median", "95%"]
    ab = data.insertions
    rows = [
        [d.model, d.insertion, d.modality, str(d.seed), str(d.values)]
        + [fmt_num(v, 3) for v in (d.mean, d.q05, d.q50, d.q95)]
        for d in (ab.distributions if ab else [])
    ]
    return head, rows


def plot_gate_distributions(ab: InsertionAblation | None, path: Path) -> Path | None:
    """One panel per model (rows) and insertion (columns): each modality's gate histogram over [0, 1]."""
    if ab is None or not ab.distributions:
        return None
    plt = pyplot()
    models = list(dict.fromkeys(d.model for d in ab.distributions))
    modalities = sorted({d.modality for d in ab.distributions})
    found = {(d.model, d.insertion, d.modality): d for d in ab.distributions}
    off = {(a.model, a.insertion) for a in ab.arms if a.adapter_off}
    floor = 0.3 / max(d.values for d in ab.distributions)  # below one value's share: the empty bins' baseline
    fig, axes = plt.subplots(
        len(models),
        len(ab.insertions),
        figsize=(3.6 * len(ab.insertions) + 0.4, 2.5 * len(models) + 1.0),
        dpi=100,
        squeeze=False,
    )
    for r, model in enumerate(models):
        for c, insertion in enumerate(ab.insertions):
            ax = axes[r][c]
            here = [found[k] for k in ((model, insertion, m) for m in modalities) if k in found]
            title = f"{model} · {insertion}" + (" · collapsed: adapter off" if (model, insertion) in off else "")
            ax.set_title(title, fontsize=9, color="#b00020" if (model, insertion) in off else "black")
            if not here:
                skipped = f"{model}/{insertion}" in ab.skipped
                why = f"no '{insertion}' insertion\n(the model refuses it)" if skipped else "not run"
                ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=9)
                ax.set_xticks([]), ax.set_yticks([])
                continue
            for d in here:
                color = f"C{modalities.index(d.modality)}"
                edges, share = np.linspace(0.0, 1.0, len(d.counts) + 1), np.asarray(d.counts, float) / d.values
                share = np.where(share > 0, share, np.nan)  # an empty bin draws nothing (log scale)
                ax.stairs(share, edges, baseline=floor, fill=True, alpha=0.3, color=color)
                ax.stairs(share, edges, baseline=floor, color=color, lw=1.2, label=f"{d.modality} (mean {d.mean:.2f})")
            ax.set_yscale("log")
            ax.set_ylim(floor, 1.5)
            ax.set_xlim(-0.02, 1.02)  # a gate saturated at 0 or 1 stays clear of the frame
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
            ax.set_xlabel("gate value g_m(c_m)" if r == len(models) - 1 else "", fontsize=8)
            ax.set_ylabel("share of values" if c == 0 else "", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle("Trained BeFA gate per insertion (first seed, best valid epoch, every item x dimension)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
