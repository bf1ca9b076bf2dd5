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

Tasks do not cache across runs: extraction is already incremental (the feature store
skips content it holds, keyed by content hashes), and training is what a rerun is for.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish_artifacts
from pipeline.job.params import PipelineParams
from pipeline.job.run import LOCAL_STEPS, run_pipeline
from pipeline.job.watch import registered_params
from pipeline.settings import get_settings

TASK_NAMES = {"ingest": "ingest", "extract": "extract-features", "split": "split", "train": "train", "evaluate": "evaluate", "report": "report"}
RUN_NAMES = {"train": "train-{model}-{adapter}"}


def as_task(role: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    return task(name=TASK_NAMES[role], cache_policy=NO_CACHE, task_run_name=RUN_NAMES.get(role))(fn)


TASK_STEPS = LOCAL_STEPS.wrapped(as_task)
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
