"""Training runs as Ray tasks (``cluster=``) give the same per-run results as one after another.

One local Ray session for the module (2 CPUs, no dashboard, started and stopped here; token
authentication off, so nothing under ~/.ray is written). The tiny study and pipeline of the
other tests (40 movies x 200 users, tiny random ImageBind, embedding 16, 2 epochs):

1. the study with ``cluster="auto"`` (search, main table and sweep as Ray tasks, 1 CPU and
   1 torch thread each) has exactly the per-run metrics of the sequential study with 1 thread;
2. a worker killed mid-run (after its first epoch, by the ``BEFA_TEST_KILL_ONCE`` hook of
   ``pipeline.training.executor``) is retried by Ray, the run resumes from its last checkpoint
   and ends with the same metrics;
3. the pipeline with ``cluster="auto"`` trains (and re-evaluates) its runs as Ray tasks, with
   the metrics of the pipeline without a cluster; so does the Prefect flow, whose train and
   evaluate tasks prefect-ray's ``RayTaskRunner`` submits (under ``prefect_test_harness``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # about 1.5-3 minutes on 2 shared cores

from pipeline.cluster import runtime_env  # noqa: E402
from pipeline.job.params import PipelineParams  # noqa: E402
from pipeline.job.run import LOCAL_STEPS, run_pipeline  # noqa: E402
from pipeline.job.steps import train_step  # noqa: E402
from pipeline.settings import get_settings  # noqa: E402
from pipeline.study.run import run_study  # noqa: E402
from pipeline.training.executor import KILL_ONCE_ENV  # noqa: E402
from pipeline.training.record import RunRecord  # noqa: E402
from pipeline.training.summary import TrainSummary  # noqa: E402
from tests.flows_data import make_small_catalog  # noqa: E402
from tests.study_data import TINY_ENCODER, tiny_study_params  # noqa: E402


@pytest.fixture(scope="module")
def kill_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kill-once")


@pytest.fixture(scope="module")
def local_ray(kill_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv(KILL_ONCE_ENV, str(kill_dir))  # before ray.init: the workers inherit it (inert until armed)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env())
        yield
        ray.shutdown()


@pytest.fixture
def submitted(monkeypatch) -> list[str]:
    """The names of the functions submitted as Ray tasks while the test runs."""
    names: list[str] = []
    real = ray.remote

    def spy(*args, **kwargs):  # ray.remote(fn), or ray.remote(**options)(fn) as prefect-ray calls it
        if len(args) == 1 and callable(args[0]) and not kwargs:
            names.append(args[0].__name__)
            return real(args[0])
        decorator = real(*args, **kwargs)

        def record(fn):
            names.append(fn.__name__)
            return decorator(fn)

        return record

    monkeypatch.setattr(ray, "remote", spy)
    return names


@pytest.fixture(scope="module")
def data(tmp_path_factory, datasets_root):
    root = tmp_path_factory.mktemp("ray-training")
    cat = make_small_catalog(root / "source", datasets_root)
    return cat, get_settings(home=root / "home", datasets_root=datasets_root)


def _study(cat, **changes):
    small = dict(
        models=["freedom"],
        seeds=[1, 2],
        patience=2,
        max_trials=2,
        model_overrides={"*": {"embedding_dim": 16}},
        sweep_t=[0.25],
        experiment_seeds=1,
        modality_sets=None,
        train_fractions=None,
        cold_fraction=None,
        insertions=None,  # the insertion ablation is covered by tests/study; here: the phases that queue batches
    )
    return tiny_study_params(cat, **{**small, **changes})


def _runs(folder: str) -> dict[str, RunRecord]:
    return {p.name: RunRecord.load(p) for p in sorted((Path(folder) / "runs").iterdir())}


def _same_metrics(a: RunRecord, b: RunRecord) -> None:
    assert (a.status, a.best_epoch, len(a.epochs)) == (b.status, b.best_epoch, len(b.epochs)), a.run_dir
    assert a.best_valid == b.best_valid and a.test == b.test, a.run_dir  # exact: same seeds, same thread count
    assert [e.valid for e in a.epochs] == [e.valid for e in b.epochs] and [e.loss for e in a.epochs] == [
        e.loss for e in b.epochs
    ]


@pytest.fixture(scope="module")
def sequential_study(data):
    cat, settings = data
    return run_study(_study(cat, name="sequential"), settings)


def test_distributed_study_gives_the_sequential_per_run_metrics(local_ray, data, sequential_study, submitted):
    cat, settings = data
    lines: list[str] = []
    dist = run_study(_study(cat, name="on-ray", cluster="auto", cpus_per_run=1), settings, log=lines.append)
    # one batch per round of the search (a trial of every arm at once: 2 trials, so 2 rounds), then main and sweep
    assert submitted.count("train_on_worker") == 4
    seq_runs, ray_runs = _runs(sequential_study.folder), _runs(dist.folder)
    # mostpop, 2 search trials per adapter, seed 2 of both winners, the sweep point (seed 1)
    assert list(ray_runs) == list(seq_runs) and len(ray_runs) == dist.runs_trained == 8
    for name in seq_runs:
        _same_metrics(seq_runs[name], ray_runs[name])
    assert (dist.runs_trained, dist.runs_reused) == (sequential_study.runs_trained, sequential_study.runs_reused)
    assert dist.main == sequential_study.main
    assert (
        any("search freedom befa" in line for line in lines)
        and sum(" seed " in line for line in lines) == dist.runs_trained
    )

    # resume works the same on the cluster: every run is finished, so nothing is resubmitted
    again = run_study(_study(cat, name="on-ray", cluster="auto", cpus_per_run=1), settings)
    assert again.runs_trained == 0 and again.main == dist.main and submitted.count("train_on_worker") == 4


def test_a_worker_killed_mid_run_is_retried_and_the_run_ends_the_same(local_ray, data, sequential_study, kill_dir):
    cat, settings = data
    (kill_dir / "armed").touch()
    try:
        killed = run_study(_study(cat, name="killed", seeds=[1], max_trials=1, sweep_t=None, cluster="auto"), settings)
    finally:
        (kill_dir / "armed").unlink()
    assert (kill_dir / "killed").exists(), "the hook did not kill a worker"
    runs, seq_runs = _runs(killed.folder), _runs(sequential_study.folder)
    resumed = [name for name, rec in runs.items() if rec.resumed_at]
    assert len(resumed) == 1, "the killed run should have been retried from its last checkpoint"
    assert len(runs) == 3  # mostpop and the two first-seed search trials, which the sequential study has too
    for name, rec in runs.items():
        _same_metrics(rec, seq_runs[name])


@pytest.fixture(scope="module")
def local_pipeline(data):
    """The pipeline without a cluster, each run with 1 torch thread (what each Ray task uses)."""
    cat, settings = data
    params = PipelineParams(
        dataset="ml-small",
        importer="generic",
        ingest_options=cat.ingest_options(),
        encoder=TINY_ENCODER,
        models=["lightgcn", "freedom"],
        adapters=["none", "befa"],
        epochs=2,
        patience=2,
        seed=1,
        model_overrides={"*": {"embedding_dim": 16}},
        run_name="local",
        recommend_k=0,
    )
    one_thread = dataclasses.replace(LOCAL_STEPS, train=functools.partial(train_step, num_threads=1))
    return params, run_pipeline(params, settings, steps=one_thread)


def _same_pipeline_runs(local, dist, run_name: str) -> None:
    assert (
        [(r.model, r.adapter) for r in dist]
        == [(r.model, r.adapter) for r in local]
        == [("mostpop", "none"), ("lightgcn", "none"), ("freedom", "none"), ("freedom", "befa")]
    )
    for a, b in zip(local, dist):
        assert b.run_dir.endswith(f"{run_name}/runs/{b.model}-{b.adapter}") and b.verified, b
        assert (a.test, a.valid, a.best_epoch, a.epochs_run) == (b.test, b.valid, b.best_epoch, b.epochs_run)
        _same_metrics(RunRecord.load(a.run_dir), RunRecord.load(b.run_dir))


def test_pipeline_with_a_cluster_trains_its_runs_as_ray_tasks_with_the_same_metrics(
    local_ray, data, local_pipeline, submitted
):
    _, settings = data
    params, local = local_pipeline
    dist = run_pipeline(params.model_copy(update={"run_name": "on-ray", "cluster": "auto"}), settings)
    assert (
        submitted.count("train_job_on_worker") == 1
    )  # one batch: the four runs, each then re-evaluated, on the workers
    _same_pipeline_runs(local.runs, dist.runs, "on-ray")
    assert dist.extract.backend == "ray (auto)" and all(f.encoded == 0 for f in dist.extract.modalities.values())


def test_the_flow_maps_its_train_tasks_on_a_ray_task_runner(
    local_ray, data, local_pipeline, submitted, tmp_path, monkeypatch
):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline_flow import befa

    _, settings = data
    params, local = local_pipeline
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("BEFA_HOME", str(settings.home))  # the flow reads its settings from the environment
    monkeypatch.setenv("BEFA_DATASETS_ROOT", str(settings.datasets_root))
    monkeypatch.delenv("BEFA_FEATURE_STORE", raising=False)
    with prefect_test_harness(server_startup_timeout=90):
        out = befa(**params.model_dump(exclude={"run_name", "cluster"}), run_name="flow-on-ray", cluster="auto")
    # the flow's run executor (TaskRunnerRuns) submits one train-run task per run to prefect-ray, each a Ray
    # task inside which that run's train and evaluate tasks run: 4 runs, 4 Ray tasks
    assert submitted.count("_run_prefect_task") == 4 and "train_job_on_worker" not in submitted
    summary = json.loads((Path(out["folder"]) / "summary.json").read_text())
    _same_pipeline_runs(local.runs, [TrainSummary.model_validate(r) for r in summary["runs"]], "flow-on-ray")
