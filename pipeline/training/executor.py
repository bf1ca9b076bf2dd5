"""One interface for a batch of independent training runs, and its two implementations.

A batch of runs (the pipeline's model x adapter runs, a study phase's runs) goes through a
:class:`RunExecutor`: ``executor.map(fn, calls, common=..., on_result=...)`` calls
``fn(*common, *call)`` for every call and returns the results in call order.

- :class:`LocalRuns`: one after another in this process.
- :class:`RayRuns`: one Ray task per call on ``cluster`` (``auto`` or ``ray://head:10001``):
  each task reserves ``cpus_per_run`` CPUs and trains with as many torch threads, plus
  ``num_gpus=1`` when the cluster has GPUs (and ``device`` is not ``cpu``), so ``cuda`` is
  the task's own GPU; a task whose worker dies (a node lost, a process killed) is retried
  up to :data:`MAX_RETRIES` times (an exception the run raises itself is not retried: it
  would fail the same way again); ``common`` goes into the object store once.
- The Prefect flow brings a third, on prefect-ray's ``RayTaskRunner`` (``flows/pipeline_flow.py``),
  so every run is a task in the flow's UI; it uses :func:`ray_init_kwargs` and :func:`run_options`.

Results come back in the order the calls were given, whatever order they finish in, and
each run is seeded by its own parameters, so they do not depend on how runs are spread
(tested: the same per-run metrics as one after another). A remote executor
(``executor.remote``) runs ``fn`` in another process: the caller then passes a worker
function that claims its run folder (:func:`claim_run`) and sizes its threads.

Workers read and write the same paths the driver names: run folders, the study's run
cache, the graph cache and the feature store live under ``BEFA_HOME``, which on a real
cluster must be storage every node mounts at the same path (NFS, a shared volume).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from pipeline.cluster import connected, runtime_env
from pipeline.training.record import RECORD, RunRecord

MAX_RETRIES = 3
TASK_CLAIM = "ray-task.txt"  # in a run folder: the Ray task that trains it
# Test hook (tests/training/test_ray_training.py): a folder; while it holds a file ``armed``, the
# first run to finish an epoch on a Ray worker creates ``killed`` there and kills its own
# worker process, as a lost node would. Unset (always, outside that test): nothing happens.
KILL_ONCE_ENV = "BEFA_TEST_KILL_ONCE"


class ExecutorError(ValueError):
    """A batch that cannot run as asked (e.g. more CPUs per run than any node has)."""


class RunExecutor(Protocol):
    """Runs ``fn(*common, *call)`` for every call; the results in call order."""

    remote: bool  # True when fn runs in another process (a worker)

    def map(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[Any, ...]],
        *,
        common: tuple[Any, ...] = (),
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]: ...


class LocalRuns:
    """One run after another, in this process."""

    remote = False

    def map(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[Any, ...]],
        *,
        common: tuple[Any, ...] = (),
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        results = []
        for i, call in enumerate(calls):
            results.append(fn(*common, *call))
            if on_result is not None:
                on_result(i, results[-1])
        return results


class RayRuns:
    """One Ray task per run on ``cluster`` (module docstring)."""

    remote = True

    def __init__(self, cluster: str, cpus_per_run: int = 1, device: str | None = None) -> None:
        self.cluster, self.cpus_per_run, self.device = cluster, cpus_per_run, device

    def map(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[Any, ...]],
        *,
        common: tuple[Any, ...] = (),
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """``on_result(i, result)`` runs here as each task finishes (progress lines); when one
        run fails, the others are cancelled rather than left training."""
        if not calls:
            return []
        with connected(self.cluster) as ray:
            remote = ray.remote(fn).options(**run_options(self.cpus_per_run, self.device, ray))
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


def executor_for(cluster: str | None, cpus_per_run: int = 1, device: str | None = None) -> RunExecutor:
    """:class:`LocalRuns` without a cluster, :class:`RayRuns` on one."""
    return RayRuns(cluster, cpus_per_run, device) if cluster else LocalRuns()


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
        raise ExecutorError(
            f"cpus_per_run={cpus_per_run}: no node of the cluster has that many CPUs (the largest has {most:g})"
        )
    opts: dict[str, Any] = {"num_cpus": cpus_per_run, "max_retries": MAX_RETRIES}
    if float(ray.cluster_resources().get("GPU", 0)) > 0 and device != "cpu":
        opts["num_gpus"] = 1
    return opts


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
