"""The study's report: ``report.html``, ``report.md``, ``results.parquet`` and PNG plots.

Everything lands in the study folder; the HTML references its images by relative path
(``plots/*.png``, ``posters/*.jpg``), so it opens straight from the folder in a browser,
with no server, and the folder can be zipped and moved as a whole.

``results.parquet``: one row per experiment x setting x model x adapter x seed x split x
metric (``pipeline.study.analysis.RESULT_COLUMNS``); the main table is ``experiment == "main"``,
test metrics at each run's best VALID epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.reporting.common import markdown_table
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
    plot_gate_distributions,
    skipped_lines,
)
from pipeline.study.report.page import render_html
from pipeline.study.report.plots import plot_grouped, plot_main, plot_sweep
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
from storage.atomic import write_json, write_parquet, write_text


def render_markdown(data: StudyData, frame: pd.DataFrame, plots: dict[str, str]) -> str:
    """report.md, section by section, in the order of the HTML page."""
    lines = _md_head(data)
    lines += _md_setup(data)
    lines += _md_main_results(data, plots)
    lines += _md_insertions(data, plots)
    lines += _md_authors_arm(data)
    lines += _md_overhead(data)
    lines += _md_where_befa_helps(data)
    lines += _md_experiments(frame, plots)
    lines += _md_inspection(data)
    lines += _md_search_timings_runs(data)
    return "\n".join(lines)


def _md_head(data: StudyData) -> list[str]:
    """The title, a warning for random-init encoders, the verdict, the notes and the MostPop floor."""
    lines = [f"# {data.title}", ""]
    mods = [m for m, f in data.features.items() if f.random_init]
    if mods:
        lines += [
            f"> **Random-init encoder** for {', '.join(mods)}: those features carry no semantic content; "
            "configure a checkpoint (e.g. `clip:ViT-B-32@/path/ckpt.safetensors`) for a real test of the method.",
            "",
        ]
    lines += ["## Verdict", "", data.verdict, ""]
    lines += [f"> {n}" for n in data.notes] + ([""] if data.notes else [])
    if data.floor:  # the floor before any gain: a gain between runs below it says little
        lines += ["### Against the MostPop floor", ""] + markdown_table(*floor_table(data)) + [""]
    return lines


def _md_setup(data: StudyData) -> list[str]:
    """Data, split, seeds, budget, fixed overrides and the encoders."""
    p, ds = data.params, data.dataset
    lines = [
        "",
        "## Setup",
        "",
        f"- data: **{ds.name}** ({ds.num_users} users, {ds.num_items} items, {ds.num_interactions} interactions), "
        f"split `{data.split.id}` {data.split.counts}",
        f"- seeds: {p.seeds}; max epochs {p.epochs}, patience {p.patience} (valid Recall@20); "
        f"search: <= {p.max_trials} trials per model and adapter"
        + (f", <= {p.max_minutes} min" if p.max_minutes else ""),
        f"- fixed overrides: `{json.dumps(p.model_overrides)}`",
        f"- {cap_line(data)}",
        "",
    ]
    return lines + markdown_table(["modality", "encoder", "weights", "dim", "snapshot"], encoder_rows(data))


def _md_main_results(data: StudyData, plots: dict[str, str]) -> list[str]:
    """Base vs +BeFA on test: the main table, the mean gain and its plot."""
    lines = ["", "## Base vs +BeFA (test, best valid epoch)", ""]
    lines += markdown_table(*main_table(data))
    lines += ["", "Mean relative gain over models, next to the paper's claim (read it with the p-values above):", ""]
    lines += markdown_table(
        ["metric", "mean relative gain (this data)", "paper's claim", "models"], mean_gain_rows(data)
    )
    if "main" in plots:
        lines += ["", f"![base vs +BeFA]({plots['main']})"]
    return lines


def _md_insertions(data: StudyData, plots: dict[str, str]) -> list[str]:
    """Where BeFA acts: each insertion against base, gate health, the trained gate distributions."""
    if data.insertions is None:
        return []
    lines = ["", "## Where BeFA acts: the insertion ablation", "", INSERTIONS_NOTE, "", insertions_sentence(data), ""]
    lines += markdown_table(*insertions_table(data))
    lines += [""] + [f"- {line}" for line in skipped_lines(data)]
    lines += ["", "### Gate health at the best valid epoch", ""] + markdown_table(*insertion_gates_table(data))
    lines += ["", "### Trained gate distributions", "", GATES_NOTE, ""]
    if "insertion_gates" in plots:
        lines += [f"![trained gate distributions per insertion]({plots['insertion_gates']})", ""]
    return lines + markdown_table(*distributions_table(data))


def _md_authors_arm(data: StudyData) -> list[str]:
    """LATTICE as the authors ran it: what each comparison isolates, what it found, the two tables."""
    if data.authors_arm is None:
        return []
    lines = ["", "## LATTICE as the authors ran it", "", AUTHORS_ARM_NOTE, "", authors_arm_sentence(data), ""]
    lines += markdown_table(*authors_arms_table(data)) + [""]
    return lines + markdown_table(*authors_comparisons_table(data))


def _md_overhead(data: StudyData) -> list[str]:
    return ["", "## Parameters and time", "", OVERHEAD_NOTE, ""] + markdown_table(*overhead_table(data))


def _md_where_befa_helps(data: StudyData) -> list[str]:
    """By user activity, on cold items, by item group."""
    lines = ["", "## Where BeFA helps", "", "### By user activity (train-interaction terciles)", ""]
    lines += markdown_table(*groups_table(data))
    if data.cold_items:
        c = data.cold_items
        lines += [
            "",
            f"### Item cold start (split `{c.split_id}`: {c.cold_fraction or 0:.0%} of items "
            "with no train interaction; all test users)",
            "",
        ]
        lines += markdown_table(*cold_table(data))
    if data.item_groups:
        lines += ["", "### By item group", "", ITEM_GROUPS_NOTE, ""]
        lines += markdown_table(*item_groups_table(data))
    return lines


def _md_experiments(frame: pd.DataFrame, plots: dict[str, str]) -> list[str]:
    """The decoupling-space sweep, the modality ablation and the sparsity sweep, those that ran."""
    lines: list[str] = []
    for exp, title, key in (
        ("sweep_t", "Decoupling-space sweep", "sweep"),
        ("ablation", "Modality ablation", "ablation"),
        ("sparsity", "Sparsity sweep", "sparsity"),
    ):
        if (frame["experiment"] == exp).any():
            lines += ["", f"### {title}", ""]
            lines += markdown_table(*experiment_table(frame, exp))
            if key in plots:
                lines += ["", f"![{title}]({plots[key]})"]
    return lines


def _md_inspection(data: StudyData) -> list[str]:
    """What BeFA changes: gates, cosines and the top-10 of base and +BeFA for a few users."""
    ins = data.inspection
    if not ins:
        return []
    lines = ["", f"## What BeFA changes ({ins['model']})", "", COSINE_NOTE, ""]
    lines += markdown_table(
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
    )
    lines += ["", f"![gates]({ins['gates_png']})", "", f"![cosines]({ins['cosines_png']})", ""]
    for c in ins["comparisons"]:
        lines += [
            f"### user {c['user_id']} ({c['why']}; {c['n_train']} train items)",
            "",
            "| rank | base | +BeFA |",
            "|---|---|---|",
        ]
        for r, (b, a) in enumerate(zip(c["base"], c["befa"]), 1):
            lines.append(
                f"| {r} | {'**HIT** ' if b['hit'] else ''}{b['title']} | {'**HIT** ' if a['hit'] else ''}{a['title']} |"
            )
        lines.append("")
    return lines


def _md_search_timings_runs(data: StudyData) -> list[str]:
    """The search table, the step timings and the run counts, which close the report."""
    lines = ["## Search (valid only)", ""]
    lines += markdown_table(*search_table(data))
    lines += _md_selection_bias(data)
    lines += ["", "## Timings", ""]
    lines += markdown_table(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in data.timings.items()])
    lines += [
        "",
        f"Runs trained: {data.runs.trained}, reused: {data.runs.reused}. Full per-run results: `results.parquet`.",
        "",
    ]
    return lines


def _md_selection_bias(data: StudyData) -> list[str]:
    """How the search ran, then the gain if each arm's winner were picked on test, next to on valid
    (neither for an older study, whose search was a random sample of the grid)."""
    line = selection_bias_line(data)
    if not line:
        return []
    return ["", search_note(data), "", "### Selection bias", "", line, ""] + markdown_table(*selection_bias_table(data))


def write_study_report(folder: str | Path, frame: pd.DataFrame, data: StudyData) -> dict[str, Path]:
    """Write results.parquet, the plots, report.md, report.html and study.json into ``folder``."""
    folder = Path(folder)
    plots_dir = folder / "plots"
    files: dict[str, Path] = {}
    files["results"] = write_parquet(folder / "results.parquet", pa.Table.from_pandas(frame, preserve_index=False))
    plots: dict[str, str] = {}
    for key, fn in (
        ("main", lambda: plot_main(frame, plots_dir / "main.png")),
        ("insertion_gates", lambda: plot_gate_distributions(data.insertions, plots_dir / "insertion_gates.png")),
        ("sweep", lambda: plot_sweep(frame, plots_dir / "sweep_t.png")),
        ("ablation", lambda: plot_grouped(frame, "ablation", plots_dir / "ablation.png", "modalities")),
        (
            "sparsity",
            lambda: plot_grouped(
                frame, "sparsity", plots_dir / "sparsity.png", "share of each user's train interactions", line=True
            ),
        ),
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
