"""Training commands: ``befa train`` and ``befa evaluate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from models import get_model_class, parse_overrides
from pipeline.cli.common import CommandGroup, FeatureStoreOpt, Home, console, fail, settings_from
from pipeline.data.catalog import Catalog, CatalogError
from pipeline.data.splits import ensure_split
from pipeline.features.load import features_for_training, load_run_features
from pipeline.reporting.console import metrics_table
from pipeline.training.api import evaluate_run, train_model
from pipeline.training.record import RunRecord
from storage.feature_store import FeatureStore

commands = CommandGroup()


@commands.command("train")
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
    settings = settings_from(None, home, feature_store)
    try:
        overrides = {**parse_overrides(set_), "adapter": adapter}
    except ValueError as exc:
        fail(f"--set: {exc}")
    try:
        model_cls = get_model_class(model)
        catalog = Catalog.load(settings.catalog_dir(dataset))
        split_path = ensure_split(catalog, settings.catalog_dir(dataset) / "splits", split)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
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
        fail(str(exc))
    console.print(metrics_table([result], title=f"test metrics at best valid epoch {result.record.best_epoch}"))
    console.print(f"run folder: {result.run_dir}")


@commands.command("evaluate")
def evaluate_cmd(
    run: Path = typer.Argument(..., help="A run folder written by `befa train`."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ..."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Reload a run's best checkpoint and recompute its valid and test metrics."""
    settings = settings_from(None, home, feature_store)
    try:
        features = load_run_features(RunRecord.load(run), FeatureStore(settings.feature_store), run)
        metrics = evaluate_run(run, features=features, device=device)
    except (ValueError, FileNotFoundError, CatalogError) as exc:
        fail(str(exc))
    console.print(metrics_table(metrics, title=str(run)))
