"""The pipeline's steps: ingest -> extract -> split -> train -> evaluate -> report.

Every step takes small, JSON-friendly inputs (parameters, settings, paths, ids) and
returns a small pydantic summary with paths and counts, never tensors: features are
read from the feature store inside the step that needs them, so an orchestrator that
keeps every step result in memory (Prefect) holds kilobytes, not feature matrices.
Steps have no side effects beyond their outputs: registering a catalog for watching is
the job's business (``pipeline.job.run``), not a step's.
"""

from __future__ import annotations

import time
from typing import Any

from models import MODELS
from pipeline.data.catalog import Catalog
from pipeline.data.ingest import ingest, ingest_source
from pipeline.data.splits import GIVEN, load_given, make_split
from pipeline.data.summary import IngestSummary, SplitSummary
from pipeline.data.versions import is_ingested
from pipeline.features.extract import extract_features
from pipeline.features.imported import BACKEND as IMPORTED_BACKEND
from pipeline.features.imported import imported_summary, is_imported
from pipeline.features.load import load_features
from pipeline.features.ray_extract import extract_features_ray
from pipeline.features.summary import FeaturesSummary
from pipeline.job.fit_runs import train_or_fit
from pipeline.job.params import PipelineParams
from pipeline.reporting.pipeline_report import ReportContext, ReportFiles, write_report
from pipeline.settings import Settings
from pipeline.summary import timed
from pipeline.training.api import evaluate_run
from pipeline.training.floor_check import FLOOR_MODEL
from pipeline.training.summary import TrainSummary
from storage.feature_store import FeatureStore


# -- steps -------------------------------------------------------------------------
def ingest_step(params: PipelineParams, settings: Settings) -> IngestSummary:
    """Ingest the catalog when asked (or when it is missing); else describe the stored one."""

    def run() -> IngestSummary:
        folder = settings.catalog_dir(params.dataset)
        ready = is_ingested(folder)
        issues: dict[str, int] = {}
        warnings: list[str] = []
        ingested = False
        if params.ingest == "always" or (params.ingest == "auto" and not ready):
            importer, options = params.with_recorded_ingest(settings).ingest_call()
            catalog, report = ingest(importer, settings, **options)
            issues = report.summary_by_problem()
            warnings = list(report.warnings)
            ingested = True
            folder = settings.catalog_dir(catalog.name)
        else:
            catalog = Catalog.load(folder)
        return IngestSummary(
            catalog_dir=str(folder),
            name=catalog.name,
            fingerprint=catalog.fingerprint(),
            num_users=catalog.num_users,
            num_items=catalog.num_items,
            num_interactions=len(catalog.interactions),
            ingested=ingested,
            source=ingest_source(folder, settings.datasets_root),
            issues=issues,
            warnings=warnings,
        )

    return timed(run)


def extract_step(params: PipelineParams, settings: Settings, catalog_dir: str) -> FeaturesSummary:
    """Encode the items whose content the store does not hold yet (incremental); with the
    encoder ``imported``, the catalog's imported features as ingest stored them (nothing encoded)."""

    def run() -> FeaturesSummary:
        catalog = Catalog.load(catalog_dir)
        store = FeatureStore(settings.feature_store)
        spec = params.encoder_spec()
        if is_imported(spec):  # no encoder to run, locally or on Ray
            return FeaturesSummary.of(imported_summary(catalog, store), IMPORTED_BACKEND)
        if params.cluster:
            result = extract_features_ray(
                catalog, spec, store, cluster=params.cluster, device=params.device, batch_size=params.extract_batch_size
            )
            backend = f"ray ({params.cluster})"
        else:
            # plain progress lines (print: a Prefect task with log_prints logs them), no bar
            result = extract_features(
                catalog,
                spec,
                store,
                device=params.device,
                batch_size=params.extract_batch_size,
                progress=False,
                log=print,
                backend=params.extract_backend,
                onnx_dir=settings.onnx_dir,
            )
            backend = "local"
        return FeaturesSummary.of(result, backend)

    return timed(run)


def split_step(params: PipelineParams, catalog_dir: str) -> SplitSummary:
    """Make (or remake: deterministic) the split and store it with the catalog; ``given``: the
    split the catalog came with (stored at ingest), as it is."""

    def run() -> SplitSummary:
        catalog = Catalog.load(catalog_dir)
        if params.split_kind == GIVEN:
            split, path = load_given(catalog)
        else:
            split = make_split(catalog, kind=params.split_kind, seed=params.split_seed, k_core=params.k_core)
            path = split.save(catalog.splits_dir)
        return SplitSummary(
            path=str(path),
            id=split.id,
            kind=params.split_kind,
            seed=params.split_seed if params.split_kind == "random" else None,
            k_core=params.k_core,
            counts=split.counts(),
        )

    return timed(run)


def _features(settings: Settings, catalog: Any, snapshots: dict[str, str], fingerprints: dict[str, str]) -> Any:
    if not fingerprints:
        return None

    return load_features(catalog, FeatureStore(settings.feature_store), fingerprints, snapshots=snapshots)


def uses_content(model: str) -> bool:
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
    num_threads: int | None = None,
) -> TrainSummary:
    """Train one model with one adapter setting; features are loaded here, from the store.
    ``num_threads``: torch CPU threads (default: the CPUs this process may use; a Ray task
    passes the CPUs it reserved)."""

    def run() -> TrainSummary:
        catalog = Catalog.load(catalog_dir)
        features = (
            _features(settings, catalog, extract.snapshots, extract.fingerprints) if uses_content(model) else None
        )
        # trained as configured, or fitted to the catalog first (``fit``: pipeline.job.fit_runs)
        rec = train_or_fit(
            params, settings, catalog, catalog_dir, split_path, features, model, adapter, run_dir, num_threads
        )
        summary = TrainSummary(
            model=model,
            adapter=adapter,
            run_dir=str(run_dir),
            status=rec.status,
            best_epoch=rec.best_epoch,
            epochs_run=len(rec.epochs),
            test=dict(rec.test),
            valid=dict(rec.best_valid),
            fit=rec.fit,
        )
        summary.floor_note = rec.floor.line(summary.label) if rec.below_floor else None
        return summary

    return timed(run)


def evaluate_step(
    settings: Settings,
    catalog_dir: str,
    split_path: str,
    extract: FeaturesSummary,
    summary: TrainSummary,
    tol: float = 1e-5,
) -> TrainSummary:
    """Reload the best checkpoint and recompute test metrics; record whether they match."""

    def run() -> TrainSummary:
        catalog = Catalog.load(catalog_dir)
        features = (
            _features(settings, catalog, extract.snapshots, extract.fingerprints)
            if uses_content(summary.model)
            else None
        )
        metrics = evaluate_run(summary.run_dir, catalog=catalog_dir, split=split_path, features=features)
        diffs = [abs(metrics["test"][k] - v) for k, v in summary.test.items() if k in metrics["test"]]
        out = summary.model_copy()
        out.max_abs_diff = max(diffs) if diffs else None
        out.verified = bool(diffs) and out.max_abs_diff <= tol
        return out

    start = time.perf_counter()
    out = run()
    out.verify_seconds = round(time.perf_counter() - start, 3)
    out.seconds = round(summary.seconds + out.verify_seconds, 3)
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
) -> ReportFiles:
    """Write metrics, plots and report.md; returns the files written."""
    verified = [
        f"{r.model} {r.adapter}: checkpoint re-evaluation {'matches' if r.verified else 'DIFFERS'} "
        f"(max |diff| {r.max_abs_diff})"
        for r in runs
        if r.verified is not None
    ]
    context = ReportContext(
        title=f"befa pipeline: {ingest.name}",
        dataset=ingest.dataset,
        features=extract.modalities,
        split=split,
        config=params,
        timings=timings,
        notes=list(notes or []) + verified,
    )
    return write_report(folder, [r.run_dir for r in runs], context)


def plan_runs(params: PipelineParams) -> tuple[list[tuple[str, str]], list[str]]:
    """(model, adapter) pairs to train, and the pairs skipped with the reason.

    BeFA adapts content features, so a content-free model (LightGCN, MostPop) is trained
    once, without adapter. MostPop always runs first, as the floor every table shows
    (one evaluation, no training), whether or not ``models`` names it."""
    pairs: list[tuple[str, str]] = [(FLOOR_MODEL, "none")]
    skipped: list[str] = []
    for model in params.models:
        for adapter in params.adapters:
            if adapter == "befa" and not MODELS[model].accepts_befa:
                why = "has no behaviour embedding" if uses_content(model) else "uses no content features"
                skipped.append(f"{model} +befa skipped: {model} {why}, so BeFA has nothing to adapt")
                continue
            if (model, adapter) not in pairs:
                pairs.append((model, adapter))
    return pairs, skipped
