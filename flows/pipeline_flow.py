"""The ``befa`` flow (deployment ``full-pipeline``): ``run_pipeline`` with its steps as Prefect tasks.

The flow does not re-implement the job: it calls :func:`pipeline.job.run.run_pipeline`
with every step wrapped in a task (``PipelineSteps.wrapped``), then publishes the
artifacts. Tasks pass paths and small summaries, never tensors (a flow keeps every task
result in memory until it ends).

Its parameters are :class:`~pipeline.job.params.PipelineParams`' fields, derived from the
model (one edit adds a parameter everywhere), flat, so a run can override any of them::

    prefect deployment run befa/full-pipeline --watch --param encoder=minilm --param epochs=5

Prefect validates them against the fields' types before the flow starts, and
``run_pipeline`` validates the rest (encoder, dataset, models) before the first task.

``use_registered=True`` (what the catalog-change trigger passes) ignores the other
parameters except ``dataset`` and reruns the catalog with the parameters it was last
run with (the watch registry, ``pipeline.job.watch``).

Training runs: the train role takes the pipeline's (model, adapter) runs as one batch
(``PipelineSteps.train_many``). Without ``cluster`` the train and evaluate tasks run one
after another in the flow's process, as before. With ``cluster`` (``auto`` or
``ray://head:10001``) the same tasks are mapped on prefect-ray's ``RayTaskRunner``: each
run (and its checkpoint re-evaluation) a Ray task with ``cpus_per_run`` CPUs, one GPU when
the cluster has them, retried when its worker dies (``pipeline.job.ray_runs.run_options``).
The workers report their task runs to the flow's Prefect API, so they must reach it.

Tasks do not cache across runs: extraction is already incremental (the feature store
skips content it holds, keyed by content hashes), and training is what a rerun is for.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import unmapped

from flows.artifacts import publish_artifacts
from pipeline.job.params import PipelineParams, TrainJob
from pipeline.job.ray_runs import connected, ray_init_kwargs, run_options, train_runs
from pipeline.job.run import LOCAL_STEPS, run_pipeline
from pipeline.job.watch import registered_params
from pipeline.settings import get_settings

TASK_NAMES = {"ingest": "ingest", "extract": "extract-features", "split": "split", "train": "train", "evaluate": "evaluate", "report": "report", "recommend": "recommend"}
RUN_NAMES = {"train": "train-{model}-{adapter}"}


def as_task(role: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    # log_prints: the steps' progress lines (extraction every 30 s, an epoch line per epoch) reach the flow run's log
    return task(name=TASK_NAMES[role], cache_policy=NO_CACHE, task_run_name=RUN_NAMES.get(role), log_prints=True)(fn)


def train_many(train: Any, evaluate: Any, params: PipelineParams, settings: Any, catalog_dir: str, split_path: str, extract: Any, jobs: list[TrainJob]) -> list[Any]:
    """The flow's train role for a batch of runs (module docstring): the core's, one after
    another, without a cluster; the train (then evaluate) tasks mapped on Ray with one."""
    if not params.cluster:
        return train_runs(train, evaluate, params, settings, catalog_dir, split_path, extract, jobs)
    from prefect_ray import RayTaskRunner  # only with a cluster: the Ray packages stay unimported otherwise
    from prefect_ray.context import remote_options

    same = {"settings": unmapped(settings), "catalog_dir": unmapped(catalog_dir), "split_path": unmapped(split_path), "extract": unmapped(extract)}
    # connected first, for its Ray Client handshake retries; the runner then finds Ray up and uses that connection
    with connected(params.cluster), RayTaskRunner(address=params.cluster, init_kwargs=ray_init_kwargs()) as runner:
        with remote_options(**run_options(params.cpus_per_run, params.device)):
            runs = runner.map(train, {
                "params": unmapped(params), **same, "model": [j.model for j in jobs], "adapter": [j.adapter for j in jobs],
                "run_dir": [j.run_dir for j in jobs], "num_threads": unmapped(params.cpus_per_run),
            })
            if evaluate is not None:  # each re-evaluation starts as soon as its run is trained
                runs = runner.map(evaluate, {**same, "summary": runs})
            return [run.result() for run in runs]


TASK_STEPS = dataclasses.replace(LOCAL_STEPS.wrapped(as_task), train_many=train_many)
artifacts_task = task(name="artifacts", cache_policy=NO_CACHE)(publish_artifacts)


def _befa(**parameters: Any) -> dict[str, Any]:
    logger = get_run_logger()
    settings = get_settings()
    use_registered = parameters.pop("use_registered", False)
    if use_registered:
        params = registered_params(settings, parameters["dataset"])
        logger.info("rerunning catalog %s with its registered parameters", parameters["dataset"])
    else:
        params = PipelineParams.model_validate(parameters)
    result = run_pipeline(params, settings, steps=TASK_STEPS, log=logger.info)
    keys = artifacts_task(result)
    return {
        "folder": result.folder,
        "report": result.report["report_md"],
        "artifacts": keys,
        "test": {f"{r.model}/{r.adapter}": r.test.get("recall@20") for r in result.runs},
    }


def flow_signature() -> inspect.Signature:
    """Keyword parameters: every ``PipelineParams`` field with its type and default, plus
    ``use_registered``. Prefect builds the deployment's parameter form from this."""
    fields = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=f.get_default(call_default_factory=True), annotation=f.annotation)
        for name, f in PipelineParams.model_fields.items()
    ]
    fields.append(inspect.Parameter("use_registered", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool))
    return inspect.Signature(fields, return_annotation=dict[str, Any])


_befa.__signature__ = flow_signature()  # type: ignore[attr-defined]
_befa.__annotations__ = {p.name: p.annotation for p in _befa.__signature__.parameters.values()} | {"return": dict[str, Any]}  # type: ignore[attr-defined]

befa = flow(name="befa", description="ingest -> extract -> split -> train base and +BeFA -> evaluate -> report", validate_parameters=True)(_befa)
