"""Run reports: what a pipeline run produced, as files next to its training runs.

Input: the run folders written by the trainer (``pipeline.training.record``: ``run.json`` with
the config, per-epoch valid metrics and test metrics at the best valid epoch;
``per_user.parquet`` with each test user's Recall@20 / NDCG@20) plus a
:class:`ReportContext` (data and where it came from, encoder, feature snapshots, split,
configuration, step timings). Output, in one folder::

    metrics.parquet / metrics.json   one row per model x adapter x metric (test split,
                                     best valid epoch), long format, with the encoder
                                     fingerprints and a random-init flag on every row
    gains.parquet                    base vs +BeFA per model and metric: relative gain, its
                                     paired bootstrap 95% interval over test users
                                     (ci_low, ci_high, n_users) and the verdict
    curves.png                       valid Recall@20 per epoch, one line per model x adapter
    base_vs_befa.png                 test Recall@20 / NDCG@20 bars, base next to +BeFA, and
                                     the relative gains with their intervals as error bars
    report.md                        the summary a person reads

Gains, their intervals, the "not distinguishable from noise" verdict and the flag on arms
that stopped far apart: :mod:`pipeline.reporting.gains`.

Run records are read through :class:`~pipeline.training.record.RunRecord`, which imports
no torch, so a report can be rebuilt anywhere the run folders are readable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, Field, SerializeAsAny

from pipeline.data.summary import DatasetSummary, IngestSource, SplitSummary
from pipeline.features.summary import ModalityFeatures
from pipeline.reporting.cold_start import cold_start_section
from pipeline.reporting.common import ADAPTER_LABEL, fmt_number, markdown_table
from pipeline.reporting.fit_section import fit_section
from pipeline.reporting.floor_section import floor_section, state_notes, vs_floor
from pipeline.reporting.gains import (
    ReportGain,
    gain_intervals,
    gains_frame,
    report_gains,
    results_section,
    stop_flags,
)
from pipeline.reporting.gate_section import gate_section
from pipeline.reporting.plots import CURVE_METRIC, plot_base_vs_befa, plot_training_curves
from pipeline.reporting.showcase import recommendations_section
from pipeline.training.record import RunRecord
from storage.atomic import write_json, write_parquet, write_text
from storage.keys import modality_order


class ReportContext(BaseModel):
    """Everything about a pipeline run that is not in the training run folders, as the
    records the steps returned: the catalog, each modality's features, the split, the
    parameters (any pydantic model: the job's ``PipelineParams``), step timings."""

    title: str = "befa pipeline run"
    dataset: DatasetSummary | None = None
    features: dict[str, ModalityFeatures] = Field(default_factory=dict)  # modality -> its features
    split: SplitSummary | None = None
    config: SerializeAsAny[BaseModel] | None = None  # the run's parameters
    timings: dict[str, float] = Field(default_factory=dict)  # step -> seconds
    notes: list[str] = Field(default_factory=list)


class ReportFiles(BaseModel):
    folder: Path
    metrics_parquet: Path
    metrics_json: Path
    gains_parquet: Path
    report_md: Path
    curves_png: Path | None = None
    bars_png: Path | None = None
    # base vs +BeFA per model and metric with its interval (the terminal's table), and the
    # pairs whose arms stopped far apart
    gains: list[ReportGain] = Field(default_factory=list)
    gain_notes: list[str] = Field(default_factory=list)


# -- reading runs ------------------------------------------------------------
def load_runs(run_dirs: Iterable[str | Path]) -> list[RunRecord]:
    """The validated run records of these folders (a damaged run.json fails here, by name)."""
    return [RunRecord.load(d) for d in run_dirs]


# -- tables ------------------------------------------------------------------
METRIC_COLUMNS = [
    "model",
    "adapter",
    "metric",
    "value",
    "split",
    "best_epoch",
    "epochs_run",
    "status",
    "run_dir",
    "feature_fingerprints",
    "random_init",
    "below_floor",
]


def gains_of(records: Sequence[RunRecord]) -> pd.DataFrame:
    """Base vs +BeFA of these runs: the gains frame with each gain's paired bootstrap interval."""
    return gains_frame(metrics_frame(records), intervals=gain_intervals(records))


def metrics_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """Long table: one row per model x adapter x test metric (at the best valid epoch)."""
    rows = []
    for rec in records:
        for metric, value in sorted(rec.test.items()):
            rows.append(
                {
                    "model": rec.model,
                    "adapter": rec.adapter,
                    "metric": metric,
                    "value": float(value),
                    "split": "test",
                    "best_epoch": rec.best_epoch,
                    "epochs_run": len(rec.epochs),
                    "status": rec.state,  # a killed run reads "interrupted", not "running"
                    "run_dir": rec.run_dir,
                    # provenance travels with every number: which encoder weights, and whether random
                    "feature_fingerprints": ",".join(
                        f"{m}={rec.feature_sets[m].get('fingerprint')}" for m in modality_order(rec.feature_sets)
                    ),
                    "random_init": any(bool(s.get("random_init")) for s in rec.feature_sets.values()),
                    "below_floor": rec.below_floor,
                }
            )
    frame = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    frame["best_epoch"] = frame["best_epoch"].astype("Int64")
    return frame


# -- markdown ----------------------------------------------------------------
def render_markdown(
    context: ReportContext,
    records: Sequence[RunRecord],
    gains: pd.DataFrame,
    files: dict[str, str] | None = None,
) -> str:
    """report.md: a warning for random weights, then data, features, split, results, gate
    health (+BeFA runs), the floor, runs, configuration, timings, files and notes."""
    lines = [f"# {context.title}", ""]
    if any(f.random_init for f in context.features.values()):
        lines += [
            "> **Note:** at least one encoder uses randomly initialised weights "
            "(asked for explicitly); its features carry no semantic content, so the metrics "
            "below check the pipeline, not the method.",
            "",
        ]
    for section in (
        _data_section(context),
        _features_section(context),
        _split_section(context),
        results_section(gains, records),
        gate_section(records),
        cold_start_section(records),
        floor_section(records),
        fit_section(records),
        _runs_section(records),
    ):
        lines += section
    context = context.model_copy(update={"notes": [*context.notes, *state_notes(records)]})
    lines += _appendix(context, files)
    return "\n".join(lines) + "\n"


def _data_section(context: ReportContext) -> list[str]:
    ds = context.dataset
    lines = ["## Data", ""]
    if ds is not None:
        lines += [f"- catalog: **{ds.name}** (fingerprint `{ds.fingerprint}`)"]
        lines += [
            f"- users: {ds.num_users:,}",
            f"- items: {ds.num_items:,}",
            f"- interactions: {ds.num_interactions:,}",
        ]
        lines += source_lines(ds.source)
    return lines


def source_lines(source: IngestSource | None) -> list[str]:
    """Where the catalog came from: the importer, the files it read, its other options."""
    if source is None:
        return ["- source: no ingest record (catalog ingested before catalogs recorded one)"]
    version = f" (catalog version `{source.version}`)" if source.version else ""
    lines = [f"- source: importer `{source.importer}`{version}"]
    lines += [f"    - {key}: `{path}`" for key, path in source.paths.items()]
    if source.options:
        options = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in sorted(source.options.items()))
        lines.append(f"    - options ({len(source.options)}): `{options}`")
    return lines


def _features_section(context: ReportContext) -> list[str]:
    lines = ["", "## Encoder and features", ""]
    if not context.features:
        return lines + ["No content features (collaborative models only)."]
    rows = [
        [
            modality,
            f"`{f.spec}`",
            f"`{f.fingerprint}`",
            f"weights: {f.weights_label}",
            f.dim if f.dim is not None else "-",
            f"`{f.snapshot}`",
            f.encoded,
            f.skipped,
            f.failed,
        ]
        for modality, f in context.features.items()
    ]
    return lines + markdown_table(
        ["modality", "spec", "fingerprint", "weights", "dim", "snapshot", "encoded", "reused", "failed"], rows
    )


def _split_section(context: ReportContext) -> list[str]:
    sp = context.split
    lines = ["", "## Split", ""]
    if sp is not None:
        seed = sp.seed if sp.seed is not None else "-"
        lines.append(f"- id: `{sp.id}` (kind {sp.kind}, seed {seed}, k-core {sp.k_core or '-'})")
        if sp.counts:
            lines.append("- rows: " + ", ".join(f"{k} {v:,}" for k, v in sp.counts.items()))
    return lines


def _runs_section(records: Sequence[RunRecord]) -> list[str]:
    rows = []
    for rec in records:
        wall, params = rec.wall, rec.parameters
        rows.append(
            [
                rec.model,
                ADAPTER_LABEL.get(rec.adapter, rec.adapter),
                rec.state,
                vs_floor(rec),
                len(rec.epochs),
                "-" if rec.best_epoch is None else rec.best_epoch,
                fmt_number(rec.best_valid.get(CURVE_METRIC)),
                f"{wall.get('total_s', sum(v for v in wall.values() if isinstance(v, (int, float)))):.1f}",
                f"{int(params.get('params_trainable', 0)):,}",
                f"{int(params.get('params_adapter', 0)):,}",
                f"`{Path(rec.run_dir or '.').name}`",
            ]
        )
    header = [
        "model",
        "adapter",
        "status",
        "vs floor",
        "epochs",
        "best epoch",
        f"valid {CURVE_METRIC}",
        "wall s",
        "params",
        "adapter params",
        "folder",
    ]
    return ["", "## Runs", ""] + markdown_table(header, rows)


def _appendix(context: ReportContext, files: dict[str, str] | None) -> list[str]:
    lines: list[str] = []
    if context.config is not None:
        config = context.config.model_dump(mode="json")
        lines += ["", "## Configuration", ""]
        if "ingest_options" in config:
            lines += [
                "`importer` and `ingest_options` are what this run was given (null and {}: the catalog as stored); "
                "where its data came from is under Data.",
                "",
            ]
        lines += ["```json", json.dumps(config, indent=2, default=str), "```"]
    if context.timings:
        lines += ["", "## Timings", ""]
        lines += markdown_table(
            ["step", "seconds"], [[k, f"{v:.1f}"] for k, v in context.timings.items()], ["---", "---:"]
        )
        lines.append(f"\nTotal: {sum(context.timings.values()):.1f} s")
    if files:
        lines += ["", "## Files", ""] + [f"- {k}: `{v}`" for k, v in files.items()]
    if context.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in context.notes]
    return lines


# -- all of it ---------------------------------------------------------------
def write_report(folder: str | Path, run_dirs: Sequence[str | Path], context: ReportContext) -> ReportFiles:
    """Write metrics (Parquet + JSON), gains, plots and report.md into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = load_runs(run_dirs)
    metrics = metrics_frame(records)
    gains = gains_frame(metrics, intervals=gain_intervals(records))

    metrics_parquet = write_parquet(folder / "metrics.parquet", pa.Table.from_pandas(metrics, preserve_index=False))
    metrics_json = write_json(folder / "metrics.json", json.loads(metrics.to_json(orient="records")))
    gains_parquet = write_parquet(
        folder / "gains.parquet",
        pa.Table.from_pandas(
            gains.astype({c: float for c in ("base", "befa", "relative_gain", "ci_low", "ci_high", "n_users")}),
            preserve_index=False,
        ),
    )
    curves = plot_training_curves(records, folder / "curves.png") if records else None
    bars = plot_base_vs_befa(metrics, folder / "base_vs_befa.png", gains=gains) if not metrics.empty else None
    files = {
        "metrics": metrics_parquet.name,
        "metrics (JSON)": metrics_json.name,
        "gains": gains_parquet.name,
    }
    if curves:
        files["training curves"] = curves.name
    if bars:
        files["base vs +BeFA"] = bars.name
    md = render_markdown(context, records, gains, files)
    md += recommendations_section(folder)  # written by the recommend step, when it ran
    if curves:
        md += f"\n![training curves]({curves.name})\n"
    if bars:
        md += f"\n![base vs +BeFA]({bars.name})\n"
    report_md = write_text(folder / "report.md", md)
    write_json(folder / "context.json", context.model_dump(mode="json"))
    return ReportFiles(
        folder=folder,
        metrics_parquet=metrics_parquet,
        metrics_json=metrics_json,
        gains_parquet=gains_parquet,
        report_md=report_md,
        curves_png=curves,
        bars_png=bars,
        gains=report_gains(gains),
        gain_notes=stop_flags(records),
    )
