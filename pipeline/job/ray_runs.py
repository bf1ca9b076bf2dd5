"""Training runs spread over a Ray cluster: the pipeline's model x adapter runs and the study's runs.

``cluster`` (``auto`` or ``ray://head:10001``, the parameter extraction already takes)
turns a batch of independent training runs into Ray tasks, one run per task:

- each task reserves ``cpus_per_run`` CPUs and trains with as many torch threads, plus
  ``num_gpus=1`` when the cluster has GPUs (and ``device`` is not ``cpu``): Ray then
  gives the task its own GPU (``CUDA_VISIBLE_DEVICES``), so ``cuda`` is that GPU;
- a task whose worker dies (a node lost, a process killed) is retried up to
  :data:`MAX_RETRIES` times (Ray's ``max_retries``; an exception the run raises itself
  is not retried: it would fail the same way again);
- the results come back in the order the runs were given, whatever order they finish in,
  and each run is seeded by its own parameters, so they do not depend on how the runs
  are spread (tested: the same per-run metrics as one after another).

Workers read and write the same paths the driver names: run folders, the study's run
cache, the graph cache and the feature store live under ``BEFA_HOME``, which on a real
cluster must be storage every node mounts at the same path (NFS, a shared volume).

:func:`train_runs` is the pipeline's ``train_many`` role (``pipeline.job.run``): one
after another in this process without a cluster, as Ray tasks with one. The study's
``StudyRunner.run_many`` submits its batches through :func:`map_on_ray`. The Prefect
flow uses prefect-ray's ``RayTaskRunner`` instead, with :func:`ray_init_kwargs` and
:func:`run_options` (``flows/pipeline_flow.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.features.ray_backend import connected, runtime_env
from pipeline.job.params import FeaturesSummary, PipelineError, PipelineParams, TrainJob, TrainSummary
from pipeline.settings import Settings
from pipeline.training.record import RECORD, RunRecord

MAX_RETRIES = 3
TASK_CLAIM = "ray-task.txt"  # in a run folder: the Ray task that trains it
# Test hook (tests/test_ray_training.py): a folder; while it holds a file ``armed``, the
# first run to finish an epoch on a Ray worker creates ``killed`` there and kills its own
# worker process, as a lost node would. Unset (always, outside that test): nothing happens.
KILL_ONCE_ENV = "BEFA_TEST_KILL_ONCE"


def ray_init_kwargs() -> dict[str, Any]:
    """What ``ray.init`` needs for these tasks: befa's packages shipped to the workers."""
    return {"runtime_env": runtime_env(), "log_to_driver": False}


def run_options(cpus_per_run: int, device: str | None, ray: Any = None) -> dict[str, Any]:
    """Ray task options of one training run on the connected cluster: its CPUs, one GPU when
    the cluster has GPUs (unless ``device`` is 'cpu') and the retries of a lost worker."""
    if ray is None:
        import ray
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    most = max((float(n.get("Resources", {}).get("CPU", 0)) for n in nodes), default=0.0)
    if cpus_per_run > most:  # Ray would wait forever for a node that large
        raise PipelineError(f"cpus_per_run={cpus_per_run}: no node of the cluster has that many CPUs (the largest has {most:g})")
    opts: dict[str, Any] = {"num_cpus": cpus_per_run, "max_retries": MAX_RETRIES}
    if float(ray.cluster_resources().get("GPU", 0)) > 0 and device != "cpu":
        opts["num_gpus"] = 1
    return opts


def map_on_ray(
    fn: Callable[..., Any],
    calls: Sequence[tuple[Any, ...]],
    *,
    cluster: str,
    cpus_per_run: int,
    device: str | None,
    common: tuple[Any, ...] = (),
    on_result: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """``fn(*common, *call)`` for every call, each a Ray task; the results in call order.

    ``common`` is put in the object store once (the study's feature tables, not one copy per
    task); ``on_result(i, result)`` runs here as each task finishes (progress lines)."""
    if not calls:
        return []
    with connected(cluster) as ray:
        remote = ray.remote(fn).options(**run_options(cpus_per_run, device, ray))
        shared = [ray.put(x) for x in common]
        refs = [remote.remote(*shared, *call) for call in calls]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                i = index[done[0]]
                results[i] = ray.get(done[0])
                if on_result is not None:
                    on_result(i, results[i])
        except BaseException:
            for ref in pending:  # one run failed: stop the others rather than leave them training
                ray.cancel(ref)
            raise
        return results


def die_once_when_armed(*_: Any) -> None:
    """An ``on_epoch_end`` hook for runs on Ray workers: see :data:`KILL_ONCE_ENV`."""
    folder = os.environ.get(KILL_ONCE_ENV)
    if not folder or not (Path(folder) / "armed").exists():
        return
    try:
        os.close(os.open(Path(folder) / "killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)  # the worker process dies as if its node were lost: no cleanup, no exception


def claim_run(run_dir: str | Path) -> None:
    """Called by a Ray task before it trains ``run_dir``: when the folder's claim names this
    very task, this is Ray's retry after the task's worker died (Ray retries only then, under
    the same task id), so the run its record says is "running" is gone, even when it ran on
    another node, whose processes cannot be checked from here: the record is released (no
    process) and the run resumes from its last checkpoint."""
    import ray

    run_dir = Path(run_dir)
    task = ray.get_runtime_context().get_task_id() or ""
    claim = run_dir / TASK_CLAIM
    if task and claim.exists() and claim.read_text() == task and (run_dir / RECORD).exists():
        record = RunRecord.load(run_dir)
        if record.status == "running":
            record.process = None
            record.save(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    claim.write_text(task)


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
    summary = train(params, settings, catalog_dir, split_path, extract, job.model, job.adapter, job.run_dir, **train_options)
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
    return train_job(train, evaluate, params, settings, catalog_dir, split_path, extract, job, num_threads=params.cpus_per_run)


def train_runs(
    train: Callable[..., TrainSummary],
    evaluate: Callable[..., TrainSummary] | None,
    params: PipelineParams,
    settings: Settings,
    catalog_dir: str,
    split_path: str,
    extract: FeaturesSummary,
    jobs: Sequence[TrainJob],
) -> list[TrainSummary]:
    """The pipeline's ``train_many`` role: every job with :func:`train_job`, one after another
    here, or as Ray tasks on ``params.cluster`` (each run on one worker, its summary back here)."""
    if not params.cluster:
        return [train_job(train, evaluate, params, settings, catalog_dir, split_path, extract, job) for job in jobs]
    return map_on_ray(
        train_job_on_worker, [(job,) for job in jobs], cluster=params.cluster, cpus_per_run=params.cpus_per_run,
        device=params.device, common=(train, evaluate, params, settings, catalog_dir, split_path, extract),
    )
