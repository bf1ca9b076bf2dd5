"""Job commands: ``befa run`` (the pipeline, in-process), ``befa watch``, ``befa study``.

``befa run`` and ``befa study`` take their flags from the parameter models, one per field
(:mod:`pipeline.cli.params_options`), ``--set MODEL.KEY=VALUE`` for ``model_overrides`` and
the importer options for ``ingest_options`` (:mod:`pipeline.cli.ingest_options`). Each is
built from its model class (:func:`make_run_command`, :func:`make_study_command`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from pipeline.cli.common import CommandGroup, DatasetsRoot, FeatureStoreOpt, Home, console, fail, settings_from
from pipeline.cli.ingest_options import with_ingest_options
from pipeline.cli.params_options import build_params, check_set, parse_set, set_option, with_params
from pipeline.data.catalog import CatalogError
from pipeline.job.params import PipelineError, PipelineParams
from pipeline.job.run import run_pipeline
from pipeline.job.watch import watch_catalogs
from pipeline.reporting.console import gains_table, metrics_table
from pipeline.study.params import StudyError, StudyParams
from pipeline.study.run import run_study

commands = CommandGroup()
INGEST_PANEL = "Importer options (ingest_options; used when the catalog is ingested)"


def make_run_command(model: type[PipelineParams] = PipelineParams):
    """``befa run`` with one flag per field of ``model`` (a subclass adds its fields as flags)."""

    @with_ingest_options(panel=INGEST_PANEL)
    @with_params(model, aliases={"num_threads": ["--threads"]}, panel=f"Parameters ({model.__name__})")
    def run_cmd(
        dataset: str = typer.Argument(
            model.model_fields["dataset"].default, help="Catalog to run on (ingested if needed)."
        ),
        set_: list[str] = set_option(f"Parameters ({model.__name__})"),
        datasets_root: Optional[Path] = DatasetsRoot,
        home: Optional[Path] = Home,
        feature_store: Optional[str] = FeatureStoreOpt,
        params: Optional[dict] = None,
        ingest_options: Optional[dict] = None,
    ) -> None:
        """Run the whole pipeline in this process, without a Prefect server (same steps as befa/full-pipeline)."""
        given = {**(params or {}), "dataset": dataset}
        if ingest_options:
            given["ingest_options"] = ingest_options
        if set_:
            given["model_overrides"] = parse_set(set_)
        pipeline = build_params(model, given)
        check_set(pipeline.model_overrides, pipeline.models)
        try:
            result = run_pipeline(pipeline, settings_from(datasets_root, home, feature_store), log=console.print)
        except (PipelineError, CatalogError) as exc:  # bad parameters, bad catalog files: the message, no traceback
            fail(str(exc))
        _print_pipeline_result(result)

    return run_cmd


run_cmd = commands.command("run")(make_run_command())


def _print_pipeline_result(result) -> None:
    rows = {f"{r.model}{'+befa' if r.adapter == 'befa' else ''}": r.test for r in result.runs}
    console.print(metrics_table(rows, title="test metrics at the best valid epoch"))
    if any(g.relative_gain is not None for g in result.report.gains):
        console.print(gains_table(result.report.gains))
    for note in result.report.gain_notes:
        console.print(f"[bold yellow]caution:[/] {escape(note)}")
    for r in result.runs:
        if r.fit is not None:
            console.print(escape(r.fit.line(r.label)))
    for r in result.runs:
        if r.floor_note:
            console.print(f"[bold yellow]warning:[/] {r.floor_note}")
    recs = result.recommendations
    if recs is not None:
        console.print(
            f"recommendations: top-{result.params.recommend_k} for {recs.users} users "
            f"from {recs.model} {recs.adapter} -> {recs.path}"
        )
        for note in recs.left_out:
            console.print(f"[yellow]left out of the recommendations:[/] {escape(note)}")
    console.print(f"report: [bold]{result.report.report_md}[/]")


@commands.command("watch")
def watch_cmd(
    names: list[str] = typer.Argument(None, help="Registered catalogs to check (default: all)."),
    datasets_root: Optional[Path] = DatasetsRoot,
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Check registered catalogs for changes and re-extract only what changed (no Prefect event)."""
    try:
        changes = watch_catalogs(settings_from(datasets_root, home, feature_store), names or None)
    except KeyError as exc:
        fail(str(exc.args[0]))
    if not changes:
        console.print("no catalog is registered for watching: `befa run` registers the catalogs it runs on")
    for change in changes:  # the sentence the Prefect watch logs
        console.print(f"[bold red]{escape(change.sentence())}[/]" if change.error else escape(change.sentence()))
    failed = [c.catalog for c in changes if c.error]
    if failed:
        console.print(f"{len(failed)} of {len(changes)} catalogs failed: {', '.join(failed)}; the others were watched")
        raise typer.Exit(code=1)


def make_study_command(model: type[StudyParams] = StudyParams):
    """``befa study`` with one flag per field of ``model``."""

    @with_ingest_options(panel=INGEST_PANEL)
    @with_params(model, aliases={"num_threads": ["--threads"]}, panel=f"Parameters ({model.__name__})")
    def study_cmd(
        set_: list[str] = set_option(f"Parameters ({model.__name__})"),
        datasets_root: Optional[Path] = DatasetsRoot,
        home: Optional[Path] = Home,
        feature_store: Optional[str] = FeatureStoreOpt,
        params: Optional[dict] = None,
        ingest_options: Optional[dict] = None,
    ) -> None:
        """Base vs +BeFA across models and seeds, t sweep, modality ablation, sparsity sweep; writes report.html."""
        given = dict(params or {})
        if ingest_options:
            given["ingest_options"] = ingest_options
        if set_:
            given["model_overrides"] = parse_set(set_)
        study = build_params(model, given)
        check_set(study.model_overrides, study.models)
        if len(study.seeds) == 1 and 0 <= study.seeds[0] < 10:  # the flag took a count before; say what runs now
            console.print(
                f"[yellow]note:[/] --seeds {study.seeds[0]} runs one seed, {study.seeds[0]}; --seeds lists the seeds "
                "themselves (e.g. --seeds 999,1000,1001 for three)"
            )
        try:
            result = run_study(study, settings_from(datasets_root, home, feature_store), log=console.print)
        except (StudyError, ValueError) as exc:
            fail(str(exc))
        _print_study_result(result)

    return study_cmd


study_cmd = commands.command("study")(make_study_command())


def _print_study_result(result) -> None:
    console.print(result.verdict)
    console.print(f"report: [bold]{result.files.get('report_html')}[/]")
