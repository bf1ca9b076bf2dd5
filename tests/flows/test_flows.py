"""Prefect flows under ``prefect_test_harness``: the pipeline flow, its artifacts, the watch flow.

Most behaviour is tested on the plain functions (test_job.py); these tests
check what only the Prefect layer does: parameters -> validated run, tasks, artifacts,
events, deployments and the trigger definition.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("prefect")

from prefect.artifacts import Artifact  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from flows.artifacts import artifact_key  # noqa: E402
from flows.pipeline_flow import befa  # noqa: E402
from flows.serve import build_deployments  # noqa: E402
from flows.watch_flow import EVENT  # noqa: E402
from tests.flows_data import make_small_catalog  # noqa: E402

TINY_ENCODER = "imagebind:tiny@random"


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    prefect_home = tmp_path_factory.mktemp("prefect-home")
    old = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(prefect_home)
    try:
        with prefect_test_harness(server_startup_timeout=60):
            yield
    finally:
        if old is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = old


@pytest.fixture(scope="module")
def befa_env(tmp_path_factory, datasets_root):
    """BEFA_HOME for this module (flows read settings from the environment) and a small catalog."""
    root = tmp_path_factory.mktemp("flows")
    saved = {k: os.environ.get(k) for k in ("BEFA_HOME", "BEFA_DATASETS_ROOT", "BEFA_FEATURE_STORE")}
    os.environ["BEFA_HOME"] = str(root / "home")
    os.environ["BEFA_DATASETS_ROOT"] = str(datasets_root)
    os.environ.pop("BEFA_FEATURE_STORE", None)
    cat = make_small_catalog(root / "source", datasets_root)
    yield root / "home", cat
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _params(cat, **kw):
    base = dict(
        dataset="ml-flow",
        importer="generic",
        ingest_options=cat.ingest_options(),
        encoder=TINY_ENCODER,
        models=["lightgcn", "freedom"],
        adapters=["none", "befa"],
        epochs=1,
        patience=1,
        seed=3,
        model_overrides={"*": {"embedding_dim": 16}},
        verify_checkpoints=False,  # verified in test_job
    )
    base.update(kw)
    return base


async def _task_run_count(flow_run_id) -> int:
    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return len(runs)


def test_pipeline_flow_runs_and_publishes_artifacts(harness, befa_env):
    home, cat = befa_env
    out = befa(**_params(cat, run_name="flow-run"))
    folder = Path(out["folder"])
    assert folder == home / "runs" / "pipelines" / "flow-run"
    assert (
        (folder / "metrics.parquet").exists()
        and (folder / "curves.png").exists()
        and (folder / "base_vs_befa.png").exists()
    )
    assert set(out["test"]) == {
        "mostpop/none",
        "lightgcn/none",
        "freedom/none",
        "freedom/befa",
    }  # MostPop: the floor, always
    assert out["artifacts"] == {
        "table": "befa-metrics-ml-flow",
        "markdown": "befa-report-ml-flow",
        "recommendations": "befa-recommendations-ml-flow",
    }
    recs = Artifact.get(artifact_key("recommendations", "ml-flow"))
    assert recs is not None and recs.type == "table"
    head = json.loads(recs.data) if isinstance(recs.data, str) else recs.data
    assert list(head[0]) == ["user_id", "rank", "item_id", "score"] and head[0]["rank"] == 1
    assert (folder / "recommendations.parquet").exists() and (folder / "recommendations.json").exists()

    table = Artifact.get(artifact_key("metrics", "ml-flow"))
    assert table is not None and table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {r["model"] for r in rows} == {"mostpop", "lightgcn", "freedom"}
    assert {"base", "+BeFA", "relative gain", "95% CI", "verdict"} <= set(rows[0])
    md = Artifact.get(artifact_key("report", "ml-flow"))
    assert md is not None and md.type == "markdown"
    assert "weights: random init" in md.data and "freedom" in md.data


async def _log_messages(flow_run_id) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def test_long_steps_log_progress_lines_in_the_flow_run(harness, befa_env):
    """Extraction's progress lines and the epoch lines reach the flow run's log (log_prints),
    not only the terminal: a run watched in the Prefect UI is never silent for a whole step."""
    import asyncio

    _, cat = befa_env
    state = befa(
        **_params(cat, run_name="logged", dataset="ml-logged", models=["lightgcn"], adapters=["none"]),
        return_state=True,
    )
    assert state.is_completed()
    messages = asyncio.run(_log_messages(state.state_details.flow_run_id))
    assert any(m.startswith("extract image (") and "/40 (100%)" in m for m in messages), messages[:20]
    assert any(m.startswith("extract text (") for m in messages)
    assert any(m.startswith("lightgcn epoch    0") for m in messages)


def test_flow_rejects_bad_parameters_before_any_task(harness, befa_env):
    _, cat = befa_env
    state = befa(**_params(cat, encoder="nosuch:x@random", run_name="bad"), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="unknown encoder 'nosuch'"):
        state.result()
    import asyncio

    assert asyncio.run(_task_run_count(state.state_details.flow_run_id)) == 0


def test_watch_flow_emits_only_when_something_changed(harness, befa_env, monkeypatch):
    home, cat = befa_env
    import flows.watch_flow as wf

    if not (home / "watch" / "catalogs.json").exists():
        befa(**_params(cat, models=["lightgcn"], adapters=["none"], run_name="register"))
    emitted = []
    monkeypatch.setattr(wf, "emit_event", lambda **kw: emitted.append(kw))

    wf.watch(catalogs=["ml-flow"])  # baseline
    wf.watch(catalogs=["ml-flow"])
    assert emitted == []

    added = cat.add_items(2)
    edited = pd.read_csv(cat.items, dtype=str)["item_id"].iloc[1]
    cat.replace_poster(edited, with_poster_of=cat.spare_ids[0])
    (summary,) = wf.watch(catalogs=["ml-flow"], retrain=False)
    assert len(emitted) == 1
    event = emitted[0]
    assert event["event"] == EVENT
    assert event["resource"]["prefect.resource.id"] == "befa.catalog.ml-flow"
    assert event["resource"]["befa.retrain"] == "false"
    assert (
        event["payload"]["items_reencoded"] == 3
        and event["payload"]["added"] == 2
        and event["payload"]["image_changed"] == 1
    )
    assert summary["encoded"] == {"image": 3, "text": 2}
    assert sorted(added)

    wf.watch(catalogs=["ml-flow"], retrain=False)
    assert len(emitted) == 1  # nothing changed and no retrain wanted: no event

    # no retrain ran since the change: the served recommendations are older than the catalog,
    # so with retrain on the watch asks for one, watch after watch, until one succeeds
    (due,) = wf.watch(catalogs=["ml-flow"])
    assert len(emitted) == 2 and due["retrain_due"] and emitted[1]["resource"]["befa.retrain"] == "true"
    assert emitted[1]["payload"]["reason"].startswith("retrain due")
    wf.watch(catalogs=["ml-flow"])
    assert len(emitted) == 3
    befa(dataset="ml-flow", use_registered=True)  # what the trigger runs
    (settled,) = wf.watch(catalogs=["ml-flow"])
    assert len(emitted) == 3 and not settled["changed"] and not settled["retrain_due"]


def test_step_tasks_retry_transient_failures_only(harness, monkeypatch):
    import errno

    from prefect import flow

    import flows.pipeline_flow as pf

    assert pf.TASK_STEPS.extract.retries == 2 and pf.TASK_STEPS.train.retries == 0  # a killed train: see the watch
    assert pf.is_transient(OSError(errno.EIO, "I/O error")) and pf.is_transient(MemoryError())
    assert not pf.is_transient(ValueError("bad --encoder")) and not pf.is_transient(OSError(errno.ENOSPC, "full"))
    monkeypatch.setattr(pf, "TASK_RETRY_DELAY_S", 0.0)
    calls = []

    def flaky(exc: BaseException) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise exc
        return "done"

    step = pf.as_task("extract", flaky)
    assert flow(name="retry-test")(lambda: step(OSError(errno.EIO, "I/O error")))() == "done" and len(calls) == 2
    calls.clear()
    state = flow(name="retry-test")(lambda: step(ValueError("bad input")))(return_state=True)
    assert state.is_failed() and len(calls) == 1  # a user error is not retried


def test_deployments_schedule_and_trigger():
    pipeline, watcher = build_deployments(cron="0 3 * * *")
    assert (pipeline.name, watcher.name) == ("full-pipeline", "catalog-watch")
    assert pipeline.flow_name == "befa" and watcher.flow_name == "befa-watch"
    (trigger,) = pipeline.triggers
    assert trigger.expect == {EVENT}
    assert trigger.match.root == {"befa.retrain": "true"}
    assert trigger.parameters == {"dataset": "{{ event.payload.catalog }}", "use_registered": True}
    assert watcher.schedules[0].schedule.cron == "0 3 * * *"

    pipeline, watcher = build_deployments(interval_s=120, retrain_on_change=False)
    assert pipeline.triggers == []
    assert watcher.parameters["retrain"] is False
    assert watcher.schedules[0].schedule.interval.total_seconds() == 120
    _, watcher = build_deployments(interval_s=None, cron=None)
    assert not watcher.schedules


def test_prefect_yaml_matches_the_served_deployments():
    import yaml
    from prefect.events import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint

    repo = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((repo / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert set(by_name) == {"full-pipeline", "catalog-watch"}
    assert by_name["full-pipeline"]["entrypoint"] == "flows/pipeline_flow.py:befa"
    assert by_name["catalog-watch"]["entrypoint"] == "flows/watch_flow.py:watch"
    from flows.pipeline_flow import befa
    from flows.watch_flow import watch

    served = {"full-pipeline": befa, "catalog-watch": watch}
    for d in by_name.values():
        # what `prefect deploy` and a worker load: the same flow objects as `befa serve`
        assert load_flow_from_entrypoint(str(repo / d["entrypoint"])).name == served[d["name"]].name
        assert d["work_pool"]["name"] == "befa-process"
    (trigger,) = [DeploymentEventTrigger.model_validate(t) for t in by_name["full-pipeline"]["triggers"]]
    served = build_deployments()[0].triggers[0]
    assert (trigger.expect, trigger.match, trigger.for_each, trigger.parameters) == (
        served.expect,
        served.match,
        served.for_each,
        served.parameters,
    )


def test_flow_parameters_are_the_pipeline_params_fields():
    """One edit adds a parameter: the flow's signature is derived from PipelineParams."""
    import inspect

    from prefect.utilities.callables import parameter_schema

    from flows.pipeline_flow import befa
    from pipeline.job.params import PipelineParams

    params = inspect.signature(befa.fn).parameters
    assert list(params) == [*PipelineParams.model_fields, "use_registered"]
    for name, field in PipelineParams.model_fields.items():
        assert params[name].default == field.get_default(call_default_factory=True), name
        assert params[name].annotation == field.annotation, name
    assert set(parameter_schema(befa).properties) == set(params)  # the deployment's form
    assert "study" not in params  # the reserved, never implemented flag is gone
    validated = befa.validate_parameters({"epochs": "5", "encoder": "minilm"})
    assert (
        validated["epochs"] == 5
        and PipelineParams.model_validate({k: v for k, v in validated.items() if k != "use_registered"}).epochs == 5
    )
