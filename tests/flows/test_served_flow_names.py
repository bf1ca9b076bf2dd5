"""A served flow run loads its flow from the deployment's entrypoint: that name must be the flow
object, or Prefect wraps the bare function in a new flow named after it (the serve log said '-befa')."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

pytest.importorskip("prefect")

from prefect.flows import Flow, load_flow_from_entrypoint, load_function_and_convert_to_flow  # noqa: E402

from flows.pipeline_flow import befa  # noqa: E402
from flows.serve import build_deployments  # noqa: E402
from flows.watch_flow import watch  # noqa: E402
from pipeline.job.params import DEFAULT_ENCODER  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_each_deployment_entrypoint_loads_the_flow_itself():
    pipeline, watcher = build_deployments(interval_s=None)
    assert pipeline.entrypoint == "flows/pipeline_flow.py:befa" and watcher.entrypoint == "flows/watch_flow.py:watch"
    for deployment, flow, name in ((pipeline, befa, "befa"), (watcher, watch, "befa-watch")):
        # what the runner does for a served run (and what `prefect deployment run` starts), from the repo root
        for load in (load_function_and_convert_to_flow, load_flow_from_entrypoint):
            loaded = load(str(ROOT / deployment.entrypoint))
            assert isinstance(loaded, Flow) and loaded.name == name == flow.name
            assert loaded.should_validate_parameters == flow.should_validate_parameters
    assert befa.should_validate_parameters  # the served flow validates its parameters, as the in-process one
    assert {deployment.flow_name for deployment in (pipeline, watcher)} == {"befa", "befa-watch"}
    # the deployment's encoder parameter defaults to the one encoder every command defaults to
    assert (
        inspect.signature(befa.fn).parameters["encoder"].default == DEFAULT_ENCODER == "image=effnet:lite2,text=minilm"
    )
