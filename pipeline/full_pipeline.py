"""The whole job as plain functions: ingest -> extract -> split -> train -> evaluate -> report.

:func:`run_pipeline` runs the steps in order in one process; the Prefect flow
(``flows/pipeline_flow.py``) calls the very same step functions as tasks. Every step
takes small, JSON-friendly inputs (parameters, settings, paths, ids) and returns a small
pydantic summary with paths and counts, never tensors: features are read from the
feature store inside the step that needs them, so an orchestrator that keeps every step
result in memory holds kilobytes, not feature matrices.

Parameters are validated before any work (:func:`validate_params`): an unknown encoder
family, a checkpoint file that does not exist, an unknown model or a dataset with no
local copy and no ingested catalog fail at once, with a message naming the problem and
the valid choices.

Folder of one pipeline run (``$BEFA_HOME/runs/pipelines/<run name>/``)::

    params.json                     the validated parameters
    runs/<model>-<adapter>/         one training run folder each (pipeline/runs.py)
    summary.json                    every step's summary
    metrics.parquet, report.md, curves.png, base_vs_befa.png, ...   (pipeline/reports.py)
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.settings import Settings, get_settings
from storage.atomic import write_json

DEFAULT_MODELS = ["lightgcn", "freedom", "mgcn"]
DEFAULT_DATASET = "movielens-100k-posters"
DEFAULT_ENCODER = "minilm"
Adapter = Literal["none", "befa"]


class PipelineError(ValueError):
    """Parameters that cannot run: says which one and why, before any work starts."""


class PipelineParams(BaseModel):
    """Everything one pipeline run needs. Flat, so each field is a flow parameter
    (``prefect deployment run befa/full-pipeline --param encoder=minilm``)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(DEFAULT_DATASET, description="catalog name (folder under $BEFA_HOME/catalogs)")
    importer: str | None = Field(
        None, description="importer to (re-)ingest with: default the dataset name when it is a known dataset, 'generic' when ingest_options name files"
    )
    ingest: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: ingest when the catalog is not there yet; always: re-ingest; never: use the stored catalog"
    )
    ingest_options: dict[str, Any] = Field(default_factory=dict, description="importer options (generic: items, interactions, images, ...)")
    encoder: str | dict[str, str] = Field(
        DEFAULT_ENCODER, description="encoder spec ('minilm', 'clip:ViT-B-32@/ckpt.pt', 'image=...,text=...') or {modality: spec}"
    )
    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    adapters: list[Adapter] = Field(default_factory=lambda: ["none", "befa"])
    model_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="model name (or '*' for all) -> config overrides, dotted keys for nested ('befa.t')"
    )
    epochs: int = Field(1000, ge=1, description="max epochs per run")
    patience: int = Field(10, ge=1, description="early-stopping patience on valid Recall@20")
    seed: int = Field(999, description="training seed")
    split_kind: Literal["random", "temporal"] = "random"
    split_seed: int = 2024
    k_core: int | None = Field(None, ge=1)
    device: str | None = Field(None, description="torch device for extraction and training; default cuda if present")
    extract_batch_size: int | None = Field(None, ge=1)
    cluster: str | None = Field(None, description="'ray://host:port' or 'auto': run feature extraction on Ray")
    verify_checkpoints: bool = Field(True, description="re-evaluate each best checkpoint and check it reproduces the metrics")
    study: bool = Field(False, description="reserved: a hyper-parameter study instead of single runs (not implemented)")
    run_name: str | None = Field(None, description="pipeline folder name; default <dataset>-<UTC time>")

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
        if v in (None, ""):
            return None
        if v != "auto" and not re.fullmatch(r"ray://[^/:]+:\d+", v):
            raise ValueError(f"cluster {v!r}: expected 'auto' or 'ray://host:port'")
        return v

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"run_name {v!r}: letters, digits, '.', '_' or '-' only (it names a folder)")
        return v

    @model_validator(mode="after")
    def _study_reserved(self) -> "PipelineParams":
        if self.study:
            raise ValueError("study=True is reserved for hyper-parameter studies and not implemented yet")
        return self

    def encoder_spec(self) -> str:
        """The encoder as one spec string (per-modality mappings become 'image=...,text=...')."""
        if isinstance(self.encoder, dict):
            from pipeline.catalog import MODALITIES

            bad = sorted(set(self.encoder) - set(MODALITIES))
            if bad:
                raise PipelineError(f"encoder: unknown modality {bad[0]!r}; use {list(MODALITIES)}")
            return ",".join(f"{m}={self.encoder[m]}" for m in MODALITIES if m in self.encoder)
        return self.encoder.strip()

    def overrides_for(self, model: str, adapter: str) -> dict[str, Any]:
        out = dict(self.model_overrides.get("*", {}))
        out.update(self.model_overrides.get(model, {}))
        out["adapter"] = adapter
        return out


# -- step summaries (small, JSON-friendly) ----------------------------------------
class Summary(BaseModel):
    model_config = ConfigDict(extra="allow")
    seconds: float = 0.0


class IngestSummary(Summary):
    catalog_dir: str
    name: str
    fingerprint: str
    num_users: int
    num_items: int
    num_interactions: int
    ingested: bool = Field(description="False when the stored catalog was used as is")
    issues: dict[str, int] = Field(default_factory=dict)


class ModalityFeatures(BaseModel):
    spec: str
    fingerprint: str
    snapshot: str
    dim: int | None = None
    weights: str | None = None
    random_init: bool = False
    encoded: int = 0
    skipped: int = 0
    failed: int = 0


class FeaturesSummary(Summary):
    modalities: dict[str, ModalityFeatures] = Field(default_factory=dict)
    backend: str = "local"

    @property
    def fingerprints(self) -> dict[str, str]:
        return {m: f.fingerprint for m, f in self.modalities.items()}

    @property
    def snapshots(self) -> dict[str, str]:
        return {m: f.snapshot for m, f in self.modalities.items()}


class SplitSummary(Summary):
    path: str
    id: str
    kind: str
    seed: int | None
    k_core: int | None
    counts: dict[str, int]


class TrainSummary(Summary):
    model: str
    adapter: str
    run_dir: str
    status: str
    best_epoch: int | None
    epochs_run: int
    test: dict[str, float]
    valid: dict[str, float]
    verified: bool | None = None
    max_abs_diff: float | None = None


class PipelineResult(BaseModel):
    params: dict[str, Any]
    folder: str
    ingest: IngestSummary
    extract: FeaturesSummary
    split: SplitSummary
    runs: list[TrainSummary]
    report: dict[str, str | None]
    timings: dict[str, float]
    skipped: list[str] = Field(default_factory=list)


# -- validation ---------------------------------------------------------------------
def _known_importers() -> dict[str, Any]:
    from pipeline.importers import IMPORTERS

    return IMPORTERS


def resolve_importer(params: PipelineParams) -> str | None:
    if params.importer:
        return params.importer
    known = _known_importers()
    if params.dataset in known:
        return params.dataset
    if params.ingest_options.get("items") or params.ingest_options.get("folder"):
        return "generic" if params.ingest_options.get("items") else "mmrec"
    return None


def validate_encoder(spec: str) -> dict[str, str]:
    """Check an encoder spec without building the encoder; returns {modality: canonical spec}.

    Catches what would otherwise fail minutes later inside extraction: unknown family or
    architecture, a modality the family cannot embed, a checkpoint path that does not
    exist, weights not given where the family needs them."""
    from encoders import validate_specs

    try:
        specs = validate_specs(spec)
    except ValueError as exc:  # EncoderSpecError / EncoderError carry the detail and the valid choices
        raise PipelineError(f"encoder {spec!r}: {exc}") from None
    return {m: str(s) for m, s in specs.items()}


def validate_params(params: PipelineParams | dict[str, Any], settings: Settings | None = None) -> PipelineParams:
    """Validate everything that can be checked cheaply; raise PipelineError on the first problem."""
    settings = settings or get_settings()
    if not isinstance(params, PipelineParams):
        try:
            params = PipelineParams.model_validate(params)
        except ValueError as exc:
            raise PipelineError(f"bad pipeline parameters: {exc}") from None
    # models
    from models import MODELS

    unknown = [m for m in params.models if m not in MODELS]
    if unknown:
        raise PipelineError(f"unknown model {unknown[0]!r}; choose from {sorted(MODELS)}")
    for model in params.models:
        for adapter in params.adapters:
            from pipeline.training import build_config

            try:
                build_config(MODELS[model], params.overrides_for(model, adapter))
            except (ValueError, KeyError) as exc:
                raise PipelineError(f"model_overrides for {model!r} (adapter {adapter}): {exc}") from None
    # encoder
    validate_encoder(params.encoder_spec())
    # dataset: an ingested catalog, or something to ingest it from
    catalog_ready = (settings.catalog_dir(params.dataset) / "catalog.json").exists()
    if params.ingest == "never" or (params.ingest == "auto" and catalog_ready):
        if not catalog_ready:
            raise PipelineError(
                f"dataset {params.dataset!r}: no ingested catalog at {settings.catalog_dir(params.dataset)} (ingest='never')"
            )
        return params
    importer = resolve_importer(params)
    known = _known_importers()
    if importer is None:
        raise PipelineError(
            f"dataset {params.dataset!r}: not an ingested catalog under {settings.catalogs_dir} and not a known dataset "
            f"({sorted(k for k in known if k not in ('generic', 'mmrec'))}); for your own data pass "
            "importer='generic' with ingest_options items=..., interactions=..., images=..."
        )
    if importer not in known:
        raise PipelineError(f"importer {importer!r} unknown; choose from {sorted(known)}")
    imp = known[importer]
    if getattr(imp, "dataset", None):
        folder = settings.datasets_root / imp.dataset
        if not folder.exists() and not params.ingest_options.get("root"):
            raise PipelineError(
                f"dataset {params.dataset!r}: no local copy at {folder} (set BEFA_DATASETS_ROOT or run `befa download {imp.dataset}`)"
            )
    else:
        for key in ("items", "interactions", "images", "folder"):
            value = params.ingest_options.get(key)
            if value and "://" not in str(value) and not Path(value).expanduser().exists():
                raise PipelineError(f"dataset {params.dataset!r}: ingest option {key}={value} does not exist")
    return params


# -- steps -------------------------------------------------------------------------
def _timed(fn: Callable[[], Summary]) -> Summary:
    start = time.perf_counter()
    out = fn()
    out.seconds = round(time.perf_counter() - start, 3)
    return out


def ingest_step(params: PipelineParams, settings: Settings) -> IngestSummary:
    """Ingest the catalog when asked (or when it is missing); else describe the stored one."""
    from pipeline.catalog import Catalog

    def run() -> IngestSummary:
        folder = settings.catalog_dir(params.dataset)
        ready = (folder / "catalog.json").exists()
        issues: dict[str, int] = {}
        ingested = False
        if params.ingest == "always" or (params.ingest == "auto" and not ready):
            from pipeline.ingest import ingest

            importer = resolve_importer(params)
            options = dict(params.ingest_options)
            if importer != params.dataset:
                options.setdefault("name", params.dataset)
            catalog, report = ingest(importer, settings, **options)
            issues = report.summary_by_problem()
            ingested = True
            folder = settings.catalog_dir(catalog.name)
        else:
            catalog = Catalog.load(folder)
        from pipeline.catalog_watch import register_catalog

        register_catalog(settings, params)
        return IngestSummary(
            catalog_dir=str(folder),
            name=catalog.name,
            fingerprint=catalog.fingerprint(),
            num_users=catalog.num_users,
            num_items=catalog.num_items,
            num_interactions=len(catalog.interactions),
            ingested=ingested,
            issues=issues,
        )

    return _timed(run)


def extract_step(params: PipelineParams, settings: Settings, catalog_dir: str) -> FeaturesSummary:
    """Encode the items whose content the store does not hold yet (incremental)."""

    def run() -> FeaturesSummary:
        from pipeline.catalog import Catalog
        from storage.feature_store import FeatureStore

        catalog = Catalog.load(catalog_dir)
        store = FeatureStore(settings.feature_store)
        spec = params.encoder_spec()
        if params.cluster:
            from pipeline.ray_extract import extract_features_ray

            result = extract_features_ray(catalog, spec, store, cluster=params.cluster, device=params.device, batch_size=params.extract_batch_size)
            backend = f"ray ({params.cluster})"
        else:
            from pipeline.extract import extract_features

            result = extract_features(catalog, spec, store, device=params.device, batch_size=params.extract_batch_size, progress=False)
            backend = "local"
        return FeaturesSummary(modalities=modality_features(result), backend=backend)

    return _timed(run)


def modality_features(result: Any) -> dict[str, ModalityFeatures]:
    """Per-modality summary of a ``pipeline.extract.ExtractSummary``."""
    return {
        modality: ModalityFeatures(
            spec=mod.encoder,
            fingerprint=mod.fingerprint,
            snapshot=mod.snapshot_id,
            dim=mod.dim,
            weights=mod.weights,
            random_init=bool(mod.random_init),
            encoded=mod.encoded,
            skipped=mod.skipped,
            failed=mod.failed,
        )
        for modality, mod in result.modalities.items()
    }


def split_step(params: PipelineParams, catalog_dir: str) -> SplitSummary:
    """Make (or remake: deterministic) the split and store it with the catalog."""

    def run() -> SplitSummary:
        from pipeline.catalog import Catalog
        from pipeline.splits import make_split

        catalog = Catalog.load(catalog_dir)
        split = make_split(catalog, kind=params.split_kind, seed=params.split_seed, k_core=params.k_core)
        path = split.save(Path(catalog_dir) / "splits")
        return SplitSummary(
            path=str(path),
            id=split.id,
            kind=params.split_kind,
            seed=params.split_seed if params.split_kind == "random" else None,
            k_core=params.k_core,
            counts=split.counts(),
        )

    return _timed(run)


def _features(settings: Settings, catalog: Any, snapshots: dict[str, str], fingerprints: dict[str, str]) -> Any:
    if not fingerprints:
        return None
    from pipeline.extract import load_features
    from storage.feature_store import FeatureStore

    return load_features(catalog, FeatureStore(settings.feature_store), fingerprints, snapshots=snapshots)


def uses_content(model: str) -> bool:
    from models import MODELS

    return bool(MODELS[model].uses_content)


def train_step(
    params: PipelineParams,
    settings: Settings,
    catalog_dir: str,
    split_path: str,
    extract: FeaturesSummary,
    model: str,
    adapter: str,
    run_dir: str,
) -> TrainSummary:
    """Train one model with one adapter setting; features are loaded here, from the store."""

    def run() -> TrainSummary:
        from pipeline.catalog import Catalog
        from pipeline.training import train_model

        catalog = Catalog.load(catalog_dir)
        features = _features(settings, catalog, extract.snapshots, extract.fingerprints) if uses_content(model) else None
        result = train_model(
            catalog_dir,
            split_path,
            features,
            model,
            overrides=params.overrides_for(model, adapter),
            run_dir=run_dir,
            seed=params.seed,
            device=params.device,
            max_epochs=params.epochs,
            patience=params.patience,
            quiet=True,
            overwrite=True,
            graph_cache_dir=settings.home / "graph-cache",
        )
        rec = result.record
        return TrainSummary(
            model=model,
            adapter=adapter,
            run_dir=str(result.run_dir),
            status=rec.status,
            best_epoch=rec.best_epoch,
            epochs_run=len(rec.epochs),
            test=dict(rec.test),
            valid=dict(rec.best_valid),
        )

    return _timed(run)


def evaluate_step(settings: Settings, catalog_dir: str, split_path: str, extract: FeaturesSummary, summary: TrainSummary, tol: float = 1e-5) -> TrainSummary:
    """Reload the best checkpoint and recompute test metrics; record whether they match."""

    def run() -> TrainSummary:
        from pipeline.catalog import Catalog
        from pipeline.training import evaluate_run

        catalog = Catalog.load(catalog_dir)
        features = _features(settings, catalog, extract.snapshots, extract.fingerprints) if uses_content(summary.model) else None
        metrics = evaluate_run(summary.run_dir, catalog=catalog_dir, split=split_path, features=features)
        diffs = [abs(metrics["test"][k] - v) for k, v in summary.test.items() if k in metrics["test"]]
        out = summary.model_copy()
        out.max_abs_diff = max(diffs) if diffs else None
        out.verified = bool(diffs) and out.max_abs_diff <= tol
        return out

    start = time.perf_counter()
    out = run()
    out.seconds = round(summary.seconds + time.perf_counter() - start, 3)
    return out


def report_step(
    folder: str,
    params: PipelineParams,
    ingest: IngestSummary,
    extract: FeaturesSummary,
    split: SplitSummary,
    runs: list[TrainSummary],
    timings: dict[str, float],
    notes: list[str] | None = None,
) -> dict[str, str | None]:
    """Write metrics, plots and report.md; returns {what: path}."""
    from pipeline.reports import EncoderInfo, ReportContext, write_report

    context = ReportContext(
        title=f"befa pipeline: {ingest.name}",
        dataset={
            "name": ingest.name,
            "fingerprint": ingest.fingerprint,
            "num_users": ingest.num_users,
            "num_items": ingest.num_items,
            "num_interactions": ingest.num_interactions,
        },
        encoders={
            m: EncoderInfo(spec=f.spec, fingerprint=f.fingerprint, weights=f.weights, random_init=f.random_init, dim=f.dim)
            for m, f in extract.modalities.items()
        },
        snapshots=extract.snapshots,
        extraction={m: {"encoded": f.encoded, "skipped": f.skipped, "failed": f.failed} for m, f in extract.modalities.items()},
        split={"id": split.id, "kind": split.kind, "seed": split.seed, "k_core": split.k_core, "counts": split.counts},
        config=params.model_dump(mode="json"),
        timings=timings,
        notes=list(notes or [])
        + [
            f"{r.model} {r.adapter}: checkpoint re-evaluation {'matches' if r.verified else 'DIFFERS'} (max |diff| {r.max_abs_diff})"
            for r in runs
            if r.verified is not None
        ],
    )
    files = write_report(folder, [r.run_dir for r in runs], context)
    return {k: (str(v) if v is not None else None) for k, v in files.model_dump().items()}


# -- the whole job ----------------------------------------------------------------
def pipeline_folder(params: PipelineParams, settings: Settings) -> Path:
    name = params.run_name or f"{params.dataset}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    return settings.runs_dir / "pipelines" / name


def plan_runs(params: PipelineParams) -> tuple[list[tuple[str, str]], list[str]]:
    """(model, adapter) pairs to train, and the pairs skipped with the reason.

    BeFA adapts content features, so a content-free model (LightGCN, MostPop) is trained
    once, without adapter."""
    pairs, skipped = [], []
    for model in params.models:
        for adapter in params.adapters:
            if adapter == "befa" and not uses_content(model):
                skipped.append(f"{model} +befa skipped: {model} uses no content features, so BeFA has nothing to adapt")
                continue
            pairs.append((model, adapter))
    return pairs, skipped


def run_pipeline(
    params: PipelineParams | dict[str, Any],
    settings: Settings | None = None,
    log: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Run every step in this process and return the summaries (no tensors)."""
    settings = settings or get_settings()
    log = log or (lambda msg: None)
    params = validate_params(params, settings)
    folder = pipeline_folder(params, settings)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "params.json", params.model_dump(mode="json"))
    timings: dict[str, float] = {}

    ingest = ingest_step(params, settings)
    timings["ingest"] = ingest.seconds
    log(f"ingest: {ingest.name} ({ingest.num_items} items, {ingest.num_interactions} interactions) in {ingest.seconds:.1f} s")
    extract = extract_step(params, settings, ingest.catalog_dir)
    timings["extract"] = extract.seconds
    log(f"extract: " + ", ".join(f"{m} {f.encoded} encoded / {f.skipped} reused -> {f.snapshot}" for m, f in extract.modalities.items()))
    split = split_step(params, ingest.catalog_dir)
    timings["split"] = split.seconds
    log(f"split: {split.id} {split.counts}")

    pairs, skipped = plan_runs(params)
    runs: list[TrainSummary] = []
    for model, adapter in pairs:
        summary = train_step(params, settings, ingest.catalog_dir, split.path, extract, model, adapter, str(folder / "runs" / f"{model}-{adapter}"))
        timings[f"train {model} {adapter}"] = summary.seconds
        if params.verify_checkpoints:
            before = summary.seconds
            summary = evaluate_step(settings, ingest.catalog_dir, split.path, extract, summary)
            timings[f"evaluate {model} {adapter}"] = round(summary.seconds - before, 3)
        log(f"train {model} {adapter}: {summary.status}, best epoch {summary.best_epoch}, test recall@20 {summary.test.get('recall@20', float('nan')):.4f}")
        runs.append(summary)

    start = time.perf_counter()
    report = report_step(str(folder), params, ingest, extract, split, runs, timings, notes=skipped)
    timings["report"] = round(time.perf_counter() - start, 3)
    result = PipelineResult(
        params=params.model_dump(mode="json"),
        folder=str(folder),
        ingest=ingest,
        extract=extract,
        split=split,
        runs=runs,
        report=report,
        timings=timings,
        skipped=skipped,
    )
    write_json(folder / "summary.json", json.loads(result.model_dump_json()))
    log(f"report: {report['report_md']}")
    return result
