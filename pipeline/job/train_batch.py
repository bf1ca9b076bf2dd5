"""The pipeline's training runs as one batch: each (model, adapter) run trained, then its
best checkpoint re-evaluated, through a run executor (``pipeline.training.executor``):
one after another here, or one Ray task per run with ``cluster``; the Prefect flow
passes its own executor on prefect-ray's task runner.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from pipeline.features.summary import FeaturesSummary
from pipeline.job.params import PipelineParams
from pipeline.settings import Settings
from pipeline.training.executor import RunExecutor, claim_run, executor_for
from pipeline.training.summary import TrainJob, TrainSummary


def executor_of(params: PipelineParams) -> RunExecutor:
    """The executor the parameters ask for: local, or Ray on ``params.cluster``."""
    return executor_for(params.cluster, params.cpus_per_run, params.device)


def train_job(
    train: Callable[..., TrainSummary],
    evaluate: Callable[..., TrainSummary] | None,
    params: PipelineParams,
    settings: Settings,
    catalog_dir: str,
    split_path: str,
    extract: FeaturesSummary,
    job: TrainJob,
    **train_options: Any,
) -> TrainSummary:
    """One pipeline run: trained, then (``evaluate``) its best checkpoint re-evaluated."""
    summary = train(
        params, settings, catalog_dir, split_path, extract, job.model, job.adapter, job.run_dir, **train_options
    )
    return evaluate(settings, catalog_dir, split_path, extract, summary) if evaluate is not None else summary


def train_job_on_worker(
    train: Callable[..., TrainSummary],
    evaluate: Callable[..., TrainSummary] | None,
    params: PipelineParams,
    settings: Settings,
    catalog_dir: str,
    split_path: str,
    extract: FeaturesSummary,
    job: TrainJob,
) -> TrainSummary:
    """:func:`train_job` as a Ray task: as many torch threads as the CPUs it reserved."""
    claim_run(job.run_dir)
    return train_job(
        train, evaluate, params, settings, catalog_dir, split_path, extract, job, num_threads=params.cpus_per_run
    )


def train_runs(
    train: Callable[..., TrainSummary],
    evaluate: Callable[..., TrainSummary] | None,
    params: PipelineParams,
    settings: Settings,
    catalog_dir: str,
    split_path: str,
    extract: FeaturesSummary,
    jobs: Sequence[TrainJob],
    executor: RunExecutor | None = None,
) -> list[TrainSummary]:
    """Every job with :func:`train_job` through ``executor`` (default: :func:`executor_of` the
    parameters): in this process, or each run on a worker, its summary back here in job order."""
    executor = executor or executor_of(params)
    fn = train_job_on_worker if executor.remote else train_job
    return executor.map(
        fn, [(job,) for job in jobs], common=(train, evaluate, params, settings, catalog_dir, split_path, extract)
    )
