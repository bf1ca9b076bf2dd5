"""Training commands: ``befa train`` and ``befa evaluate``.

``befa train --run-dir R --resume`` continues the run in R from its record alone: model,
config, catalog, split, seed, budget and the exact feature snapshots it trained on
(``RunRecord.feature_sets``). When those snapshots are gone from the store it refuses,
unless ``--allow-new-features`` (then the current snapshot of the same encoder is used and
the switch is printed). A folder whose run was killed is reported as interrupted, with
this command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from models import ModelConfig, get_model_class
from pipeline.cli.checks import at_least, config_or_fail, device_or_fail, encoder_or_fail
from pipeline.cli.common import CommandGroup, FeatureStoreOpt, Home, console, fail, settings_from
from pipeline.cli.params_options import train_overrides
from pipeline.data.catalog import Catalog, CatalogError
from pipeline.data.splits import ensure_split
from pipeline.evaluation.evaluator import evaluate_model
from pipeline.evaluation.settings import evaluate_settings
from pipeline.features.bundle import FeatureBundle
from pipeline.features.imported import NoImportedFeatures
from pipeline.features.load import features_for_training, load_features
from pipeline.job.params import DEFAULT_ENCODER
from pipeline.reporting.cold_start import setting_rows, settings_table
from pipeline.reporting.console import item_groups_table, metrics_table
from pipeline.reporting.gate_section import collapse_lines
from pipeline.training.api import load_trained, run_folder_for, train_model
from pipeline.training.liveness import interrupted_note
from pipeline.training.mapping import MappingRecord
from pipeline.training.record import RECORD, RunRecord, item_group_metrics, setting_metrics
from pipeline.training.run_features import load_run_features
from pipeline.training.trainer import RunResult
from storage.feature_store import FeatureStore

commands = CommandGroup()


@commands.command("train")
def train_cmd(
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="Ingested catalog name (not needed with --run-dir R --resume)."
    ),
    model: str = typer.Option(
        "lightgcn", "--model", help="mostpop, itemknn_cbf, lightgcn, bm3, lattice, freedom or mgcn."
    ),
    adapter: str = typer.Option("none", "--adapter", help="none or befa."),
    encoder: str = typer.Option(
        DEFAULT_ENCODER,
        "--encoder",
        help="Encoder spec for content models (see `befa extract`); the default is `befa run`'s. "
        "'imported': the catalog's imported features (an MMRec folder's <modality>_feat.npy).",
    ),
    split: str = typer.Option(
        "random-s2024", "--split", help="Stored split name; random-s<SEED> is created if missing."
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Model config override [MODEL.]KEY=VALUE (JSON value), e.g. "
        "--set befa.t=2 --set reg=1e-4; MODEL.KEY=VALUE as in `befa run` works too (MODEL: --model or '*').",
    ),
    seed: int = typer.Option(999, help="Training seed."),
    epochs: int = typer.Option(1000, help="Max epochs."),
    patience: int = typer.Option(10, help="Early stopping: epochs without a valid Recall@20 improvement."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ... (default: cuda when present)."),
    run_dir: Optional[Path] = typer.Option(None, help="Run folder (default under $BEFA_HOME/runs)."),
    resume: bool = typer.Option(
        False,
        help="Continue the run folder's run from its last checkpoint, "
        "with the config and feature snapshots it recorded.",
    ),
    allow_new_features: bool = typer.Option(
        False,
        "--allow-new-features",
        help="With --resume: continue on the current features when the run's recorded snapshots are gone.",
    ),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Train one model (optionally +BeFA) to early stopping and print its test metrics."""
    device_or_fail(device)
    at_least(epochs, "--epochs")
    at_least(patience, "--patience")
    settings = settings_from(None, home, feature_store)
    store = FeatureStore(settings.feature_store)
    if resume and run_dir is not None and (run_dir / RECORD).exists():
        result = _resume(run_dir, store, device, allow_new_features, settings)
    else:
        request = TrainRequest(
            dataset=dataset, model=model, adapter=adapter, encoder=encoder, split=split, set_=set_, seed=seed,
            epochs=epochs, patience=patience, device=device, run_dir=run_dir, resume=resume,
        )  # fmt: skip
        result = _train_new(request, store, allow_new_features, settings)
    _print_result(result)


@dataclass(frozen=True)
class TrainRequest:
    """What `befa train` was asked for a new run (or one to resume by its folder's name)."""

    dataset: Optional[str]
    model: str
    adapter: str
    encoder: str
    split: str
    set_: list[str]
    seed: int
    epochs: int
    patience: int
    device: Optional[str]
    run_dir: Optional[Path]
    resume: bool


def _train_new(r: TrainRequest, store: FeatureStore, allow_new_features: bool, settings: Any) -> RunResult:
    """Check the request before any data loads, then train it (or resume the run its folder holds)."""
    if r.dataset is None:
        fail(
            "--dataset: name the catalog to train on "
            "(only `--run-dir R --resume` on an existing run reads it from the run)"
        )
    try:
        model_cls = get_model_class(r.model)
    except ValueError as exc:
        fail(str(exc))
    # the config, built and checked once, before any data loads or features extract
    config = config_or_fail(model_cls, {**train_overrides(r.set_, r.model), "adapter": r.adapter})
    if model_cls.uses_content:
        encoder_or_fail(r.encoder, settings.catalog_dir(r.dataset), r.dataset)
    try:
        catalog = Catalog.load(settings.catalog_dir(r.dataset))
        split_path = ensure_split(catalog, catalog.splits_dir, r.split)
        folder = r.run_dir or run_folder_for(split_path, r.model, config, r.seed, settings.runs_dir)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if r.resume and (folder / RECORD).exists():
        return _resume(folder, store, r.device, allow_new_features, settings)
    features = _current_features(model_cls, catalog, r.encoder, store, r.device)
    # paths (not objects), so the run records where its catalog and split live for `befa evaluate`
    return _train(
        settings.catalog_dir(r.dataset), split_path, features, r.model, config, folder, r.seed, r.device,
        r.epochs, r.patience, r.resume, settings,
    )  # fmt: skip


def _current_features(
    model_cls: Any, catalog: Catalog, encoder: str, store: FeatureStore, device: Optional[str]
) -> FeatureBundle | None:
    if not model_cls.uses_content:
        return None
    try:
        features = features_for_training(catalog, encoder, store, device=device)
    except (NoImportedFeatures, CatalogError) as exc:  # --encoder imported: the store lost them, or none
        fail(str(exc))
    for m in features.modalities:
        if features.random_init.get(m):
            console.print(
                f"[yellow]{m} features: weights: random init ({features.fingerprints[m]}); "
                "quality numbers from them mean nothing[/]"
            )
    return features


def _train(
    catalog_dir: Path,
    split_path: Any,
    features: FeatureBundle | None,
    model: str,
    overrides: ModelConfig | dict[str, Any],
    run_dir: Path,
    seed: int,
    device: Optional[str],
    epochs: int,
    patience: int,
    resume: bool,
    settings: Any,
    allow_new_features: bool = False,
) -> RunResult:
    try:
        return train_model(
            catalog_dir,
            split_path,
            features,
            model,
            overrides=overrides,
            run_dir=run_dir,
            seed=seed,
            device=device,
            max_epochs=epochs,
            patience=patience,
            resume=resume,
            graph_cache_dir=settings.home / "graph-cache",
            runs_root=settings.runs_dir,
            allow_new_features=allow_new_features,
        )
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    raise AssertionError("unreachable")  # fail() exits


def _resume(
    run_dir: Path, store: FeatureStore, device: Optional[str], allow_new_features: bool, settings: Any
) -> RunResult:
    """Continue the run in ``run_dir`` with what its record says: model, config, data, budget, features."""
    rec = RunRecord.load(run_dir)
    catalog_dir, split_path = rec.sources.get("catalog"), rec.sources.get("split")
    if not catalog_dir or not split_path:
        fail(f"{run_dir}: run.json does not record its catalog and split; resume with --dataset and --split")
    config = dict(rec.config)
    if rec.batching is not None:  # the asked-for batch and lr: the trainer applies the batching rules again
        config["batch_size"] = rec.batching.configured_batch_size
        if rec.batching.configured_lr is not None:
            config["lr"] = rec.batching.configured_lr
    features = _recorded_features(rec, run_dir, store, allow_new_features)
    console.print(
        f"resuming {run_dir}: {rec.model} {rec.adapter}, {len(rec.epochs)} epochs done, "
        "its recorded config and features"
    )
    return _train(
        Path(catalog_dir),
        split_path,
        features,
        rec.model,
        config,
        run_dir,
        rec.seed,
        device,
        int(rec.trainer.get("max_epochs", 1000)),
        int(rec.trainer.get("patience", 10)),
        True,
        settings,
        allow_new_features,
    )


def _recorded_features(
    rec: RunRecord, run_dir: Path, store: FeatureStore, allow_new_features: bool
) -> FeatureBundle | None:
    """The snapshots the run trained on; when they are gone, refuse, or (``--allow-new-features``) the current ones."""
    try:
        return load_run_features(rec, store, run_dir)
    except CatalogError as exc:
        if not allow_new_features:
            fail(
                f"{run_dir}: --resume: the feature snapshots this run trained on are gone ({exc.problem}). "
                "A resume never "
                "switches features silently: pass --allow-new-features to continue on the current snapshot of the same "
                "encoder, or train anew without --resume"
            )
    sets = {m: s["fingerprint"] for m, s in rec.feature_sets.items() if s.get("fingerprint")}
    try:
        features = load_features(Catalog.load(rec.sources["catalog"]), store, sets)
    except CatalogError as exc:
        fail(f"{run_dir}: --allow-new-features: no current features of the run's encoders either ({exc.problem})")
    for m in features.modalities:
        old = rec.feature_snapshots.get(m)
        if old != features.snapshots[m]:
            console.print(
                f"[yellow]{m} features: the run's snapshot {old} is gone; "
                f"continuing on snapshot {features.snapshots[m]} (--allow-new-features)[/]"
            )
    return features


def _print_result(result: RunResult) -> None:
    rec = result.record
    console.print(metrics_table([result], title=f"test metrics at best valid epoch {rec.best_epoch}"))
    if rec.item_groups:
        console.print(item_groups_table(rec.item_groups))
    rows = setting_rows(rec, MappingRecord.load(result.run_dir))
    if rows:
        console.print(settings_table(rows))
    if rec.batching is not None and rec.batching.adapted:
        console.print(f"{rec.batching.label}: {rec.batching.note()}")
    if rec.below_floor:
        console.print(
            f"[bold yellow]warning:[/] {rec.floor.line(rec.model + ('+befa' if rec.adapter == 'befa' else ''))}"
        )
    for line in collapse_lines([rec]):  # BeFA's gate at the best epoch selects nothing: the +BeFA number is not BeFA's
        console.print(f"[bold yellow]warning:[/] {escape(line)}")
    console.print(f"run folder: {result.run_dir}")


@commands.command("evaluate")
def evaluate_cmd(
    run: Path = typer.Argument(..., help="A run folder written by `befa train`."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ..."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Reload a run's best checkpoint and recompute its valid and test metrics."""
    device_or_fail(device)
    settings = settings_from(None, home, feature_store)
    try:
        record = RunRecord.load(run)
        if record.state in ("interrupted", "running"):
            what = interrupted_note(record) if record.state == "interrupted" else f"{run}: still training"
            console.print(f"[yellow]note:[/] {what}; the metrics below are of its best epoch so far")
        features = load_run_features(record, FeatureStore(settings.feature_store), run)
        trained = load_trained(run, features=features, device=device)
        results = evaluate_model(trained.model, trained.prepared.evaluator, ("valid", "test"))
        by_setting = evaluate_settings(trained.model, trained.prepared.evaluator)
    except (ValueError, FileNotFoundError, CatalogError) as exc:
        fail(str(exc))
    console.print(metrics_table({part: r.metrics for part, r in results.items()}, title=str(run)))
    groups = {part: r.groups for part, r in results.items() if r.groups}
    if groups:
        console.print(item_groups_table(groups))
    again = record.model_copy(
        update={
            "test": results["test"].metrics,
            "item_groups": item_group_metrics(results),
            "settings": setting_metrics(by_setting),
        }
    )
    rows = setting_rows(again, MappingRecord.load(run))
    if rows:
        console.print(settings_table(rows))
