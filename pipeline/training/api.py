"""The training API the CLI, the job and the study call: ``train_model``, ``evaluate_run``
and ``load_trained`` (a run folder back to a model with its best weights).

Inputs are what a user has at hand: a catalog (or its folder), a split (or its Parquet
file), a :class:`~pipeline.training.prepare.FeatureBundle` for content models, a model
name and config overrides (dotted keys for nested sections: ``{"befa.t": 2}``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch

from models import get_model_class, make_config
from models.base import ModelConfig, Recommender
from pipeline.data.catalog import Catalog
from pipeline.data.splits import Split
from pipeline.device import resolve_device
from pipeline.evaluation.evaluator import EvalResult, evaluate_model
from pipeline.features.bundle import FeatureBundle
from pipeline.training.build import build_model
from pipeline.training.checkpoints import load_weights
from pipeline.training.prepare import PreparedData, prepare_data
from pipeline.training.record import BEST, RunRecord
from pipeline.training.trainer import RunResult, TrainerConfig, fit
from pipeline.training.universe import save_universe
from storage.atomic import clean_temporaries


def _load_catalog(catalog: Any) -> Any:
    if isinstance(catalog, Catalog):
        return catalog
    return Catalog.load(catalog)


def _load_split(split: Any) -> Any:
    if isinstance(split, (str, Path)):
        return Split.load(split)
    return split


def default_run_dir(root: str | Path, model_name: str, split_id: str, config: ModelConfig, seed: int) -> Path:
    digest = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:8]
    return Path(root) / f"{model_name}-{split_id}-seed{seed}-{digest}"


def model_config(model_cls: type[Recommender], overrides: ModelConfig | Mapping[str, Any] | None) -> ModelConfig:
    """``overrides`` as the model's validated config (a config passes through as it is)."""
    return overrides if isinstance(overrides, model_cls.Config) else make_config(model_cls, overrides)


def run_folder_for(
    split: Any,
    model: str | type[Recommender],
    overrides: ModelConfig | Mapping[str, Any] | None,
    seed: int,
    runs_root: str | Path | None,
) -> Path:
    """The folder ``train_model`` defaults to for these arguments (where ``befa train --resume`` looks)."""
    model_cls = get_model_class(model)
    split_obj = _load_split(split)
    split_id = str(getattr(split_obj, "id", None) or getattr(split_obj, "name", "unknown"))
    return default_run_dir(
        runs_root or Path.cwd() / "runs", model_cls.name, split_id, model_config(model_cls, overrides), seed
    )


def train_model(
    catalog: Any,
    split: Any,
    features: FeatureBundle | None,
    model: str | type[Recommender],
    overrides: ModelConfig | Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    seed: int = 999,
    device: str | torch.device | None = None,
    max_epochs: int = 1000,
    patience: int = 10,
    resume: bool = False,
    quiet: bool = False,
    num_threads: int | None = None,
    overwrite: bool = False,
    graph_cache_dir: str | Path | None = None,
    on_epoch_end: Callable[[int, RunRecord], None] | None = None,
    runs_root: str | Path | None = None,
    allow_new_features: bool = False,
) -> RunResult:
    """Train one model on one split.

    catalog: a Catalog or its folder; split: a Split, its parquet path or a DataFrame
    (user_idx, item_idx, label); features: a ``FeatureBundle`` as the feature loader
    returns it, or None for content-free models; model: a registry name
    or a Recommender class; overrides: the validated config, or model config fields (dotted keys for nested:
    ``{"adapter": "befa", "befa.t": 2}``); run_dir: default
    ``<runs_root>/<model>-<split id>-seed<seed>-<config hash>`` (runs_root: the caller's
    ``Settings.runs_dir``; ``./runs`` when not given). ``resume`` refuses features other
    than the run recorded unless ``allow_new_features``.
    """
    model_cls = get_model_class(model)
    config = model_config(model_cls, overrides)
    cat, split_obj, device = _load_catalog(catalog), _load_split(split), resolve_device(device)
    prepared = _prepared(cat, split_obj, features, device, graph_cache_dir)
    if run_dir is None:
        run_dir = default_run_dir(
            runs_root or Path.cwd() / "runs", model_cls.name, prepared.train.split_id, config, seed
        )
    trainer = TrainerConfig(
        max_epochs=max_epochs, patience=patience, seed=seed, device=str(device), num_threads=num_threads, quiet=quiet
    )
    # enough to rebuild the run for evaluate_run
    sources = {
        "catalog": str(Path(catalog).resolve()) if isinstance(catalog, (str, Path)) else None,
        "split": str(Path(split).resolve()) if isinstance(split, (str, Path)) else None,
    }
    clean_temporaries(run_dir)  # what a killed run left in its folder, an hour old or more (storage.atomic)
    result = fit(
        model_cls,
        config,
        prepared,
        run_dir,
        trainer,
        resume=resume,
        overwrite=overwrite,
        catalog=cat.name,
        on_epoch_end=on_epoch_end,
        sources=sources,
        allow_new_features=allow_new_features,
    )
    save_universe(result.run_dir, cat)  # ids by row, so the run can be served after the catalog changes
    return result


def _prepared(
    cat: Catalog,
    split: Any,
    features: FeatureBundle | None,
    device: torch.device,
    graph_cache_dir: str | Path | None = None,
) -> PreparedData:
    """The split's tensors for the catalog's items (users: the catalog's, or more when the split has more)."""
    num_users = max(cat.num_users, _max_user(split) + 1)
    return prepare_data(
        split,
        num_items=cat.num_items,
        features=features,
        num_users=num_users,
        device=device,
        graph_cache_dir=graph_cache_dir,
    )


def _max_user(split: Any) -> int:
    frame = split if isinstance(split, pd.DataFrame) else split.frame
    return int(frame["user_idx"].max()) if len(frame) else -1


def evaluate_run(
    run_dir: str | Path,
    catalog: Any = None,
    split: Any = None,
    features: FeatureBundle | None = None,
    device: str | torch.device | None = None,
    model: str | type[Recommender] | None = None,
) -> dict[str, dict[str, float]]:
    """Rebuild the run's model, load ``best.safetensors``, recompute valid and test metrics.

    catalog / split default to the paths the run recorded; features must be passed for
    content models (their snapshot ids must match the record); model defaults to the
    registry entry named in the record (pass the class for models outside the registry)."""
    return {
        part: r.metrics for part, r in evaluate_run_results(run_dir, catalog, split, features, device, model).items()
    }


def evaluate_run_results(
    run_dir: str | Path,
    catalog: Any = None,
    split: Any = None,
    features: FeatureBundle | None = None,
    device: str | torch.device | None = None,
    model: str | type[Recommender] | None = None,
) -> dict[str, EvalResult]:
    """``evaluate_run`` with the evaluator's whole results: per part, the metrics, the
    per-user values and the item-group metrics (warm / cold / long tail)."""
    trained = load_trained(run_dir, catalog, split, features, device, model)
    return evaluate_model(trained.model, trained.prepared.evaluator, ("valid", "test"))


@dataclass
class TrainedRun:
    """A run folder brought back: its record, its data and its model with the best weights."""

    run_dir: Path
    record: RunRecord
    prepared: PreparedData
    model: Recommender


def load_trained(
    run_dir: str | Path,
    catalog: Any = None,
    split: Any = None,
    features: FeatureBundle | None = None,
    device: str | torch.device | None = None,
    model: str | type[Recommender] | None = None,
) -> TrainedRun:
    """The run's model rebuilt on its split and features, with ``best.safetensors`` loaded.

    Checks that the split and the feature snapshots are the ones the run recorded."""
    run_dir = Path(run_dir)
    record = RunRecord.load(run_dir)
    catalog = catalog if catalog is not None else record.sources.get("catalog")
    split = split if split is not None else record.sources.get("split")
    if catalog is None or split is None:
        raise ValueError(f"{run_dir}: the run did not record its catalog/split paths; pass catalog= and split=")
    model_cls = get_model_class(model if model is not None else record.model)
    if model_cls.name != record.model:
        raise ValueError(f"{run_dir}: the run trained {record.model!r}, not {model_cls.name!r}")
    config = model_cls.Config.model_validate(record.config)
    cat, split_obj = _load_catalog(catalog), _load_split(split)
    bundle = features if features is not None else FeatureBundle.empty()
    _check_snapshots(run_dir, record, bundle)
    prepared = _prepared(cat, split_obj, bundle.subset(record.feature_snapshots), resolve_device(device))
    if prepared.train.split_id != record.split_id:
        raise ValueError(f"{run_dir}: split {prepared.train.split_id} differs from the run's {record.split_id}")
    net = build_model(model_cls, prepared.train, config, record.seed)
    load_weights(run_dir / BEST, net, record.record_version)
    net.eval()
    return TrainedRun(run_dir, record, prepared, net)


def _check_snapshots(run_dir: Path, record: RunRecord, bundle: FeatureBundle) -> None:
    for modality, snap in record.feature_snapshots.items():
        if modality not in bundle.features:
            raise ValueError(f"{run_dir}: the run used {modality!r} features (snapshot {snap}); pass them")
        if bundle.snapshots.get(modality) not in (None, "unknown", snap):
            raise ValueError(
                f"{run_dir}: {modality!r} features are snapshot {bundle.snapshots[modality]}, the run used {snap}"
            )
