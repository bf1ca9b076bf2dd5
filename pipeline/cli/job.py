"""Job commands: ``befa run`` (the pipeline, in-process), ``befa watch``, ``befa study``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from pipeline.cli.common import CommandGroup, DatasetsRoot, FeatureStoreOpt, Home, console, csv_list, fail, settings_from
from pipeline.cli.ingest_options import with_ingest_options
from pipeline.data.catalog import CatalogError
from pipeline.job.params import DEFAULT_ENCODER, PipelineError
from pipeline.job.run import run_pipeline
from pipeline.job.watch import watch_catalogs
from pipeline.reporting.console import metrics_table
from pipeline.study.params import StudyError
from pipeline.study.run import run_study

commands = CommandGroup()




@commands.command("run")
@with_ingest_options
def run_cmd(
    dataset: str = typer.Argument("movielens-100k-posters", help="Catalog to run on (ingested if needed)."),
    encoder: str = typer.Option(DEFAULT_ENCODER, help="Encoder spec or per-modality image=...,text=..."),
    models: Optional[str] = typer.Option(None, help="Comma list of mostpop, lightgcn, bm3, lattice, freedom, mgcn "
                                         "(default lightgcn,freedom,mgcn); mostpop always runs too, as the floor."),
    adapters: Optional[str] = typer.Option(None, help="Comma list of none,befa (default both)."),
    epochs: Optional[int] = typer.Option(None, help="Max epochs per model."),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience."),
    seed: Optional[int] = typer.Option(None, help="Training seed."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ..."),
    cluster: Optional[str] = typer.Option(None, help="Ray address (ray://host:10001 or auto): feature extraction and the training runs on Ray."),
    cpus_per_run: Optional[int] = typer.Option(None, "--cpus-per-run", help="With --cluster: CPUs (and torch threads) per training run (default 1)."),
    run_name: Optional[str] = typer.Option(None, help="Folder name under $BEFA_HOME/runs/pipelines."),
    recommend_k: Optional[int] = typer.Option(None, "--recommend-k", help="Items per user in recommendations.parquet (default 20; 0 skips the step)."),
    recommend_run: Optional[str] = typer.Option(None, "--recommend-run", help="Run to serve, '<model>-<adapter>' (default: the best by VALID Recall@20)."),
    importer: Optional[str] = typer.Option(None, help="Importer of the catalog (default: the dataset's own, 'generic' when --items is given)."),
    ingest: Optional[str] = typer.Option(None, help="auto (ingest when not stored yet), always (re-ingest) or never."),
    datasets_root: Optional[Path] = DatasetsRoot,
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
    ingest_options: Optional[dict] = None,
) -> None:
    """Run the whole pipeline in this process, without a Prefect server (same steps as befa/full-pipeline)."""
    params = dict(dataset=dataset, encoder=encoder, models=csv_list(models), adapters=csv_list(adapters), epochs=epochs,
                  patience=patience, seed=seed, device=device, cluster=cluster, cpus_per_run=cpus_per_run, run_name=run_name,
                  recommend_k=recommend_k, recommend_run=recommend_run, importer=importer,
                  ingest=ingest, ingest_options=ingest_options or None)
    params = {k: v for k, v in params.items() if v is not None}
    try:
        result = run_pipeline(params, settings_from(datasets_root, home, feature_store), log=console.print)
    except (PipelineError, CatalogError) as exc:  # bad parameters, bad catalog files: the message, no traceback
        fail(str(exc))
    _print_pipeline_result(result)


def _print_pipeline_result(result) -> None:
    rows = {f"{r.model}{'+befa' if r.adapter == 'befa' else ''}": r.test for r in result.runs}
    console.print(metrics_table(rows, title="test metrics at the best valid epoch"))
    for r in result.runs:
        if r.floor_note:
            console.print(f"[bold yellow]warning:[/] {r.floor_note}")
    recs = result.recommendations
    if recs is not None:
        console.print(f"recommendations: top-{result.params['recommend_k']} for {recs.users} users from {recs.model} {recs.adapter} -> {recs.path}")
    console.print(f"report: [bold]{result.report.get('report_md')}[/]")


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
    for change in changes:
        if change.error:
            console.print(f"[bold red]{change.catalog}: watch failed, skipped:[/] {escape(change.error)}")
        else:
            console.print(change.summary())
    failed = [c.catalog for c in changes if c.error]
    if failed:
        console.print(f"{len(failed)} of {len(changes)} catalogs failed: {', '.join(failed)}; the others were watched")
        raise typer.Exit(code=1)


@commands.command("study")
def study_cmd(
    dataset: str = typer.Option("movielens-100k-posters", help="Catalog (ingested if needed)."),
    encoder: str = typer.Option(DEFAULT_ENCODER, help="Encoder spec or image=...,text=... "
                                "(random-init weights, when asked for, are labelled in the report)."),
    models: Optional[str] = typer.Option(None, help="Comma list (default bm3,lattice,freedom,mgcn)."),
    seeds: int = typer.Option(3, help="Number of training seeds."),
    epochs: int = typer.Option(1000, help="Max epochs per run."),
    patience: int = typer.Option(10, help="Early-stopping patience."),
    max_trials: int = typer.Option(4, help="Hyper-parameter configurations tried per model and adapter (chosen on VALID)."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop starting new trials of one search after this."),
    focus_model: str = typer.Option("freedom", help="Model of the t sweep, modality ablation, sparsity sweep and inspection."),
    experiment_seeds: Optional[int] = typer.Option(None, help="Seeds for sweep/ablation/sparsity (default: all)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for training."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ..."),
    cluster: Optional[str] = typer.Option(None, help="Ray address (ray://host:10001 or auto): extraction and every phase's runs on Ray."),
    cpus_per_run: Optional[int] = typer.Option(None, "--cpus-per-run", help="With --cluster: CPUs (and torch threads) per training run (default 1)."),
    name: Optional[str] = typer.Option(None, help="Study folder name under $BEFA_HOME/runs/studies."),
    datasets_root: Optional[Path] = DatasetsRoot,
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Base vs +BeFA across models and seeds, t sweep, modality ablation, sparsity sweep; writes report.html."""
    params = dict(dataset=dataset, encoder=encoder, models=csv_list(models), seeds=[999 + i for i in range(seeds)],
                  epochs=epochs, patience=patience, max_trials=max_trials, max_minutes=max_minutes,
                  focus_model=focus_model, experiment_seeds=experiment_seeds, num_threads=threads, device=device,
                  cluster=cluster, cpus_per_run=cpus_per_run, name=name)
    params = {k: v for k, v in params.items() if v is not None}
    try:
        result = run_study(params, settings_from(datasets_root, home, feature_store), log=console.print)
    except (StudyError, ValueError) as exc:
        fail(str(exc))
    console.print(result.verdict)
    console.print(f"report: [bold]{result.files.get('report_html')}[/]")
