"""What one study is: its validated parameters (data fields as the pipeline's), the search
grids, and the record of its result. Checked before any work (:func:`validate_study`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from models import CONTENT_MODELS, MODELS, make_config
from models.base import Insertion
from pipeline.job.params import (
    DEFAULT_ENCODER,
    FOLDER_NAME,
    DataParams,
    PipelineError,
    PipelineParams,
    cluster_address,
    model_overrides_for,
    validate_params,
)
from pipeline.settings import Settings
from pipeline.study.rows import SignificanceRow
from pipeline.training.search import DEFAULT_BEFA_GRID, DEFAULT_LR_GRID  # shared with befa run's fit
from storage.keys import is_modality

DEFAULT_SWEEP_T = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
DEFAULT_MODALITY_SETS = [["image"], ["text"], ["image", "text"]]
DEFAULT_FRACTIONS = [1.0, 0.5, 0.25]
DEFAULT_INSERTIONS: list[Insertion] = ["forward", "loss", "content"]
ADAPTERS = ("none", "befa")


class StudyError(ValueError):
    """Study parameters that cannot run (named, before any work)."""


class StudyParams(DataParams):
    """One study: the data fields are the pipeline's (``DataParams``), then training,
    search and experiments."""

    name: str | None = Field(None, description="study folder name; default <dataset>-<UTC time>")
    encoder: str | dict[str, str] = Field(
        DEFAULT_ENCODER,
        description="encoder spec; default EfficientNet-Lite2 (ImageNet) images + MiniLM text, both real weights",
    )
    num_threads: int | None = Field(None, ge=1, description="CPU threads for training (default: every usable core)")
    cluster: str | None = Field(
        None,
        description="'ray://host:port' or 'auto': extraction and every phase's training runs on Ray "
        "(run cache under BEFA_HOME, shared)",
    )
    cpus_per_run: int = Field(
        1, ge=1, description="with cluster: CPUs (and torch threads) each training run takes on Ray"
    )
    # -- training --
    models: list[str] = Field(
        default_factory=lambda: ["bm3", "lattice", "freedom", "mgcn"],
        description="content models compared, base vs +BeFA",
    )
    seeds: list[int] = Field(default_factory=lambda: [999, 1000, 1001], description="training seeds (default 3)")
    epochs: int = Field(1000, ge=1, description="max epochs per run")
    patience: int = Field(10, ge=1, description="early-stopping patience on valid Recall@20")
    model_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="model (or '*') -> fixed config overrides applied to every run (e.g. embedding_dim)",
    )
    # -- search (valid only) --
    grid: Literal["model", "none"] | dict[str, dict[str, list[Any]]] = Field(
        "model",
        description="'model': each model's GRID (and lr_grid); 'none': defaults only, base and +BeFA; "
        "or model -> {field: values} (and lr_grid)",
    )
    lr_grid: list[float] | None = Field(
        default_factory=lambda: list(DEFAULT_LR_GRID),
        description="learning rates searched in both arms, base and +BeFA (the authors' grid; "
        "a model grid naming lr replaces it; None: each model's default lr)",
    )
    befa_grid: dict[str, list[Any]] = Field(
        default_factory=lambda: dict(DEFAULT_BEFA_GRID),
        description="+BeFA's search grid on top of the model's: config key -> values",
    )
    max_trials: int = Field(
        4,
        ge=1,
        description="configurations tried per model and adapter, the same for base and +BeFA "
        "(fewer when the base model's search space is smaller)",
    )
    max_minutes: float | None = Field(None, gt=0, description="stop starting new trials of one search after this")
    search_seed: int = Field(0, description="seed of the search's TPE sampler and of the inspected items")
    prune_warmup: int | None = Field(
        20,
        ge=0,
        description="epochs a search trial trains before the median pruner may stop it (valid Recall@20 "
        "below the median of the completed trials at the same epoch); None: no pruning",
    )
    # -- experiments --
    focus_model: str = Field("freedom", description="model of the sweep, ablation, sparsity and inspection")
    sweep_t: list[float] | None = Field(
        default_factory=lambda: list(DEFAULT_SWEEP_T),
        description="BeFA t values of the focus model's sweep (None: no sweep)",
    )
    modality_sets: list[list[str]] | None = Field(
        default_factory=lambda: [list(s) for s in DEFAULT_MODALITY_SETS],
        description="modality sets of the ablation (None: no ablation)",
    )
    train_fractions: list[float] | None = Field(
        default_factory=lambda: list(DEFAULT_FRACTIONS),
        description="shares of the train interactions kept in the sparsity sweep (None: no sweep)",
    )
    experiment_seeds: int | None = Field(
        None, ge=1, description="seeds for sweep/ablation/sparsity/cold items (default: all)"
    )
    cold_fraction: float | None = Field(
        0.2,
        gt=0,
        lt=1,
        description="item cold-start phase: share of items with no train interaction (None: no cold phase)",
    )
    inspect_items: int = Field(24, ge=1, description="items in the inspection's gate heatmaps")
    inspect_users: int = Field(4, ge=0, description="users whose top-10 lists the inspection shows")
    pooling: Literal["user_mean", "concat"] = Field(
        "user_mean", description="paired tests over seeds: user_mean (average per user first) or concat"
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the paired tests")
    authors_arm: Literal["auto", "on", "off"] = Field(
        "auto",
        description="the authors' arm, LATTICE as the authors ran it (base LATTICE; MGCN's authors skeleton "
        "+BeFA; that skeleton with the purifier gate; pipeline.study.authors_arm): auto = on when lattice "
        "is among models",
    )
    insertions: list[Insertion] | None = Field(
        default_factory=lambda: list(DEFAULT_INSERTIONS),
        description="the insertion ablation (pipeline.study.insertions): every model's +BeFA search winner with each "
        "of these befa.insertion values, every seed; the winner's own (forward) reuses the main table's runs, and "
        "one a model refuses (MGCN: loss) is skipped (None: no ablation)",
    )

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("models: give at least one content model")
        return list(dict.fromkeys(m.strip().lower() for m in v))

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("seeds: give at least one seed")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, v: str | None) -> str | None:
        return cluster_address(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(FOLDER_NAME, v):
            raise ValueError(f"name {v!r}: letters, digits, '.', '_' or '-' only (it names a folder)")
        return v

    @field_validator("train_fractions")
    @classmethod
    def _fractions(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            bad = [f for f in v if not 0 < f <= 1]
            if bad:
                raise ValueError(f"train_fractions must be in (0, 1], got {bad}")
        return v

    @field_validator("sweep_t")
    @classmethod
    def _sweep(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(t <= 0 for t in v):
            raise ValueError(f"sweep_t values must be > 0, got {v}")
        return v

    @field_validator("insertions")
    @classmethod
    def _insertions(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("insertions: give at least one (forward, loss, content), or None for no ablation")
        return list(dict.fromkeys(v)) if v is not None else None

    @field_validator("authors_arm", mode="before")
    @classmethod
    def _switch(cls, v: Any) -> Any:
        # True / False (Python callers, a params file) mean "on" / "off"
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _focus(self) -> "StudyParams":
        if self.focus_model not in self.models:
            raise ValueError(f"focus_model {self.focus_model!r} must be one of models {self.models}")
        return self

    @property
    def runs_authors_arm(self) -> bool:
        """Whether the study runs the authors' arm (``authors_arm``; "auto": when it compares LATTICE)."""
        return self.authors_arm == "on" or (self.authors_arm == "auto" and "lattice" in self.models)

    @property
    def experiment_seed_list(self) -> list[int]:
        return self.seeds[: self.experiment_seeds] if self.experiment_seeds else list(self.seeds)

    def fixed_overrides(self, model: str) -> dict[str, Any]:
        return model_overrides_for(self.model_overrides, model)

    def pipeline_params(self) -> PipelineParams:
        """The pipeline parameters whose steps prepare this study's data (its data fields, as given)."""
        data = {name: getattr(self, name) for name in DataParams.model_fields}
        return PipelineParams(
            **data,
            models=self.models,
            adapters=["none", "befa"],
            epochs=self.epochs,
            patience=self.patience,
            seed=self.seeds[0],
            model_overrides=self.model_overrides,
            verify_checkpoints=False,
            run_name=self.name,
            cluster=self.cluster,
            cpus_per_run=self.cpus_per_run,
        )


class StudyResult(BaseModel):
    folder: str
    params: StudyParams
    verdict: str
    main: list[dict[str, Any]]  # the summary frame's records: per model x adapter x metric, mean, std, n
    significance: list[SignificanceRow]
    files: dict[str, str]
    timings: dict[str, float]
    runs_trained: int
    runs_reused: int


# -- validation ----------------------------------------------------------------------
def model_grid(params: StudyParams, model: str) -> dict[str, list[Any]]:
    """The model's search grid: ``lr_grid``, then its documented ``GRID`` or a custom one (either
    may name lr itself); none with ``grid="none"``."""
    if params.grid == "none":
        return {}
    lr = {"lr": list(params.lr_grid)} if params.lr_grid else {}
    if isinstance(params.grid, dict):
        return {**lr, **params.grid.get(model, {})}
    return {**lr, **(getattr(MODELS[model], "GRID", {}) or {})}


def validate_study(params: StudyParams | dict[str, Any], settings: Settings) -> StudyParams:
    """Check everything cheap before any work; raise StudyError naming the problem."""
    if not isinstance(params, StudyParams):
        try:
            params = StudyParams.model_validate(params)
        except ValueError as exc:
            raise StudyError(f"bad study parameters: {exc}") from None
    for m in params.models:
        if m not in MODELS:
            raise StudyError(f"unknown model {m!r}; the study compares content models {list(CONTENT_MODELS)}")
        if not MODELS[m].accepts_befa:
            why = "has no behaviour embedding" if MODELS[m].uses_content else "uses no content features"
            raise StudyError(f"model {m!r} {why}: BeFA has nothing to adapt (use {list(CONTENT_MODELS)})")
    for m in params.models:
        grids = {"none": model_grid(params, m), "befa": {**model_grid(params, m), **params.befa_grid}}
        for adapter, grid in grids.items():
            for key, values in grid.items():
                if isinstance(values, (str, bytes)) or not isinstance(values, list) or not values:
                    raise StudyError(f"grid for {m}: {key!r} must be a non-empty list, got {values!r}")
                try:  # every value must make a valid config
                    for v in values:
                        make_config(MODELS[m], {**params.fixed_overrides(m), "adapter": adapter, key: v})
                except (ValueError, KeyError) as exc:
                    raise StudyError(f"grid for {m} ({adapter}): {key}: {exc}") from None
    for s in params.modality_sets or []:
        if not s:
            raise StudyError("modality_sets: an empty set; give at least one modality (image, text, audio, ...)")
        for x in s:  # any modality name: image, text, or one imported as a matrix (audio, video, ...)
            if not is_modality(x):
                raise StudyError(f"modality_sets: {x!r} is not a modality name (image, text, audio, video, ...)")
    try:
        validate_params(params.pipeline_params(), settings)
    except PipelineError as exc:
        raise StudyError(str(exc)) from None
    return params
