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

A step task other than ``train`` that fails on something transient (I/O, memory, CUDA
out-of-memory) is retried twice, 10 s apart (:func:`retry_transient`); a user error is not.
A flow run that fails for good, or is killed outright (Crashed, which Prefect does not
retry), leaves the served record as it was: the catalog watch retriggers the retrain until
one succeeds (``pipeline.job.watch``, ``pipeline.job.served``).

Tasks do not cache across runs: extraction is already incremental (the feature store
skips content it holds, keyed by content hashes), and training is what a rerun is for.
"""

from __future__ import annotations

import dataclasses
import errno
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


# A step that fails on something that may pass (an I/O error, memory, a CUDA out-of-memory) is
# retried in place, the steps before it kept; a user's mistake or a bug (ValueError, a missing
# file, a full disk, ...) is not. Not the train step: its run folder then holds an interrupted
# run, which a new call refuses without --resume. A run killed outright (-9, the OOM killer),
# or failed for good, leaves the served record as it was: the catalog watch asks for the
# retrain again until one succeeds (pipeline.job.served); Prefect never retries a Crashed run.
RETRIED = ("ingest", "extract", "split", "evaluate", "recommend", "report")
TASK_RETRIES = 2
TASK_RETRY_DELAY_S = 10.0
_LASTING_ERRNOS = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOSPC, errno.EDQUOT)


def is_transient(exc: BaseException) -> bool:
    """Whether a step's failure may pass on a retry."""
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, (MemoryError, TimeoutError, ConnectionError)):
        return True
    return isinstance(exc, OSError) and exc.errno not in _LASTING_ERRNOS


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry only a transient failure (:func:`is_transient`)."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


def as_task(role: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    # log_prints: the steps' progress lines (extraction every 30 s, an epoch line per epoch) reach the flow run's log
    return task(
        name=TASK_NAMES[role],
        cache_policy=NO_CACHE,
        task_run_name=RUN_NAMES.get(role),
        log_prints=True,
        retries=TASK_RETRIES if role in RETRIED else 0,
        retry_delay_seconds=TASK_RETRY_DELAY_S,
        retry_condition_fn=retry_transient if role in RETRIED else None,
    )(fn)


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


def befa(**parameters: Any) -> dict[str, Any]:
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


befa.__signature__ = flow_signature()  # type: ignore[attr-defined]
befa.__annotations__ = {p.name: p.annotation for p in befa.__signature__.parameters.values()} | {
    "return": dict[str, Any]
}  # type: ignore[attr-defined]

# The function and the flow share the name ``befa``: Prefect records the function's
# ``module:qualname`` as the deployment's entrypoint, and a served run loads that name. Named
# ``_befa``, the entrypoint found the bare function, which Prefect wrapped in a new flow
# named after it ('-befa'), without this one's parameter validation.
befa = flow(
    name="befa",
    description="ingest -> extract -> split -> train base and +BeFA -> evaluate -> report",
    validate_parameters=True,
)(befa)
