"""The study's report: ``report.html``, ``report.md``, ``results.parquet`` and PNG plots.

Everything lands in the study folder; the HTML references its images by relative path
(``plots/*.png``, ``posters/*.jpg``), so it opens straight from the folder in a browser,
with no server, and the folder can be zipped and moved as a whole.

``results.parquet``: one row per experiment x setting x model x adapter x seed x split x
metric (``pipeline.study.run.RESULT_COLUMNS``); the main table is ``experiment == "main"``,
test metrics at each run's best VALID epoch.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, Field

from storage.atomic import atomic_path, write_json, write_parquet, write_text

LABEL = {"none": "base", "befa": "+BeFA"}
# The paper's average relative gains over its models and datasets (befa-spec, section 4).
PAPER_CLAIM = {"recall@20": 0.0907, "ndcg@20": 0.1102}
HEADLINE = ("recall@20", "ndcg@20")


class StudyData(BaseModel):
    """Everything the report shows besides the per-run results frame."""

    title: str
    params: dict[str, Any] = Field(default_factory=dict)
    dataset: dict[str, Any] = Field(default_factory=dict)
    split: dict[str, Any] = Field(default_factory=dict)
    encoders: dict[str, dict[str, Any]] = Field(default_factory=dict)
    verdict: str = ""
    gains: list[dict[str, Any]] = Field(default_factory=list)
    significance: list[dict[str, Any]] = Field(default_factory=list)
    overhead: list[dict[str, Any]] = Field(default_factory=list)
    user_groups: list[dict[str, Any]] = Field(default_factory=list)
    searches: list[dict[str, Any]] = Field(default_factory=list)
    inspection: dict[str, Any] | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    runs: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


# -- formatting ------------------------------------------------------------------------
def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{float(v):.{digits}f}"


def _pct(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{float(v) * 100:+.{digits}f}%"


def _p(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{float(v):.3g}"


def _ms(mean: Any, std: Any) -> str:
    return f"{_num(mean)} ± {_num(std)}"


# -- tables (rows of strings, shared by Markdown and HTML) ---------------------------------
def main_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    sig = {(s["model"], s["metric"]): s for s in data.significance}
    head = ["model", "metric", "base (mean ± std)", "+BeFA (mean ± std)", "seeds", "relative gain", "Wilcoxon p", "Holm p", "t-test p", "users +/-", "significant"]
    rows = []
    for g in data.gains:
        s = sig.get((g["model"], g["metric"]), {})
        rows.append([
            g["model"], g["metric"], _ms(g["base_mean"], g["base_std"]), _ms(g["befa_mean"], g["befa_std"]), str(g["seeds"]),
            _pct(g["relative_gain"]), _p(s.get("p_wilcoxon")), _p(s.get("p_wilcoxon_holm")), _p(s.get("p_ttest")),
            f"{s.get('wins', '-')}/{s.get('losses', '-')}", ("yes" if s.get("significant") else "no") if s else "n/a",
        ])
    return head, rows


def mean_gain_rows(data: StudyData) -> list[list[str]]:

    rows = []
    for metric, claim in PAPER_CLAIM.items():
        vals = [g["relative_gain"] for g in data.gains if g["metric"] == metric and g["relative_gain"] is not None]
        rows.append([metric, _pct(sum(vals) / len(vals)) if vals else "n/a", _pct(claim), str(len(vals))])
    return rows


def overhead_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    head = [
        "model", "adapter params", "base params w/o tables", "base params with tables",
        "overhead w/o tables (paper's count)", "overhead with tables", "net change w/o tables",
        "s/epoch base", "s/epoch +BeFA", "time ratio", "epochs base", "epochs +BeFA",
    ]
    rows = []
    for o in data.overhead:
        rows.append([
            o["model"], f"{o['adapter_params']:,}", f"{o['base_params_without_tables']:,}", f"{o['base_params_with_tables']:,}",
            _pct(o["adapter_overhead_without_tables"]), _pct(o["adapter_overhead_with_tables"]), _pct(o["net_overhead_without_tables"]),
            _num(o["epoch_s_base"], 3), _num(o["epoch_s_befa"], 3), _num(o["epoch_time_ratio"], 2) + "x" if o["epoch_time_ratio"] else "-",
            ",".join(map(str, o["epochs_base"])), ",".join(map(str, o["epochs_befa"])),
        ])
    return head, rows


def experiment_table(frame: pd.DataFrame, experiment: str, metric: str = "recall@20") -> tuple[list[str], list[list[str]]]:
    sub = frame[(frame["experiment"] == experiment) & (frame["split"] == "test") & (frame["metric"] == metric)]
    head = ["setting", "model", "adapter", f"test {metric} (mean ± std)", "seeds"]
    rows = []
    for (setting, model, adapter), g in sub.groupby(["setting", "model", "adapter"], sort=False):
        v = g["value"].to_numpy(float)
        rows.append([setting, model, LABEL.get(adapter, adapter), _ms(v.mean(), v.std(ddof=1) if v.size > 1 else 0.0), str(v.size)])
    return head, rows


def groups_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    head = ["model", "metric", "user group (train interactions)", "users", "base", "+BeFA", "relative gain"]
    rows = [[g["model"], g["metric"], g["train_interactions"], str(g["users"]), _num(g["base"]), _num(g["befa"]), _pct(g["relative_gain"])] for g in data.user_groups]
    return head, rows


def search_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    head = ["model", "adapter", "trials", "grid size", "winner (valid Recall@20)", "valid R@20", "seconds"]
    rows = []
    for s in data.searches:
        win = {k: v for k, v in s["winner"].items() if k != "adapter"}
        rows.append([s["model"], LABEL.get(s["adapter"], s["adapter"]), str(s["trials"]), str(s["grid_size"]), json.dumps(win), _num(s["winner_valid_r20"]), f"{s['seconds']:.0f}"])
    return head, rows


def encoder_rows(data: StudyData) -> list[list[str]]:
    rows = []
    for m, e in data.encoders.items():
        weights = e.get("weights") or "unknown"
        if e.get("random_init"):
            weights = f"{weights}: RANDOM WEIGHTS, no semantic content"
        rows.append([m, e.get("spec", ""), weights, str(e.get("dim", "-")), e.get("snapshot", "-")])
    return rows


# -- plots -------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _stats(values: pd.Series) -> tuple[float, float]:
    v = values.to_numpy(float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def plot_main(frame: pd.DataFrame, path: Path, metrics=("recall@20", "ndcg@20")) -> Path | None:
    sub = frame[(frame["experiment"] == "main") & (frame["split"] == "test")]
    if sub.empty:
        return None
    plt = _plt()
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
            ax.bar(xs, ms, w, yerr=ss, capsize=3, label=LABEL[adapter], color=f"C{j}")
        ax.set_xticks(range(len(models)), models)
        ax.set_title(f"test {metric} (mean ± std over seeds)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(frame: pd.DataFrame, path: Path, metrics=("recall@20", "ndcg@20")) -> Path | None:
    sub = frame[(frame["experiment"] == "sweep_t") & (frame["split"] == "test")]
    if sub.empty or sub["t"].dropna().empty:
        return None
    plt = _plt()
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
    return _save(fig, path)


def _grouped(frame: pd.DataFrame, experiment: str, path: Path, xlabel: str, metric: str = "recall@20", line: bool = False) -> Path | None:
    sub = frame[(frame["experiment"] == experiment) & (frame["split"] == "test") & (frame["metric"] == metric)]
    if sub.empty:
        return None
    plt = _plt()
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
            ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=4, label=LABEL[adapter], color=f"C{j}")
        else:
            ax.bar(xs, ms, w, yerr=ss, capsize=3, label=LABEL[adapter], color=f"C{j}")
    ax.set_xticks(range(len(settings)), settings)
    ax.set_xlabel(xlabel)
    ax.set_title(f"{model}: test {metric} (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# -- Markdown ----------------------------------------------------------------------------
def _md(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


OVERHEAD_NOTE = (
    "Overhead w/o tables = adapter parameters / the base model's trainable parameters excluding the raw "
    "feature tables (the paper's 0.93-2.09% count); with tables = the same over a base that also counts the "
    "I x D_m feature tables (frozen here). Net change also counts what BeFA removes (MGCN's purifier)."
)
COSINE_NOTE = (
    "Before/after, per item and modality, in the trained +BeFA model: cos(c_m, adapted_m) with c_m = P_m X_m "
    "the content feature at the adapter's insertion point and adapted_m = E_i * g_m(c_m) what the model "
    "consumes there instead; cos(E_i, adapted_m) shows how much the gate reshapes the behaviour embedding."
)


def render_markdown(data: StudyData, frame: pd.DataFrame, plots: dict[str, str]) -> str:
    p = data.params
    lines = [f"# {data.title}", ""]
    if any(e.get("random_init") for e in data.encoders.values()):
        mods = [m for m, e in data.encoders.items() if e.get("random_init")]
        lines += [f"> **Random-init encoder** for {', '.join(mods)}: those features carry no semantic content; "
                  "configure a checkpoint (e.g. `clip:ViT-B-32@/path/ckpt.safetensors`) for a real test of the method.", ""]
    lines += ["## Verdict", "", data.verdict, ""]
    lines += [f"> {n}" for n in data.notes] + ([""] if data.notes else [])
    lines += _md(["metric", "mean relative gain (this data)", "paper's claim", "models"], mean_gain_rows(data))
    ds = data.dataset
    lines += ["", "## Setup", "",
              f"- data: **{ds.get('name')}** ({ds.get('users', '?')} users, {ds.get('items', '?')} items, {ds.get('interactions', '?')} interactions), split `{data.split.get('id')}` {data.split.get('counts', {})}",
              f"- seeds: {p.get('seeds')}; max epochs {p.get('epochs')}, patience {p.get('patience')} (valid Recall@20); search: <= {p.get('max_trials')} trials per model and adapter" + (f", <= {p.get('max_minutes')} min" if p.get("max_minutes") else ""),
              f"- fixed overrides: `{json.dumps(p.get('model_overrides') or {})}`", ""]
    lines += _md(["modality", "encoder", "weights", "dim", "snapshot"], encoder_rows(data))
    lines += ["", "## Base vs +BeFA (test, best valid epoch)", ""]
    lines += _md(*main_table(data))
    if "main" in plots:
        lines += ["", f"![base vs +BeFA]({plots['main']})"]
    lines += ["", "## Parameters and time", "", OVERHEAD_NOTE, ""]
    lines += _md(*overhead_table(data))
    lines += ["", "## Where BeFA helps", "", "### By user activity (train-interaction terciles)", ""]
    lines += _md(*groups_table(data))
    for exp, title, key in (("sweep_t", "Decoupling-space sweep", "sweep"), ("ablation", "Modality ablation", "ablation"), ("sparsity", "Sparsity sweep", "sparsity")):
        if (frame["experiment"] == exp).any():
            lines += ["", f"### {title}", ""]
            lines += _md(*experiment_table(frame, exp))
            if key in plots:
                lines += ["", f"![{title}]({plots[key]})"]
    ins = data.inspection
    if ins:
        lines += ["", f"## What BeFA changes ({ins['model']})", "", COSINE_NOTE, ""]
        lines += _md(["modality", "gate mean", "gate std", "mean cos(c, adapted)", "mean cos(E, adapted)"],
                     [[m, _num(s["gate_mean"], 3), _num(s["gate_std"], 3), _num(s["cos_content_adapted_mean"], 3), _num(s["cos_behaviour_adapted_mean"], 3)] for m, s in ins["summary"].items()])
        lines += ["", f"![gates]({ins['gates_png']})", "", f"![cosines]({ins['cosines_png']})", ""]
        for c in ins["comparisons"]:
            lines += [f"### user {c['user_id']} ({c['why']}; {c['n_train']} train items)", "",
                      "| rank | base | +BeFA |", "|---|---|---|"]
            for r, (b, a) in enumerate(zip(c["base"], c["befa"]), 1):
                lines.append(f"| {r} | {'**HIT** ' if b['hit'] else ''}{b['title']} | {'**HIT** ' if a['hit'] else ''}{a['title']} |")
            lines.append("")
    lines += ["## Search (valid only)", ""]
    lines += _md(*search_table(data))
    lines += ["", "## Timings", ""]
    lines += _md(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in data.timings.items()])
    lines += ["", f"Runs trained: {data.runs.get('trained')}, reused: {data.runs.get('reused')}. Full per-run results: `results.parquet`.", ""]
    return "\n".join(lines)


# -- HTML --------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1300px;color:#222;padding:0 16px}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.8em}
table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child,td:nth-child(2){text-align:left}th{background:#f3f3f3}
.verdict{background:#fffbe6;border:1px solid #e6d57a;padding:10px 14px;border-radius:6px;font-size:15px}
.warn{background:#fdecea;border:1px solid #e0a19b;padding:8px 12px;border-radius:6px}
.note{color:#555;font-size:13px;max-width:1000px}
img.plot{max-width:100%;border:1px solid #eee;margin:6px 0}
.row{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0 10px}
.card{width:96px;font-size:11px;text-align:center}
.card img{width:92px;height:138px;object-fit:cover;border:3px solid transparent;border-radius:3px}
.card.hit img,.card.hit .ph{border-color:#1a9c3a}
.ph{width:86px;height:132px;border:3px solid #ddd;display:flex;align-items:center;justify-content:center;background:#f6f6f6;font-size:10px;padding:3px;overflow:hidden}
.cols{display:flex;gap:24px}.cols>div{flex:1}
.label{font-weight:600;margin-top:6px}
"""


def _h(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'


def _cards(cards: list[dict[str, Any]]) -> str:
    out = []
    for rank, c in enumerate(cards, 1):
        title = html.escape(c["title"])
        hit = c.get("hit")
        img = f'<img src="{html.escape(c["poster"])}" alt="{title}" loading="eager">' if c.get("poster") else f'<div class="ph">{title}</div>'
        out.append(f'<div class="card{" hit" if hit else ""}" title="{title}">{img}<div>{title[:40]}{" ✔" if hit else ""}</div></div>')
    return '<div class="row">' + "".join(out) + "</div>"


def render_html(data: StudyData, frame: pd.DataFrame, plots: dict[str, str]) -> str:
    p = data.params
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(data.title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(data.title)}</h1>"]
    rand = [m for m, e in data.encoders.items() if e.get("random_init")]
    if rand:
        parts.append(f"<p class='warn'><b>Random-init encoder</b> for {html.escape(', '.join(rand))}: those features carry no semantic content. "
                     "Configure a checkpoint for a real test of the method.</p>")
    parts.append(f"<h2>Verdict</h2><p class='verdict' id='verdict'>{html.escape(data.verdict)}</p>")
    parts += [f"<p class='warn note-item'>{html.escape(n)}</p>" for n in data.notes]
    parts.append(_h(["metric", "mean relative gain (this data)", "paper's claim", "models"], mean_gain_rows(data)))
    ds = data.dataset
    parts.append("<h2>Setup</h2><ul>"
                 f"<li>data: <b>{html.escape(str(ds.get('name')))}</b> ({ds.get('users', '?')} users, {ds.get('items', '?')} items, {ds.get('interactions', '?')} interactions); split <code>{html.escape(str(data.split.get('id')))}</code> {html.escape(str(data.split.get('counts', {})))}</li>"
                 f"<li>seeds {html.escape(str(p.get('seeds')))}; max epochs {p.get('epochs')}, patience {p.get('patience')} on valid Recall@20; search &le; {p.get('max_trials')} trials per model and adapter (valid only)</li>"
                 f"<li>fixed overrides <code>{html.escape(json.dumps(p.get('model_overrides') or {}))}</code></li></ul>")
    parts.append(_h(["modality", "encoder", "weights", "dim", "snapshot"], encoder_rows(data)))
    parts.append("<h2>Base vs +BeFA (test, best valid epoch)</h2>")
    parts.append(_h(*main_table(data), cls="results"))
    parts.append("<p class='note'>Wilcoxon signed-rank (two-sided) on per-user test metrics, per-user differences averaged over seeds; "
                 "Holm-adjusted across models and metrics. users +/-: users where +BeFA is higher / lower.</p>")
    if "main" in plots:
        parts.append(f"<img class='plot' id='main-plot' src='{plots['main']}' alt='base vs +BeFA'>")
    parts.append("<h2>Parameters and time per epoch</h2>" + f"<p class='note'>{html.escape(OVERHEAD_NOTE)}</p>" + _h(*overhead_table(data)))
    parts.append("<h2>Where BeFA helps</h2><h3>By user activity</h3>" + _h(*groups_table(data)))
    for exp, title, key in (("sweep_t", "Decoupling-space sweep", "sweep"), ("ablation", "Modality ablation", "ablation"), ("sparsity", "Sparsity sweep (valid/test fixed)", "sparsity")):
        if (frame["experiment"] == exp).any():
            parts.append(f"<h3>{title}</h3>")
            if key in plots:
                parts.append(f"<img class='plot' id='{key}-plot' src='{plots[key]}' alt='{title}'>")
            parts.append(_h(*experiment_table(frame, exp)))
    ins = data.inspection
    if ins:
        parts.append(f"<h2>What BeFA changes ({html.escape(ins['model'])})</h2><p class='note'>{html.escape(COSINE_NOTE)}</p>")
        parts.append(_h(["modality", "gate mean", "gate std", "mean cos(c, adapted)", "mean cos(E, adapted)"],
                        [[m, _num(s["gate_mean"], 3), _num(s["gate_std"], 3), _num(s["cos_content_adapted_mean"], 3), _num(s["cos_behaviour_adapted_mean"], 3)] for m, s in ins["summary"].items()]))
        parts.append(f"<img class='plot' id='gates-plot' src='{ins['gates_png']}' alt='gate heatmap'>")
        parts.append(f"<img class='plot' id='cosines-plot' src='{ins['cosines_png']}' alt='cosine histograms'>")
        parts.append("<h3>Top-10 of base and +BeFA (green border: a test item of the user)</h3>")
        for c in ins["comparisons"]:
            parts.append(f"<div class='user' id='user-{c['user_idx']}'><h4>User {html.escape(c['user_id'])}: {html.escape(c['why'])} ({c['n_train']} train items)</h4>")
            parts.append("<div class='label'>History (most recent train items)</div>" + _cards(c["history"]))
            parts.append("<div class='cols'><div><div class='label'>base top-10</div>" + _cards(c["base"]) + "</div>"
                         "<div><div class='label'>+BeFA top-10</div>" + _cards(c["befa"]) + "</div></div>")
            parts.append("<div class='label'>Test items</div>" + _cards(c["test_items"]) + "</div>")
    parts.append("<h2>Search (valid only)</h2>" + _h(*search_table(data)))
    parts.append("<h2>Timings</h2>" + _h(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in data.timings.items()]))
    parts.append(f"<p class='note'>Runs trained: {data.runs.get('trained')}, reused: {data.runs.get('reused')}. "
                 "Per-run results: <code>results.parquet</code>; Markdown: <a href='report.md'>report.md</a>.</p></body></html>")
    return "\n".join(parts)


def write_study_report(folder: str | Path, frame: pd.DataFrame, data: StudyData) -> dict[str, Path]:
    """Write results.parquet, the plots, report.md, report.html and study.json into ``folder``."""
    folder = Path(folder)
    plots_dir = folder / "plots"
    files: dict[str, Path] = {}
    files["results"] = write_parquet(folder / "results.parquet", pa.Table.from_pandas(frame, preserve_index=False))
    plots: dict[str, str] = {}
    for key, fn in (
        ("main", lambda: plot_main(frame, plots_dir / "main.png")),
        ("sweep", lambda: plot_sweep(frame, plots_dir / "sweep_t.png")),
        ("ablation", lambda: _grouped(frame, "ablation", plots_dir / "ablation.png", "modalities")),
        ("sparsity", lambda: _grouped(frame, "sparsity", plots_dir / "sparsity.png", "share of each user's train interactions", line=True)),
    ):
        path = fn()
        if path is not None:
            files[f"plot_{key}"] = path
            plots[key] = str(path.relative_to(folder))
    files["report_md"] = write_text(folder / "report.md", render_markdown(data, frame, plots))
    files["report_html"] = write_text(folder / "report.html", render_html(data, frame, plots))
    files["study_json"] = write_json(folder / "study.json", json.loads(data.model_dump_json()))
    return files


def rebuild_report(folder: str | Path) -> dict[str, Path]:
    """Re-render the report from ``study.json`` and ``results.parquet`` (no training)."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    data = StudyData.model_validate_json((folder / "study.json").read_text())
    frame = pq.read_table(folder / "results.parquet").to_pandas()
    return write_study_report(folder, frame, data)
