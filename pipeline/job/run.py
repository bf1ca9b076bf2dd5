"""The whole job: ``run_pipeline(params, settings, steps)``, one orchestration for every caller.

``befa run`` and ``make demo``'s in-process path call it with :data:`LOCAL_STEPS` (the
plain step functions of :mod:`pipeline.job.steps`); the Prefect flow ``befa``
(``flows/pipeline_flow.py``) calls it with the same steps wrapped as Prefect tasks.
So the order of the steps, the log lines, the timings and ``summary.json`` are written
in one place. The (model, adapter) runs go as one batch to the run executor the
``executor`` role gives (``pipeline.training.executor``): one after another, or with
``cluster`` one Ray task each; the flow passes an executor on prefect-ray's task runner.

The job, not a step, registers the catalog for watching (``pipeline.job.watch``), so a
retrain triggered by a catalog change reruns it with these parameters; a study runs the
same steps and leaves the registration alone. The job also holds the catalog's retraining
mark while it runs and, once its recommendations and ``summary.json`` are committed,
records which catalog version they were made from (``pipeline.job.served``): the watch
asks for a retrain until one succeeds, and ``befa status`` says when the served
recommendations are older than the catalog.

Folder of one pipeline run (``$BEFA_HOME/runs/pipelines/<run name>/``)::

    params.json                     the validated parameters
    runs/<model>-<adapter>/         one training run folder each (pipeline.training.record)
    runs/<model>-<adapter>/fit/     the fit's trials, when the run was fitted (pipeline.training.catalog_fit)
    summary.json                    every step's summary
    recommendations.parquet/.json   top-K per user from the best run by valid Recall@20 (pipeline.job.recommend_step)
    metrics.parquet, report.md, curves.png, base_vs_befa.png, ...   (pipeline.reporting)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.data.summary import IngestSummary
from pipeline.job.fit_runs import decide_fit, fits
from pipeline.job.params import PipelineParams, validate_params
from pipeline.job.recommend_step import RecommendSummary, recommend_step
from pipeline.job.result import PipelineResult
from pipeline.job.served import record_served, retraining
from pipeline.job.steps import evaluate_step, extract_step, ingest_step, plan_runs, report_step, split_step, train_step
from pipeline.job.train_batch import executor_of, train_runs
from pipeline.job.watch import register_catalog
from pipeline.settings import Settings
from pipeline.training.executor import RunExecutor
from pipeline.training.summary import TrainJob, TrainSummary
from storage.atomic import write_json


@dataclass(frozen=True)
class PipelineSteps:
    """The step functions ``run_pipeline`` calls, by role; an orchestrator swaps in wrapped ones."""

    ingest: Callable[..., Any] = ingest_step
    extract: Callable[..., Any] = extract_step
    split: Callable[..., Any] = split_step
    train: Callable[..., Any] = train_step
    evaluate: Callable[..., Any] = evaluate_step
    report: Callable[..., Any] = report_step
    recommend: Callable[..., Any] = recommend_step
    # the run executor of the training batch, for these parameters: local, or Ray with ``cluster``
    executor: Callable[[PipelineParams], RunExecutor] = executor_of

    def wrapped(self, wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]]) -> "PipelineSteps":
        """Every step passed through ``wrap(role, fn)`` (e.g. into a Prefect task); the
        executor role is kept as it is: it runs the wrapped train and evaluate steps."""
        return PipelineSteps(
            **{
                f.name: getattr(self, f.name) if f.name in NOT_STEPS else wrap(f.name, getattr(self, f.name))
                for f in dataclasses.fields(self)
            }
        )


NOT_STEPS = ("executor",)


LOCAL_STEPS = PipelineSteps()


def pipeline_folder(params: PipelineParams, settings: Settings) -> Path:
    name = params.run_name or f"{params.dataset}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    return settings.runs_dir / "pipelines" / name


def run_pipeline(
    params: PipelineParams | dict[str, Any],
    settings: Settings,
    steps: PipelineSteps = LOCAL_STEPS,
    log: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Validate, then ingest -> extract -> split -> train (and verify) each run -> recommend -> report;
    then record what the recommendations were made from (the served record)."""
    log = log or (lambda msg: None)
    params = validate_params(params, settings)
    folder = pipeline_folder(params, settings)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "params.json", params.model_dump(mode="json"))
    log(f"pipeline folder {folder}")
    with retraining(settings, params.dataset, folder):
        result = _run_steps(params, settings, steps, folder, log)
        recs = result.recommendations
        record_served(  # after summary.json: everything the run serves is committed
            settings,
            params.dataset,
            result.ingest.catalog_dir,
            result.ingest.fingerprint,
            folder,
            recs.path if recs is not None else None,
            f"{recs.model}-{recs.adapter}" if recs is not None else None,
        )
    return result


def _run_steps(
    params: PipelineParams, settings: Settings, steps: PipelineSteps, folder: Path, log: Callable[[str], None]
) -> PipelineResult:
    timings: dict[str, float] = {}

    ingest = ingest_and_register(steps, params, settings, timings, log)
    extract = steps.extract(params, settings, ingest.catalog_dir)
    timings["extract"] = extract.seconds
    for m, f in extract.modalities.items():
        weights = "random init" if f.random_init else f.weights
        log(f"extract {m}: {f.encoded} encoded, {f.skipped} reused, snapshot {f.snapshot} (weights: {weights})")
    split = steps.split(params, ingest.catalog_dir)
    timings["split"] = split.seconds
    log(f"split: {split.id} {split.counts}")

    pairs, skipped = plan_runs(params)
    for note in skipped:
        log(note)
    if any(fits(model) for model, _ in pairs):
        decision = decide_fit(
            params, split.counts["train"], ingest.num_interactions, ingest.num_users, ingest.num_items
        )
        log(f"fit: {'on' if decision.on else 'off'} ({decision.reason})")
    runs = train_and_verify(
        steps, params, settings, ingest.catalog_dir, split.path, extract, pairs, folder, timings, log
    )
    recommendations = recommend(steps, params, settings, folder, runs, timings, log)

    start = time.perf_counter()
    notes = skipped + [
        f"left out of the recommendations: {n}" for n in (recommendations.left_out if recommendations else [])
    ]
    report = steps.report(str(folder), params, ingest, extract, split, runs, timings, notes)
    timings["report"] = round(time.perf_counter() - start, 3)
    result = PipelineResult(
        params=params, folder=str(folder), ingest=ingest, extract=extract, split=split, runs=runs,
        report=report, timings=timings, skipped=skipped, recommendations=recommendations,
    )  # fmt: skip
    write_json(folder / "summary.json", json.loads(result.model_dump_json()))
    log(f"report: {report.report_md}")
    return result


def ingest_and_register(
    steps: PipelineSteps,
    params: PipelineParams,
    settings: Settings,
    timings: dict[str, float],
    log: Callable[[str], None],
) -> IngestSummary:
    """The ingest step, then the catalog registered for watching (the job's business, not the step's)."""
    ingest = steps.ingest(params, settings)
    timings["ingest"] = ingest.seconds
    register_catalog(settings, params)
    log(
        f"ingest: {ingest.name} ({ingest.num_items} items, {ingest.num_interactions} interactions) "
        f"in {ingest.seconds:.1f} s"
    )
    for warning in ingest.warnings:
        log(f"WARNING: ingest: {warning}")
    return ingest


def recommend(
    steps: PipelineSteps,
    params: PipelineParams,
    settings: Settings,
    folder: Path,
    runs: list[TrainSummary],
    timings: dict[str, float],
    log: Callable[[str], None],
) -> RecommendSummary | None:
    """The recommend step from the best run, unless ``recommend_k`` is 0 or nothing was trained."""
    if not params.recommend_k or not runs:
        return None
    recs = steps.recommend(params, settings, str(folder), runs)
    timings["recommend"] = recs.seconds
    log(
        f"recommend: top-{params.recommend_k} for {recs.users} users from {recs.model} "
        f"{recs.adapter} (best by {recs.chosen_by}) -> {recs.path}"
        + (" (no rows: nothing left to recommend, every user has seen every item)" if recs.rows == 0 else "")
    )
    for note in recs.left_out:
        log(f"recommend: left out {note}")
    return recs


def train_and_verify(
    steps: PipelineSteps,
    params: PipelineParams,
    settings: Settings,
    catalog_dir: str,
    split_path: str,
    extract: Any,
    pairs: list[tuple[str, str]],
    folder: Path,
    timings: dict[str, float],
    log: Callable[[str], None],
) -> list[TrainSummary]:
    """Every (model, adapter) run, each then (``verify_checkpoints``) with its best checkpoint
    re-evaluated: one batch for the run executor (one after another, or spread on Ray)."""
    jobs = [
        TrainJob(model=model, adapter=adapter, run_dir=str(folder / "runs" / f"{model}-{adapter}"))
        for model, adapter in pairs
    ]
    evaluate = steps.evaluate if params.verify_checkpoints else None
    runs = train_runs(
        steps.train, evaluate, params, settings, catalog_dir, split_path, extract, jobs, steps.executor(params)
    )
    for summary in runs:
        model, adapter, verify = summary.model, summary.adapter, summary.verify_seconds or 0.0
        timings[f"train {model} {adapter}"] = round(summary.seconds - verify, 3)
        if evaluate is not None:
            timings[f"evaluate {model} {adapter}"] = verify
        recall = summary.test.get("recall@20", float("nan"))
        log(f"train {model} {adapter}: {summary.status}, best epoch {summary.best_epoch}, test recall@20 {recall:.4f}")
        if summary.fit is not None:
            log(summary.fit.line(summary.label))
        if summary.floor_note:
            log(f"WARNING: {summary.floor_note}")
    return runs
