"""Job commands: ``befa run`` (the pipeline, in-process), ``befa watch``, ``befa study``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import CommandGroup, DatasetsRoot, FeatureStoreOpt, Home, console, csv_list, fail, settings_from
from pipeline.job.params import DEFAULT_ENCODER, PipelineError
from pipeline.job.run import run_pipeline
from pipeline.job.watch import watch_catalogs
from pipeline.reporting.console import metrics_table
from pipeline.study.params import StudyError
from pipeline.study.run import run_study

commands = CommandGroup()




@commands.command("run")
def run_cmd(
    dataset: str = typer.Argument("movielens-100k-posters", help="Catalog to run on (ingested if needed)."),
    encoder: str = typer.Option(DEFAULT_ENCODER, help="Encoder spec or per-modality image=...,text=..."),
    models: Optional[str] = typer.Option(None, help="Comma list (default lightgcn,freedom,mgcn)."),
    adapters: Optional[str] = typer.Option(None, help="Comma list of none,befa (default both)."),
    epochs: Optional[int] = typer.Option(None, help="Max epochs per model."),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience."),
    seed: Optional[int] = typer.Option(None, help="Training seed."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ..."),
    cluster: Optional[str] = typer.Option(None, help="Ray address (ray://host:10001 or auto) for feature extraction."),
    run_name: Optional[str] = typer.Option(None, help="Folder name under $BEFA_HOME/runs/pipelines."),
    datasets_root: Optional[Path] = DatasetsRoot,
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Run the whole pipeline in this process, without a Prefect server (same steps as befa/full-pipeline)."""
    params = dict(dataset=dataset, encoder=encoder, models=csv_list(models), adapters=csv_list(adapters), epochs=epochs,
                  patience=patience, seed=seed, device=device, cluster=cluster, run_name=run_name)
    params = {k: v for k, v in params.items() if v is not None}
    try:
        result = run_pipeline(params, settings_from(datasets_root, home, feature_store), log=console.print)
    except PipelineError as exc:
        fail(str(exc))
    _print_pipeline_result(result)


def _print_pipeline_result(result) -> None:
    rows = {f"{r.model}{'+befa' if r.adapter == 'befa' else ''}": r.test for r in result.runs}
    console.print(metrics_table(rows, title="test metrics at the best valid epoch"))
    console.print(f"report: [bold]{result.report.get('report_md')}[/]")


@commands.command("watch")
def watch_cmd(
    names: list[str] = typer.Argument(None, help="Registered catalogs to check (default: all)."),
    datasets_root: Optional[Path] = DatasetsRoot,
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Check registered catalogs for changes and re-extract only what changed (no Prefect event)."""
    for change in watch_catalogs(settings_from(datasets_root, home, feature_store), names or None):
        console.print(change.summary())


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
    name: Optional[str] = typer.Option(None, help="Study folder name under $BEFA_HOME/runs/studies."),
    datasets_root: Optional[Path] = DatasetsRoot,
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Base vs +BeFA across models and seeds, t sweep, modality ablation, sparsity sweep; writes report.html."""
    params = dict(dataset=dataset, encoder=encoder, models=csv_list(models), seeds=[999 + i for i in range(seeds)],
                  epochs=epochs, patience=patience, max_trials=max_trials, max_minutes=max_minutes,
                  focus_model=focus_model, experiment_seeds=experiment_seeds, num_threads=threads, device=device, name=name)
    params = {k: v for k, v in params.items() if v is not None}
    try:
        result = run_study(params, settings_from(datasets_root, home, feature_store), log=console.print)
    except (StudyError, ValueError) as exc:
        fail(str(exc))
    console.print(result.verdict)
    console.print(f"report: [bold]{result.files.get('report_html')}[/]")
