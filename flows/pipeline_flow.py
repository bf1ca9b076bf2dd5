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

Training runs: the pipeline's (model, adapter) runs go as one batch to a run executor
(``pipeline.training.executor``; the ``executor`` role of ``PipelineSteps``). Without
``cluster`` the train and evaluate tasks run one after another in the flow's process
(``LocalRuns``). With ``cluster`` (``auto`` or ``ray://head:10001``) the flow's own
executor, :class:`TaskRunnerRuns`, submits each run on prefect-ray's ``RayTaskRunner``: a
``train-run`` task per run, on a Ray worker with ``cpus_per_run`` CPUs, one GPU when the
cluster has them, retried when its worker dies (``run_options``), inside which the train
and evaluate tasks run. The workers report their task runs to the flow's Prefect API, so
they must reach it.

Tasks do not cache across runs: extraction is already incremental (the feature store
skips content it holds, keyed by content hashes), and training is what a rerun is for.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Sequence

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish_artifacts
from pipeline.cluster import connected
from pipeline.job.params import PipelineParams
from pipeline.job.run import LOCAL_STEPS, run_pipeline
from pipeline.job.watch import registered_params
from pipeline.settings import get_settings
from pipeline.training.executor import LocalRuns, RayRuns, RunExecutor, ray_init_kwargs, run_options

TASK_NAMES = {
    "ingest": "ingest",
    "extract": "extract-features",
    "split": "split",
    "train": "train",
    "evaluate": "evaluate",
    "report": "report",
    "recommend": "recommend",
}
RUN_NAMES = {"train": "train-{model}-{adapter}"}


def as_task(role: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    # log_prints: the steps' progress lines (extraction every 30 s, an epoch line per epoch) reach the flow run's log
    return task(name=TASK_NAMES[role], cache_policy=NO_CACHE, task_run_name=RUN_NAMES.get(role), log_prints=True)(fn)


class TaskRunnerRuns(RayRuns):
    """:class:`~pipeline.training.executor.RayRuns` through prefect-ray's ``RayTaskRunner``: each
    call a ``train-run`` task on a Ray worker (visible in the flow run), results in call order."""

    def map(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[Any, ...]],
        *,
        common: tuple[Any, ...] = (),
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        from prefect_ray import RayTaskRunner  # only with a cluster: the Ray packages stay unimported otherwise
        from prefect_ray.context import remote_options

        if not calls:
            return []
        run = task(name="train-run", cache_policy=NO_CACHE, log_prints=True)(fn)
        signature = inspect.signature(fn)
        # connected first, for its Ray Client handshake retries; the runner then finds Ray up and uses that connection
        with connected(self.cluster), RayTaskRunner(address=self.cluster, init_kwargs=ray_init_kwargs()) as runner:
            with remote_options(**run_options(self.cpus_per_run, self.device)):
                futures = [
                    runner.submit(run, parameters=dict(signature.bind(*common, *call).arguments)) for call in calls
                ]
                results = []
                for i, future in enumerate(futures):
                    results.append(future.result())
                    if on_result is not None:
                        on_result(i, results[-1])
                return results


def flow_executor(params: PipelineParams) -> RunExecutor:
    """The flow's executor role: local runs without a cluster, :class:`TaskRunnerRuns` with one."""
    return TaskRunnerRuns(params.cluster, params.cpus_per_run, params.device) if params.cluster else LocalRuns()


TASK_STEPS = dataclasses.replace(LOCAL_STEPS.wrapped(as_task), executor=flow_executor)
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
        "report": str(result.report.report_md),
        "artifacts": keys,
        "test": {f"{r.model}/{r.adapter}": r.test.get("recall@20") for r in result.runs},
    }


def flow_signature() -> inspect.Signature:
    """Keyword parameters: every ``PipelineParams`` field with its type and default, plus
    ``use_registered``. Prefect builds the deployment's parameter form from this."""
    fields = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=f.get_default(call_default_factory=True),
            annotation=f.annotation,
        )
        for name, f in PipelineParams.model_fields.items()
    ]
    fields.append(inspect.Parameter("use_registered", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool))
    return inspect.Signature(fields, return_annotation=dict[str, Any])


_befa.__signature__ = flow_signature()  # type: ignore[attr-defined]
_befa.__annotations__ = {p.name: p.annotation for p in _befa.__signature__.parameters.values()} | {
    "return": dict[str, Any]
}  # type: ignore[attr-defined]

befa = flow(
    name="befa",
    description="ingest -> extract -> split -> train base and +BeFA -> evaluate -> report",
    validate_parameters=True,
)(_befa)
