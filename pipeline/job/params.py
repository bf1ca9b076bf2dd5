"""What one pipeline run is: its validated parameters (``DataParams``, shared with the
study, and ``PipelineParams``). The summaries its steps return are owned by the packages
that perform them (``pipeline.data.summary``, ``pipeline.features.summary``,
``pipeline.training.summary``); the job's own result is in ``pipeline.job.result``.

Parameters are validated before any work (:func:`validate_params`): an unknown encoder
family, a checkpoint file that does not exist, an unknown model or a dataset with no
local copy and no ingested catalog fail at once, with a message naming the problem and
the valid choices; so do ``encoder="imported"`` on a catalog without imported features and
``split_kind="given"`` on one without a given split (:mod:`pipeline.job.sources`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from encoders import validate_specs
from encoders.spec import IMPORTED, IMPORTED_STANDS_ALONE, is_imported
from models import MODELS, make_config
from pipeline.data.importers import IMPORTERS
from pipeline.data.ingest import recorded_ingest
from pipeline.data.versions import is_ingested
from pipeline.device import DeviceError, check_device
from pipeline.features.backend import BACKEND_HELP, Backend
from pipeline.job.sources import CatalogSource, check_sources
from pipeline.settings import Settings
from pipeline.training.fit_record import AUTO_MAX_DENSITY, AUTO_MAX_TRAIN, FitMode
from pipeline.training.floor_check import FLOOR_MODEL
from storage.keys import ENCODED_MODALITIES

DEFAULT_MODELS = ["lightgcn", "freedom", "mgcn"]
DEFAULT_DATASET = "movielens-100k-posters"
# Real weights, offline: ImageNet EfficientNet-Lite2 for posters/photos, MiniLM for text.
DEFAULT_ENCODER = "image=effnet:lite2,text=minilm"
Adapter = Literal["none", "befa"]
FOLDER_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"


class PipelineError(ValueError):
    """Parameters that cannot run: says which one and why, before any work starts."""


class DataParams(BaseModel):
    """Which catalog, how it is ingested, encoded and split: shared by the pipeline and the study."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(DEFAULT_DATASET, description="catalog name (folder under $BEFA_HOME/catalogs)")
    importer: str | None = Field(
        None,
        description="importer to (re-)ingest with: default the dataset name when it is a known dataset, "
        "'generic' when ingest_options name files",
    )
    ingest: Literal["auto", "always", "never"] = Field(
        "auto",
        description="auto: ingest when the catalog is not there yet; always: re-ingest; never: use the stored catalog",
    )
    ingest_options: dict[str, Any] = Field(
        default_factory=dict, description="importer options (generic: items, interactions, images, ...)"
    )
    encoder: str | dict[str, str] = Field(
        DEFAULT_ENCODER,
        description="encoder spec ('image=effnet:lite2,text=minilm', 'minilm', 'clip:ViT-B-32@/ckpt.pt', ...) "
        "or {modality: spec}; 'imported': every modality the catalog imported at ingest (an MMRec folder's "
        "<modality>_feat.npy), nothing encoded",
    )
    split_kind: Literal["random", "temporal", "given"] = Field(
        "random",
        description="train/valid/test split: random, temporal (by timestamp), or given (the split the catalog "
        "came with: an MMRec folder's x_label, Amazon's train/val/test)",
    )
    split_seed: int = Field(2024, description="seed of the random split")
    k_core: int | None = Field(None, ge=1, description="keep only users and items with at least this many interactions")
    device: str | None = Field(None, description="torch device for extraction and training; default cuda if present")
    extract_batch_size: int | None = Field(
        None, ge=1, description="items per encoder forward pass (default: sized to the device)"
    )
    extract_backend: Backend = Field("auto", description=BACKEND_HELP)

    def encoder_spec(self) -> str:
        """The encoder as one spec string (per-modality mappings become 'image=...,text=...')."""
        if isinstance(self.encoder, dict):
            if any(is_imported(v) for v in self.encoder.values()):
                raise PipelineError(f"encoder {self.encoder!r}: {IMPORTED_STANDS_ALONE}")
            bad = sorted(set(self.encoder) - set(ENCODED_MODALITIES))
            if bad:
                raise PipelineError(
                    f"encoder: unknown modality {bad[0]!r}; use {list(ENCODED_MODALITIES)} "
                    "(what an encoder embeds from raw content)"
                )
            return ",".join(f"{m}={self.encoder[m]}" for m in ENCODED_MODALITIES if m in self.encoder)
        return IMPORTED if is_imported(self.encoder) else self.encoder.strip()

    def ingest_call(self) -> tuple[str | None, dict[str, Any]]:
        """(importer, options) that (re-)ingest this catalog: the ingest options, stored under
        ``dataset`` when the importer has another name (generic, mmrec)."""
        importer = resolve_importer(self)
        options = dict(self.ingest_options)
        if importer != self.dataset:
            options.setdefault("name", self.dataset)
        return importer, options

    def with_recorded_ingest(self, settings: Settings) -> Self:
        """These parameters, with the catalog's own ingest record (``catalog.json``: what
        ``befa ingest`` was given) when they give no ingest options of their own: so a
        catalog ingested with ``befa ingest generic ...`` re-ingests (watch, ``ingest=always``)
        from the same files and options, not from the importer's defaults."""
        if self.ingest_options:
            return self
        record = recorded_ingest(settings.catalog_dir(self.dataset))
        if record is None or (self.importer or resolve_importer(self)) not in (None, record["importer"]):
            return self
        options = {k: v for k, v in record.get("options", {}).items() if k != "name"}
        return self.model_copy(update={"importer": record["importer"], "ingest_options": options})


class PipelineParams(DataParams):
    """Everything one pipeline run needs. Flat, so each field is a flow parameter
    (``prefect deployment run befa/full-pipeline --param encoder=minilm``)."""

    models: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MODELS),
        description="models to train (mostpop, itemknn_cbf, lightgcn, bm3, lattice, freedom, mgcn); "
        "mostpop always runs too, as the floor",
    )
    adapters: list[Adapter] = Field(
        default_factory=lambda: ["none", "befa"],
        description="none (the base model) and/or befa (+BeFA, content models only)",
    )
    model_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="model name (or '*' for all) -> config overrides, dotted keys for nested ('befa.t')",
    )
    epochs: int = Field(1000, ge=1, description="max epochs per run")
    patience: int = Field(10, ge=1, description="early-stopping patience on valid Recall@20")
    seed: int = Field(999, description="training seed")
    cluster: str | None = Field(
        None, description="'ray://host:port' or 'auto': run feature extraction and the training runs on Ray"
    )
    cpus_per_run: int = Field(
        1, ge=1, description="with cluster: CPUs (and torch threads) each training run takes on Ray"
    )
    verify_checkpoints: bool = Field(
        True, description="re-evaluate each best checkpoint and check it reproduces the metrics"
    )
    run_name: str | None = Field(None, description="pipeline folder name; default <dataset>-<UTC time>")
    recommend_k: int = Field(
        20, ge=0, description="items per user in the final recommendations file; 0 skips the recommend step"
    )
    recommend_run: str | None = Field(
        None, description="'<model>-<adapter>' to serve (e.g. 'freedom-befa'); default: the best run by VALID Recall@20"
    )
    fit: FitMode = Field(
        "auto",
        description="fit each model to the catalog first: a short seeded search on VALID Recall@20 (lr, the model's "
        "grid, +BeFA's t and dropout; keys given with --set stay fixed), the winner is the run; auto: on for a small "
        f"sparse catalog (under {AUTO_MAX_TRAIN:,} train interactions and {AUTO_MAX_DENSITY:.0%} density)",
    )
    fit_trials: int = Field(8, ge=1, description="configurations the fit tries per run, the defaults first")
    fit_minutes: float | None = Field(None, gt=0, description="stop starting new fit trials of a run after this")
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads per training run (default: every usable core; on Ray: cpus_per_run)"
    )

    @field_validator("models")
    @classmethod
    def _models_nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("models: give at least one model")
        return list(dict.fromkeys(m.strip().lower() for m in v))

    @field_validator("adapters")
    @classmethod
    def _adapters_nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("adapters: give at least one of 'none', 'befa'")
        return list(dict.fromkeys(v))

    @field_validator("cluster")
    @classmethod
    def _cluster_form(cls, v: str | None) -> str | None:
        return cluster_address(v)

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(FOLDER_NAME, v):
            raise ValueError(f"run_name {v!r}: letters, digits, '.', '_' or '-' only (it names a folder)")
        return v

    def overrides_for(self, model: str, adapter: str) -> dict[str, Any]:
        out = model_overrides_for(self.model_overrides, model)
        out["adapter"] = adapter
        return out


def model_overrides_for(overrides: dict[str, dict[str, Any]], model: str) -> dict[str, Any]:
    """The overrides one model gets: the ``'*'`` ones its config has a field for (``--set
    '*.knn_k=5'`` reaches the models with a kNN graph, not MostPop or LightGCN), then its own."""
    fields = MODELS[model].Config.model_fields if model in MODELS else {}
    out = {k: v for k, v in overrides.get("*", {}).items() if k.split(".")[0] in fields}
    out.update(overrides.get(model, {}))
    return out


def cluster_address(v: str | None) -> str | None:
    """A ``cluster`` parameter checked: None (no cluster), 'auto' or 'ray://host:port'."""
    if v in (None, ""):
        return None
    if v != "auto" and not re.fullmatch(r"ray://[^/:]+:\d+", v):
        raise ValueError(f"cluster {v!r}: expected 'auto' or 'ray://host:port'")
    return v


# -- validation ---------------------------------------------------------------------
def resolve_importer(params: DataParams) -> str | None:
    """The importer named, else the dataset's own (a known dataset), else generic / mmrec
    from the ingest options; None when nothing says how to ingest it."""
    if params.importer:
        return params.importer
    if params.dataset in IMPORTERS:
        return params.dataset
    if params.ingest_options.get("items") or params.ingest_options.get("folder"):
        return "generic" if params.ingest_options.get("items") else "mmrec"
    return None


def validate_encoder(spec: str) -> dict[str, str]:
    """Check an encoder spec without building the encoder; returns {modality: canonical spec}.

    Catches what would otherwise fail minutes later inside extraction: unknown family or
    architecture, a modality the family cannot embed, a checkpoint path that does not
    exist, weights not given where the family needs them."""

    try:
        specs = validate_specs(spec)
    except ValueError as exc:  # EncoderSpecError / EncoderError carry the detail and the valid choices
        raise PipelineError(f"encoder {spec!r}: {exc}") from None
    return {m: str(s) for m, s in specs.items()}


def check_star_overrides(overrides: dict[str, dict[str, Any]], models: list[str]) -> None:
    """Every ``'*'`` override names a field of at least one of these models (else it would reach none)."""
    for key in overrides.get("*", {}):
        if not any(key.split(".")[0] in MODELS[m].Config.model_fields for m in models if m in MODELS):
            raise PipelineError(f"--set '*.{key}': no model of this run ({', '.join(models)}) has a field {key!r}")


def validate_params(params: PipelineParams | dict[str, Any], settings: Settings) -> PipelineParams:
    """Validate everything that can be checked cheaply; raise PipelineError on the first problem."""
    if not isinstance(params, PipelineParams):
        try:
            params = PipelineParams.model_validate(params)
        except ValueError as exc:
            raise PipelineError(f"bad pipeline parameters: {exc}") from None
    # models

    unknown = [m for m in params.models if m not in MODELS]
    if unknown:
        raise PipelineError(f"unknown model {unknown[0]!r}; choose from {sorted(MODELS)}")
    for model in params.models:
        for adapter in params.adapters:
            try:
                make_config(MODELS[model], params.overrides_for(model, adapter))
            except (ValueError, KeyError) as exc:
                raise PipelineError(f"model_overrides for {model!r} (adapter {adapter}): {exc}") from None
    check_star_overrides(params.model_overrides, [*params.models, FLOOR_MODEL])
    if params.recommend_run is not None and params.recommend_k:
        planned = [f"{m}-{a}" for m in params.models for a in params.adapters if a == "none" or MODELS[m].accepts_befa]
        if params.recommend_run not in planned:
            raise PipelineError(
                f"--recommend-run (recommend_run) {params.recommend_run!r} is not a run of this pipeline; "
                f"choose from {planned}"
            )
    try:
        check_device(params.device)  # the flow parameter and the flag share the name: device, --device
    except DeviceError as exc:
        raise PipelineError(str(exc)) from None
    # encoder: 'imported' needs no encoder, only a catalog that imported features (checked below)
    spec = params.encoder_spec()
    if not is_imported(spec):
        validate_encoder(spec)
    # dataset: an ingested catalog, or something to ingest it from; then what it must hold
    source = check_dataset(params, settings)
    try:
        check_sources(source, spec, params.split_kind, params.k_core)
    except ValueError as exc:  # NoImportedFeatures / SourceError name the flag and the catalog
        raise PipelineError(str(exc)) from None
    return params


def check_dataset(params: DataParams, settings: Settings) -> CatalogSource:
    """Where the catalog comes from: the stored one, or an importer with its files (which must exist)."""
    folder = settings.catalog_dir(params.dataset)
    catalog_ready = is_ingested(folder)
    if params.ingest == "never" or (params.ingest == "auto" and catalog_ready):
        if not catalog_ready:
            raise PipelineError(f"dataset {params.dataset!r}: no ingested catalog at {folder} (ingest='never')")
        return CatalogSource(params.dataset, folder, stored=True)
    params = params.with_recorded_ingest(settings)  # as the ingest step re-ingests a stored catalog
    importer = resolve_importer(params)
    if importer is None:
        raise PipelineError(
            f"dataset {params.dataset!r}: not an ingested catalog under {settings.catalogs_dir} "
            f"and not a known dataset ({sorted(k for k in IMPORTERS if k not in ('generic', 'mmrec'))}); "
            "for your own data pass give its files: befa run NAME --items items.csv --interactions events.csv "
            "[--images DIR] (deployment: importer=generic, ingest_options items/interactions/images)"
        )
    if importer not in IMPORTERS:
        raise PipelineError(f"importer {importer!r} unknown; choose from {sorted(IMPORTERS)}")
    imp = IMPORTERS[importer]
    if getattr(imp, "dataset", None):
        root = settings.datasets_root / imp.dataset
        if not root.exists() and not params.ingest_options.get("root"):
            raise PipelineError(
                f"dataset {params.dataset!r}: no local copy at {root} "
                f"(set BEFA_DATASETS_ROOT or run `befa download {imp.dataset}`)"
            )
    else:
        for key in ("items", "interactions", "images", "folder"):
            value = params.ingest_options.get(key)
            if value and "://" not in str(value) and not Path(value).expanduser().exists():
                raise PipelineError(f"dataset {params.dataset!r}: --{key} {value} does not exist")
    return CatalogSource(params.dataset, folder, stored=False, importer=importer, options=params.ingest_options)
