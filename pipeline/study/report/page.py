"""The study report as one self-contained HTML page (tables, plots, poster cards)."""

from __future__ import annotations

import html
import json
from typing import Any

import pandas as pd

from pipeline.study.report.authors import (
    AUTHORS_ARM_NOTE,
    authors_arm_sentence,
    authors_arms_table,
    authors_comparisons_table,
)
from pipeline.study.report.insertions import (
    GATES_NOTE,
    INSERTIONS_NOTE,
    distributions_table,
    insertion_gates_table,
    insertions_sentence,
    insertions_table,
    skipped_lines,
)
from pipeline.study.report.selection import search_note, selection_bias_line, selection_bias_table
from pipeline.study.report.tables import (
    COSINE_NOTE,
    ITEM_GROUPS_NOTE,
    OVERHEAD_NOTE,
    StudyData,
    cap_line,
    cold_table,
    encoder_rows,
    experiment_table,
    floor_table,
    fmt_num,
    groups_table,
    item_groups_table,
    main_table,
    mean_gain_rows,
    overhead_table,
    search_table,
)

# -- HTML --------------------------------------------------------------------------------
CSS = (
    "\n"
    "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1300px;"
    "color:#222;padding:0 16px}\n"
    "h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.8em}\n"
    "table{border-collapse:collapse;margin:8px 0;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\n"
    "td:first-child,th:first-child,td:nth-child(2){text-align:left}th{background:#f3f3f3}\n"
    ".verdict{background:#fffbe6;border:1px solid #e6d57a;padding:10px 14px;border-radius:6px;font-size:15px}\n"
    ".warn{background:#fdecea;border:1px solid #e0a19b;padding:8px 12px;border-radius:6px}\n"
    ".note{color:#555;font-size:13px;max-width:1000px}\n"
    "img.plot{max-width:100%;border:1px solid #eee;margin:6px 0}\n"
    ".row{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0 10px}\n"
    ".card{width:96px;font-size:11px;text-align:center}\n"
    ".card img{width:92px;height:138px;object-fit:cover;border:3px solid transparent;border-radius:3px}\n"
    ".card.hit img,.card.hit .ph{border-color:#1a9c3a}\n"
    ".ph{width:86px;height:132px;border:3px solid #ddd;display:flex;align-items:center;justify-content:center;"
    "background:#f6f6f6;font-size:10px;padding:3px;overflow:hidden}\n"
    ".cols{display:flex;gap:24px}.cols>div{flex:1}\n"
    ".label{font-weight:600;margin-top:6px}\n"
)


def _h(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'


def _cards(cards: list[dict[str, Any]]) -> str:
    out = []
    for rank, c in enumerate(cards, 1):
        title = html.escape(c["title"])
        hit = c.get("hit")
        img = (
            f'<img src="{html.escape(c["poster"])}" alt="{title}" loading="eager">'
            if c.get("poster")
            else f'<div class="ph">{title}</div>'
        )
        out.append(
            f'<div class="card{" hit" if hit else ""}" title="{title}">{img}'
            f"<div>{title[:40]}{' ✔' if hit else ''}</div></div>"
        )
    return '<div class="row">' + "".join(out) + "</div>"


def render_html(data: StudyData, frame: pd.DataFrame, plots: dict[str, str]) -> str:
    """The page, section by section, in reading order."""
    parts = _head(data)
    parts += _verdict(data)
    parts += _setup(data)
    parts += _main_results(data, plots)
    parts += _insertions(data, plots)
    parts += _authors_arm(data)
    parts += _overhead(data)
    parts += _where_befa_helps(data)
    parts += _experiments(frame, plots)
    parts += _inspection(data)
    parts += _search_timings_runs(data)
    return "\n".join(parts)


def _head(data: StudyData) -> list[str]:
    """The document head, the title and a warning for random-init encoders."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(data.title)}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(data.title)}</h1>",
    ]
    rand = [m for m, f in data.features.items() if f.random_init]
    if rand:
        parts.append(
            f"<p class='warn'><b>Random-init encoder</b> for {html.escape(', '.join(rand))}: "
            "those features carry no semantic content. "
            "Configure a checkpoint for a real test of the method.</p>"
        )
    return parts


def _verdict(data: StudyData) -> list[str]:
    """The verdict, the budget notes and the MostPop floor."""
    parts = [f"<h2>Verdict</h2><p class='verdict' id='verdict'>{html.escape(data.verdict)}</p>"]
    parts += [f"<p class='warn note-item'>{html.escape(n)}</p>" for n in data.notes]
    if data.floor:  # the floor before any gain: a gain between runs below it says little
        parts.append("<h3>Against the MostPop floor</h3>" + _h(*floor_table(data), cls="floor"))
    return parts


def _setup(data: StudyData) -> list[str]:
    """Data, split, seeds, budget, fixed overrides and the encoders."""
    p, ds = data.params, data.dataset
    return [
        "<h2>Setup</h2><ul>"
        f"<li>data: <b>{html.escape(ds.name)}</b> ({ds.num_users} users, {ds.num_items} items, "
        f"{ds.num_interactions} interactions); "
        f"split <code>{html.escape(data.split.id)}</code> {html.escape(str(data.split.counts))}</li>"
        f"<li>seeds {html.escape(str(p.seeds))}; max epochs {p.epochs}, patience {p.patience} on valid Recall@20; "
        f"search &le; {p.max_trials} trials per model and adapter (valid only)</li>"
        f"<li>fixed overrides <code>{html.escape(json.dumps(p.model_overrides))}</code></li>"
        f"<li>{html.escape(cap_line(data))}</li></ul>",
        _h(["modality", "encoder", "weights", "dim", "snapshot"], encoder_rows(data)),
    ]


def _main_results(data: StudyData, plots: dict[str, str]) -> list[str]:
    """Base vs +BeFA on test: the main table, its paired tests, the mean gain and its plot."""
    parts = [
        "<h2>Base vs +BeFA (test, best valid epoch)</h2>",
        _h(*main_table(data), cls="results"),
        "<p class='note'>Wilcoxon signed-rank (two-sided) on per-user test metrics, "
        "per-user differences averaged over seeds; "
        "Holm-adjusted across models and metrics. users +/-: users where +BeFA is higher / lower.</p>",
        "<p class='note'>Mean relative gain over models, next to the paper's claim "
        "(read it with the p-values above):</p>",
        _h(["metric", "mean relative gain (this data)", "paper's claim", "models"], mean_gain_rows(data)),
    ]
    if "main" in plots:
        parts.append(f"<img class='plot' id='main-plot' src='{plots['main']}' alt='base vs +BeFA'>")
    return parts


def _insertions(data: StudyData, plots: dict[str, str]) -> list[str]:
    """Where BeFA acts: each insertion against base, gate health, the trained gate distributions."""
    if data.insertions is None:
        return []
    skipped = "".join(f"<li>{html.escape(line)}</li>" for line in skipped_lines(data))
    parts = [
        "<h2 id='insertions'>Where BeFA acts: the insertion ablation</h2>"
        f"<p class='note'>{html.escape(INSERTIONS_NOTE)}</p>"
        f"<p id='insertions-result'>{html.escape(insertions_sentence(data))}</p>"
        + _h(*insertions_table(data), cls="insertions")
        + (f"<ul class='note'>{skipped}</ul>" if skipped else ""),
        "<h3>Gate health at the best valid epoch</h3>" + _h(*insertion_gates_table(data), cls="insertion-gates"),
        f"<h3>Trained gate distributions</h3><p class='note'>{html.escape(GATES_NOTE)}</p>",
    ]
    if "insertion_gates" in plots:
        parts.append(
            f"<img class='plot' id='insertion-gates-plot' src='{plots['insertion_gates']}' "
            "alt='trained gate distributions per insertion'>"
        )
    return parts + [_h(*distributions_table(data), cls="gate-distributions")]


def _authors_arm(data: StudyData) -> list[str]:
    """LATTICE as the authors ran it: what each comparison isolates, what it found, the two tables."""
    if data.authors_arm is None:
        return []
    return [
        "<h2 id='authors-arm'>LATTICE as the authors ran it</h2>"
        f"<p class='note'>{html.escape(AUTHORS_ARM_NOTE)}</p>"
        f"<p id='authors-arm-result'>{html.escape(authors_arm_sentence(data))}</p>"
        + _h(*authors_arms_table(data), cls="authors-arms")
        + _h(*authors_comparisons_table(data), cls="authors-comparisons")
    ]


def _overhead(data: StudyData) -> list[str]:
    return [
        "<h2>Parameters and time per epoch</h2>"
        + f"<p class='note'>{html.escape(OVERHEAD_NOTE)}</p>"
        + _h(*overhead_table(data))
    ]


def _where_befa_helps(data: StudyData) -> list[str]:
    """By user activity, on cold items, by item group."""
    parts = ["<h2>Where BeFA helps</h2><h3>By user activity</h3>" + _h(*groups_table(data))]
    if data.cold_items:
        c = data.cold_items
        parts.append(
            f"<h3>Item cold start (split <code>{html.escape(str(c.split_id))}</code>: "
            f"{c.cold_fraction or 0:.0%} of items with no train interaction; all test users)</h3>"
            + _h(*cold_table(data), cls="results")
        )
    if data.item_groups:
        parts.append(
            f"<h3>By item group</h3><p class='note'>{html.escape(ITEM_GROUPS_NOTE)}</p>"
            + _h(*item_groups_table(data), cls="item-groups")
        )
    return parts


def _experiments(frame: pd.DataFrame, plots: dict[str, str]) -> list[str]:
    """The decoupling-space sweep, the modality ablation and the sparsity sweep, those that ran."""
    parts = []
    for exp, title, key in (
        ("sweep_t", "Decoupling-space sweep", "sweep"),
        ("ablation", "Modality ablation", "ablation"),
        ("sparsity", "Sparsity sweep (valid/test fixed)", "sparsity"),
    ):
        if (frame["experiment"] == exp).any():
            parts.append(f"<h3>{title}</h3>")
            if key in plots:
                parts.append(f"<img class='plot' id='{key}-plot' src='{plots[key]}' alt='{title}'>")
            parts.append(_h(*experiment_table(frame, exp)))
    return parts


def _inspection(data: StudyData) -> list[str]:
    """What BeFA changes: gates, cosines and the top-10 of base and +BeFA for a few users."""
    ins = data.inspection
    if not ins:
        return []
    parts = [
        f"<h2>What BeFA changes ({html.escape(ins['model'])})</h2><p class='note'>{html.escape(COSINE_NOTE)}</p>",
        _h(
            ["modality", "gate mean", "gate std", "mean cos(c, adapted)", "mean cos(E, adapted)"],
            [
                [
                    m,
                    fmt_num(s["gate_mean"], 3),
                    fmt_num(s["gate_std"], 3),
                    fmt_num(s["cos_content_adapted_mean"], 3),
                    fmt_num(s["cos_behaviour_adapted_mean"], 3),
                ]
                for m, s in ins["summary"].items()
            ],
        ),
        f"<img class='plot' id='gates-plot' src='{ins['gates_png']}' alt='gate heatmap'>",
        f"<img class='plot' id='cosines-plot' src='{ins['cosines_png']}' alt='cosine histograms'>",
        "<h3>Top-10 of base and +BeFA (green border: a test item of the user)</h3>",
    ]
    for c in ins["comparisons"]:
        parts.append(
            f"<div class='user' id='user-{c['user_idx']}'><h4>User {html.escape(c['user_id'])}: "
            f"{html.escape(c['why'])} ({c['n_train']} train items)</h4>"
        )
        parts.append("<div class='label'>History (most recent train items)</div>" + _cards(c["history"]))
        parts.append(
            "<div class='cols'><div><div class='label'>base top-10</div>" + _cards(c["base"]) + "</div>"
            "<div><div class='label'>+BeFA top-10</div>" + _cards(c["befa"]) + "</div></div>"
        )
        parts.append("<div class='label'>Test items</div>" + _cards(c["test_items"]) + "</div>")
    return parts


def _selection_bias(data: StudyData) -> str:
    """How the search ran, then the gain if each arm's winner were picked on test, next to on valid
    (neither for an older study, whose search was a random sample of the grid)."""
    line = selection_bias_line(data)
    if not line:
        return ""
    return (
        f"<p class='note'>{html.escape(search_note(data))}</p>"
        f"<h3>Selection bias</h3><p class='note' id='selection-bias'>{html.escape(line)}</p>"
        + _h(*selection_bias_table(data), cls="selection-bias")
    )


def _search_timings_runs(data: StudyData) -> list[str]:
    """The search table, the step timings and the run counts, which close the page."""
    return [
        "<h2>Search (valid only)</h2>" + _h(*search_table(data)) + _selection_bias(data),
        "<h2>Timings</h2>" + _h(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in data.timings.items()]),
        f"<p class='note'>Runs trained: {data.runs.trained}, reused: {data.runs.reused}. "
        "Per-run results: <code>results.parquet</code>; Markdown: <a href='report.md'>report.md</a>.</p></body></html>",
    ]
