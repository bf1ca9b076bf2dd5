"""One pipeline run trained as it is, or fitted to the catalog first (``PipelineParams.fit``).

Whether the fit runs is decided from the catalog's sizes (:func:`decide_fit`, the rule in
``pipeline.training.fit_record``), the same way in the job's log line and in the train step;
the fit itself is ``pipeline.training.catalog_fit``. MostPop (nothing to train) is never fitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models import MODELS
from pipeline.data.catalog import Catalog
from pipeline.data.splits import Split
from pipeline.job.params import PipelineParams
from pipeline.settings import Settings
from pipeline.training.api import train_model
from pipeline.training.catalog_fit import FitBudget, search_fit
from pipeline.training.fit_record import FitDecision, fit_decision
from pipeline.training.record import RunRecord


def decide_fit(
    params: PipelineParams, train_interactions: int, interactions: int, users: int, items: int
) -> FitDecision:
    """``params.fit`` resolved for a catalog of these sizes."""
    return fit_decision(params.fit, train_interactions, interactions, users, items)


def fits(model: str) -> bool:
    """Whether a model has anything to fit (MostPop has not)."""
    return bool(getattr(MODELS[model], "trainable", True))


def train_or_fit(
    params: PipelineParams,
    settings: Settings,
    catalog: Catalog,
    catalog_dir: str,
    split_path: str,
    features: Any,
    model: str,
    adapter: str,
    run_dir: str,
    num_threads: int | None,
) -> RunRecord:
    """The run's record: trained with its configuration, or the winner of the fit on valid."""
    common: dict[str, Any] = dict(
        seed=params.seed,
        device=params.device,
        max_epochs=params.epochs,
        patience=params.patience,
        overwrite=True,
        num_threads=num_threads or params.num_threads,
        graph_cache_dir=settings.home / "graph-cache",
    )
    overrides = params.overrides_for(model, adapter)
    decision = None
    if fits(model):
        counts = Split.load(split_path).counts()
        decision = decide_fit(params, counts["train"], len(catalog.interactions), catalog.num_users, catalog.num_items)
    if decision is None or not decision.on:
        # a line per epoch, as `befa train` prints (plain lines when not on a terminal)
        result = train_model(catalog_dir, split_path, features, model, overrides=overrides, run_dir=run_dir,
                             quiet=False, **common)  # fmt: skip
        return result.record

    def trial(trial_overrides: dict[str, Any], trial_dir: Path, hook: Any) -> Any:
        return train_model(catalog_dir, split_path, features, model, overrides=trial_overrides, run_dir=trial_dir,
                           quiet=True, on_epoch_end=hook, **common)  # fmt: skip

    budget = FitBudget(trials=params.fit_trials, minutes=params.fit_minutes, seed=params.seed)
    return search_fit(trial, model, overrides, run_dir, budget, decision.reason)
