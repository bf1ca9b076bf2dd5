"""The ``befa`` command line.

Each command is a thin shell over a plain function of the core, so everything
the CLI does can also be called from Python, from tests and from Prefect flows.
Heavy imports (torch, encoders) happen inside the commands to keep ``--help`` fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from models import get_model_class, parse_overrides
from pipeline.data.catalog import Catalog, CatalogError
from pipeline.data.datasets import KNOWN_DATASETS, DownloadError, download, local_status
from pipeline.data.export import export_command
from pipeline.data.ingest import ingest
from pipeline.data.splits import ensure_split, make_split
from pipeline.data.stats import catalog_stats, render_stats
from pipeline.features.extract import extract_command
from pipeline.features.load import features_for_training, load_run_features
from pipeline.job.params import PipelineError
from pipeline.job.run import run_pipeline
from pipeline.job.watch import watch_catalogs
from pipeline.reporting.console import metrics_table, summary_table
from pipeline.settings import Settings, get_settings
from pipeline.study.params import StudyError
from pipeline.study.run import run_study
from pipeline.training.api import evaluate_run, train_model
from pipeline.training.record import RunRecord
from storage.feature_store import FeatureStore

app = typer.Typer(
    name="befa",
    help="Behaviour-driven feature adaptation for multimedia recommendation: "
    "ingest catalogs, extract frozen-encoder features, train graph recommenders with and without BeFA.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

DatasetsRoot = typer.Option(None, "--datasets-root", envvar="BEFA_DATASETS_ROOT", help="Folder holding raw datasets.")
Home = typer.Option(None, "--home", envvar="BEFA_HOME", help="befa storage root (catalogs, splits, runs). Default ./.befa")
FeatureStoreOpt = typer.Option(None, "--feature-store", envvar="BEFA_FEATURE_STORE", help="Feature store root: path or fsspec URI.")


def _settings(datasets_root: Optional[Path], home: Optional[Path], feature_store: Optional[str] = None) -> Settings:
    return get_settings(datasets_root=datasets_root, home=home, feature_store=feature_store)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


@app.command("datasets")
def datasets_cmd(datasets_root: Optional[Path] = DatasetsRoot) -> None:
    """List the datasets befa knows, their public upstream and whether a local copy is present."""
    settings = _settings(datasets_root, None)
    table = Table(title=f"datasets (root: {settings.datasets_root})")
    for col in ("name", "local copy", "upstream"):
        table.add_column(col)
    for name, ds in KNOWN_DATASETS.items():
        table.add_row(name, local_status(name, settings.datasets_root), "\n".join(ds.upstream_urls))
    console.print(table)


@app.command("download")
def download_cmd(
    name: str = typer.Argument(..., help="Dataset name, e.g. movielens-100k-posters."),
    datasets_root: Optional[Path] = DatasetsRoot,
) -> None:
    """Download a dataset from its public upstream into the datasets root and verify it (needs internet)."""
    settings = _settings(datasets_root, None)
    try:
        path = download(name, settings.datasets_root)
    except (DownloadError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"downloaded and verified: {path}")


@app.command("ingest")
def ingest_cmd(
    name: str = typer.Argument(..., help="Dataset name (movielens-100k-posters, amazon-baby-5core) or 'generic' / 'mmrec'."),
    min_rating: Optional[float] = typer.Option(None, help="Keep ratings >= this (MovieLens default 4)."),
    catalog_name: Optional[str] = typer.Option(None, "--as", help="Name to store the catalog under (generic/mmrec)."),
    items: Optional[Path] = typer.Option(None, help="generic: items CSV/Parquet."),
    interactions: Optional[Path] = typer.Option(None, help="generic: interactions CSV/Parquet."),
    images: Optional[Path] = typer.Option(None, help="generic: image folder."),
    folder: Optional[Path] = typer.Option(None, help="mmrec: folder with <name>.inter and *_feat.npy."),
    on_unknown_items: Optional[str] = typer.Option(None, help="Interactions naming unknown items: 'error' (default) or 'skip' (each skip reported)."),
    verify: Optional[bool] = typer.Option(None, "--verify/--no-verify", help="Check known datasets against their SHA256 sums (default on)."),
    column: list[str] = typer.Option([], "--column", help="generic: column mapping KEY=NAME, e.g. --column item_id_column=sku --column text_column=description."),
    datasets_root: Optional[Path] = DatasetsRoot,
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Import and validate a catalog; writes items/interactions Parquet and an ingest report.

    --min-rating 0 keeps every MovieLens rating (leaving it out keeps ratings >= 4)."""

    settings = _settings(datasets_root, home, feature_store)
    options = dict(min_rating=min_rating, name=catalog_name, items=items, interactions=interactions, images=images,
                   folder=folder, on_unknown_items=on_unknown_items, verify=verify)
    options = {k: v for k, v in options.items() if v is not None}
    for mapping in column:
        key, sep, value = mapping.partition("=")
        if not sep or not key.endswith("_column"):
            _fail(f"--column expects KEY_column=NAME, got {mapping!r}")
        options[key] = value
    try:
        catalog, report = ingest(name, settings, **options)
    except (CatalogError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    _print_report(report)
    console.print(f"catalog [bold]{catalog.name}[/] written to {settings.catalog_dir(catalog.name)}")


def _print_report(report) -> None:
    table = Table(title=f"ingest: {report.dataset}")
    for col in ("what", "in", "out"):
        table.add_column(col, justify="right" if col != "what" else "left")
    for key in sorted(set(report.counts_in) | set(report.counts_out)):
        table.add_row(key, str(report.counts_in.get(key, "")), str(report.counts_out.get(key, "")))
    console.print(table)
    for kind, n in report.summary_by_problem().items():
        console.print(f"  [yellow]{n}[/] x {kind}")


@app.command("split")
def split_cmd(
    name: str = typer.Argument(..., help="Ingested catalog name."),
    kind: str = typer.Option("random", help="random (MMRec 8:1:1 per user) or temporal (leave-last-out)."),
    seed: int = typer.Option(2024, help="Seed of the random split."),
    k_core: Optional[int] = typer.Option(None, help="Apply a k-core filter first (benchmarks use 5)."),
    home: Optional[Path] = Home,
) -> None:
    """Split a catalog's interactions into train/valid/test and store the split with the catalog."""
    settings = _settings(None, home)
    catalog = Catalog.load(settings.catalog_dir(name))
    split = make_split(catalog, kind=kind, seed=seed, k_core=k_core)
    path = split.save(settings.catalog_dir(name) / "splits")
    console.print(f"split {split.id}: {split.counts()} -> {path}")


@app.command("export-mmrec")
def export_mmrec_cmd(
    name: str = typer.Argument(..., help="Ingested catalog name."),
    split: str = typer.Option(..., help="Stored split name, e.g. random-s2024."),
    dest: Path = typer.Option(..., help="Output folder for <name>.inter and *_feat.npy."),
    image_fp: Optional[str] = typer.Option(None, help="Feature-store fingerprint of the image features."),
    text_fp: Optional[str] = typer.Option(None, help="Feature-store fingerprint of the text features."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Export a catalog, a split and features in the MMRec toolbox format (.inter + .npy)."""
    fps = {m: fp for m, fp in (("image", image_fp), ("text", text_fp)) if fp}
    out = export_command(name, split, dest, _settings(None, home, feature_store), fingerprints=fps or None)
    console.print(f"exported: {out}")


@app.command("stats")
def stats_cmd(
    name: str = typer.Argument(..., help="Ingested catalog name."),
    home: Optional[Path] = Home,
) -> None:
    """Print statistics of an ingested catalog and its stored splits."""
    settings = _settings(None, home)
    console.print(render_stats(catalog_stats(settings.catalog_dir(name))))


@app.command("extract")
def extract_cmd(
    dataset: str = typer.Option(..., "--dataset", help="Ingested catalog name."),
    encoder: str = typer.Option("minilm", "--encoder", help="Encoder spec, e.g. minilm, clip:ViT-B-32@/models/vitb32.safetensors, "
                                "clip:ViT-B-32@random, imagebind:huge@/models/imagebind_huge.pth, or image=...,text=..."),
    batch_size: Optional[int] = typer.Option(None, help="Items per forward pass (default: sized to the device)."),
    num_workers: Optional[int] = typer.Option(None, help="Image decoding worker processes (default: by device)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when present)."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Embed a catalog's images/texts with a frozen encoder into the feature store (incremental)."""
    try:
        summary = extract_command(dataset, encoder, _settings(None, home, feature_store), batch_size=batch_size,
                                  num_workers=num_workers, device=device)
    except (CatalogError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    console.print(summary_table(summary))


@app.command("train")
def train_cmd(
    dataset: str = typer.Option(..., "--dataset", help="Ingested catalog name."),
    model: str = typer.Option("lightgcn", "--model", help="mostpop, lightgcn, bm3, lattice, freedom or mgcn."),
    adapter: str = typer.Option("none", "--adapter", help="none or befa."),
    encoder: str = typer.Option("minilm", "--encoder", help="Encoder spec for content models (see `befa extract`)."),
    split: str = typer.Option("random-s2024", "--split", help="Stored split name; random-s<SEED> is created if missing."),
    set_: list[str] = typer.Option([], "--set", help="Model config override KEY=VALUE (JSON value), e.g. --set befa.t=2 --set reg=1e-4."),
    seed: int = typer.Option(999, help="Training seed."),
    epochs: int = typer.Option(1000, help="Max epochs."),
    patience: int = typer.Option(10, help="Early stopping: epochs without a valid Recall@20 improvement."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ... (default: cuda when present)."),
    run_dir: Optional[Path] = typer.Option(None, help="Run folder (default under $BEFA_HOME/runs)."),
    resume: bool = typer.Option(False, help="Resume from the run folder's last checkpoint."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Train one model (optionally +BeFA) to early stopping and print its test metrics."""
    settings = _settings(None, home, feature_store)
    try:
        overrides = {**parse_overrides(set_), "adapter": adapter}
    except ValueError as exc:
        _fail(f"--set: {exc}")
    try:
        model_cls = get_model_class(model)
        catalog = Catalog.load(settings.catalog_dir(dataset))
        split_path = ensure_split(catalog, settings.catalog_dir(dataset) / "splits", split)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    features = None
    if model_cls.uses_content:
        features = features_for_training(catalog, encoder, FeatureStore(settings.feature_store), device=device)
        for m in features.modalities:
            if features.random_init.get(m):
                console.print(f"[yellow]{m} features: weights: random init ({features.fingerprints[m]}); quality numbers from them mean nothing[/]")
    try:
        # paths (not objects), so the run records where its catalog and split live for `befa evaluate`
        result = train_model(settings.catalog_dir(dataset), split_path, features, model, overrides=overrides, run_dir=run_dir,
                             seed=seed, device=device, max_epochs=epochs, patience=patience, resume=resume,
                             graph_cache_dir=settings.home / "graph-cache", runs_root=settings.runs_dir)
    except ValueError as exc:
        _fail(str(exc))
    console.print(metrics_table([result], title=f"test metrics at best valid epoch {result.record.best_epoch}"))
    console.print(f"run folder: {result.run_dir}")


@app.command("evaluate")
def evaluate_cmd(
    run: Path = typer.Argument(..., help="A run folder written by `befa train`."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ..."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Reload a run's best checkpoint and recompute its valid and test metrics."""
    settings = _settings(None, home, feature_store)
    try:
        features = load_run_features(RunRecord.load(run), FeatureStore(settings.feature_store), run)
        metrics = evaluate_run(run, features=features, device=device)
    except (ValueError, FileNotFoundError, CatalogError) as exc:
        _fail(str(exc))
    console.print(metrics_table(metrics, title=str(run)))


def _csv(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command("run")
def run_cmd(
    dataset: str = typer.Argument("movielens-100k-posters", help="Catalog to run on (ingested if needed)."),
    encoder: str = typer.Option("minilm", help="Encoder spec or per-modality image=...,text=..."),
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
    params = dict(dataset=dataset, encoder=encoder, models=_csv(models), adapters=_csv(adapters), epochs=epochs,
                  patience=patience, seed=seed, device=device, cluster=cluster, run_name=run_name)
    params = {k: v for k, v in params.items() if v is not None}
    try:
        result = run_pipeline(params, _settings(datasets_root, home, feature_store), log=console.print)
    except PipelineError as exc:
        _fail(str(exc))
    _print_pipeline_result(result)


def _print_pipeline_result(result) -> None:
    rows = {f"{r.model}{'+befa' if r.adapter == 'befa' else ''}": r.test for r in result.runs}
    console.print(metrics_table(rows, title="test metrics at the best valid epoch"))
    console.print(f"report: [bold]{result.report.get('report_md')}[/]")


@app.command("watch")
def watch_cmd(
    names: list[str] = typer.Argument(None, help="Registered catalogs to check (default: all)."),
    datasets_root: Optional[Path] = DatasetsRoot,
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Check registered catalogs for changes and re-extract only what changed (no Prefect event)."""
    for change in watch_catalogs(_settings(datasets_root, home, feature_store), names or None):
        console.print(change.summary())


@app.command("serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve_cmd(ctx: typer.Context) -> None:
    """Serve befa/full-pipeline and befa-watch/catalog-watch (+ retrain trigger) to a Prefect server.

    Options are those of `python -m flows.serve --help` (--interval, --cron, --no-schedule, --no-retrain-on-change, --catalog)."""
    from flows.serve import main

    main(list(ctx.args))


@app.command("server", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def server_cmd(ctx: typer.Context) -> None:
    """Start a local Prefect server (127.0.0.1, SQLite under $BEFA_HOME/prefect, analytics off) and the serve process.

    Options are those of `python -m flows.server --help` (--port, --no-serve, ...). Ctrl-C stops both."""
    from flows.server import main

    raise typer.Exit(main(list(ctx.args)) or 0)


@app.command("study")
def study_cmd(
    dataset: str = typer.Option("movielens-100k-posters", help="Catalog (ingested if needed)."),
    encoder: str = typer.Option("image=clip:ViT-B-32@random,text=minilm", help="Encoder spec or image=...,text=... "
                                "(random-init weights are labelled in the report)."),
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
    params = dict(dataset=dataset, encoder=encoder, models=_csv(models), seeds=[999 + i for i in range(seeds)],
                  epochs=epochs, patience=patience, max_trials=max_trials, max_minutes=max_minutes,
                  focus_model=focus_model, experiment_seeds=experiment_seeds, num_threads=threads, device=device, name=name)
    params = {k: v for k, v in params.items() if v is not None}
    try:
        result = run_study(params, _settings(datasets_root, home, feature_store), log=console.print)
    except (StudyError, ValueError) as exc:
        _fail(str(exc))
    console.print(result.verdict)
    console.print(f"report: [bold]{result.files.get('report_html')}[/]")


@app.command("demo")
def demo_cmd(
    epochs: int = typer.Option(30, help="Max epochs per model (capped so the demo fits 15 minutes on 2 cores)."),
    patience: int = typer.Option(5, help="Early-stopping patience."),
) -> None:
    """The main job on the default catalog through the `befa` flow: ingest, extract, train LightGCN/FREEDOM/MGCN
    with and without BeFA, evaluate, report (what `make demo` runs)."""
    from flows.demo import main

    raise typer.Exit(main(["--epochs", str(epochs), "--patience", str(patience)]))


if __name__ == "__main__":  # pragma: no cover
    app()
