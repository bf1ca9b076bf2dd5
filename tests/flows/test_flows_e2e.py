"""End to end through the real CLI: a Prefect server, the serve process, deployment runs.

In a temporary PREFECT_HOME and BEFA_HOME:

1. ``prefect server start`` on a free loopback port, ``python -m flows.serve`` beside it;
2. ``prefect deployment run befa/full-pipeline --watch`` on a small catalog (tiny random
   encoder, 1 epoch): the run completes, the table and markdown artifacts exist in the
   API, the run folder holds metrics and plots;
3. the catalog changes (two items added, one poster edited); ``prefect deployment run
   befa-watch/catalog-watch --watch``: exactly 3 items re-encoded, and the event trigger
   creates (and completes) a new ``befa/full-pipeline`` run; a second watch with no
   change creates none.

Every process started here is stopped at the end (its own process group).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from flows.server import prefect_env, start_serve, start_server, stop, wait_healthy
from pipeline.data.catalog import Catalog
from tests.flows_data import make_small_catalog

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CATALOG = "ml-e2e"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, datasets_root):
    root = tmp_path_factory.mktemp("e2e")
    home = root / "home"
    port = free_port()
    env = prefect_env(home, port)
    env.update(
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        BEFA_DATASETS_ROOT=str(datasets_root),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.pop("BEFA_FEATURE_STORE", None)
    cat = make_small_catalog(root / "source", datasets_root)
    server = serve = None
    try:
        server = start_server(env, port, log=root / "server.log")
        wait_healthy(env["PREFECT_API_URL"], timeout_s=120, proc=server)
        serve = start_serve(env, ["--no-schedule"], log=root / "serve.log", cwd=str(REPO))
        _wait_for(lambda: _deployment_ids(env) is not None, 120, "deployments registered", root / "serve.log")
        yield {"env": env, "home": home, "cat": cat, "root": root}
    finally:
        stop(serve)
        stop(server)


def _api(env, coro_fn):
    """Run ``coro_fn(client)`` against the test server."""
    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(api=env["PREFECT_API_URL"]) as client:
            return await coro_fn(client)

    return asyncio.run(go())


def _deployment_ids(env):
    async def q(client):
        try:
            a = await client.read_deployment_by_name("befa/full-pipeline")
            b = await client.read_deployment_by_name("befa-watch/catalog-watch")
        except Exception:  # noqa: BLE001 - not registered yet
            return None
        return a.id, b.id

    return _api(env, q)


def _pipeline_runs(env):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    pipeline_id, _ = _deployment_ids(env)

    async def q(client):
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[pipeline_id]))
        )

    return _api(env, q)


def _wait_for(pred, timeout_s, what, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def _log_tail(stack, n=4000) -> str:
    log = stack["root"] / "serve.log"
    return "\n--- serve.log ---\n" + (log.read_text()[-n:] if log.exists() else "")


def _cli(env, *args, timeout=480):
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


def test_deployment_run_completes_with_artifacts_and_plots(stack):
    env, cat = stack["env"], stack["cat"]
    params = {
        "dataset": CATALOG,
        "importer": "generic",
        "ingest_options": cat.ingest_options(),
        "models": ["lightgcn", "freedom"],
        "adapters": ["none", "befa"],
        "epochs": 1,
        "patience": 1,
        "model_overrides": {"*": {"embedding_dim": 16}},
        "run_name": "e2e-first",
        "verify_checkpoints": False,
    }
    proc = _cli(
        env,
        "deployment",
        "run",
        "befa/full-pipeline",
        "--watch",
        "--watch-interval",
        "2",
        "--params",
        json.dumps(params),
        "--param",
        "encoder=imagebind:tiny@random",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + _log_tail(stack)
    (run,) = _pipeline_runs(env)
    assert run.state.is_completed()

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def arts(client):
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["befa-metrics-ml-e2e", "befa-report-ml-e2e", "befa-recommendations-ml-e2e"])
            )
        )

    found = {a.key: a for a in _api(env, arts)}
    assert found["befa-metrics-ml-e2e"].type == "table" and found["befa-report-ml-e2e"].type == "markdown"
    assert found["befa-recommendations-ml-e2e"].type == "table"
    assert all(a.flow_run_id == run.id for a in found.values())
    folder = stack["home"] / "runs" / "pipelines" / "e2e-first"
    for name in (
        "metrics.parquet",
        "metrics.json",
        "curves.png",
        "base_vs_befa.png",
        "report.md",
        "recommendations.parquet",
        "recommendations.json",
    ):
        assert (folder / name).stat().st_size > 0, name


def test_catalog_change_reencodes_three_items_and_triggers_retraining(stack):
    env, cat, home = stack["env"], stack["cat"], stack["home"]
    if not (home / "watch" / "catalogs.json").exists():
        pytest.skip("needs the first test's pipeline run (it registers the catalog)")
    before = len(_pipeline_runs(env))
    recs_before = json.loads((home / "runs" / "pipelines" / "e2e-first" / "recommendations.json").read_text())[
        "catalog_fingerprint"
    ]
    added = cat.add_items(2)
    edited = pd.read_csv(cat.items, dtype=str)["item_id"].iloc[0]
    cat.replace_poster(edited, with_poster_of=cat.spare_ids[0])

    proc = _cli(env, "deployment", "run", "befa-watch/catalog-watch", "--watch", "--watch-interval", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + _log_tail(stack)
    last = json.loads((home / "watch" / "state" / f"{CATALOG}.json").read_text())["last"]
    assert last["changed"] and sorted(last["items_reencoded"]) == sorted([*added, edited])
    assert last["encoded"] == {"image": 3, "text": 2}

    runs = _wait_for(
        lambda: (r := _pipeline_runs(env)) and len(r) > before and r,
        90,
        "a triggered pipeline run",
        stack["root"] / "serve.log",
    )
    assert len(runs) == before + 1
    new = next(r for r in runs if r.parameters.get("use_registered"))
    assert new.parameters["dataset"] == CATALOG
    assert new.created_by is not None and new.created_by.type == "AUTOMATION"

    def finished():
        (r,) = [x for x in _pipeline_runs(env) if x.id == new.id]
        return r if r.state.is_final() else None

    done = _wait_for(finished, 300, "the triggered run to finish", stack["root"] / "serve.log")
    assert done.state.is_completed(), done.state.message
    # the retrain refreshed the recommendations: the newest file was made from the changed catalog
    newest = max((home / "runs" / "pipelines").glob("*/recommendations.json"), key=lambda p: p.stat().st_mtime)
    manifest = json.loads(newest.read_text())
    assert manifest["catalog_fingerprint"] == Catalog.load(home / "catalogs" / CATALOG).fingerprint() != recs_before

    # no change: the watch emits nothing, so no new pipeline run
    proc = _cli(env, "deployment", "run", "befa-watch/catalog-watch", "--watch", "--watch-interval", "2")
    assert proc.returncode == 0
    last = json.loads((home / "watch" / "state" / f"{CATALOG}.json").read_text())["last"]
    assert not last["changed"]
    time.sleep(10)  # what the trigger would need to act on an event (it acts within ~1-2 s)
    assert len(_pipeline_runs(env)) == before + 1


def test_readme_encoder_swap_run_keeps_both_encoders_features(stack):
    """The README's ``prefect deployment run befa/full-pipeline --watch --param encoder=minilm
    --param epochs=50``, as written there (read from README.md) but with ``epochs=1`` and
    ``--params`` pointing it at this test's small catalog: the run uses MiniLM for that
    run only, its report and artifacts name it, and the store keeps the first run's
    features beside MiniLM's (switching back encodes nothing)."""
    from pipeline.features.extract import extract_features
    from storage.feature_store import FeatureStore
    from storage.keys import FeatureSetKey
    from tests.cli.test_readme_commands import COMMANDS

    env, home = stack["env"], stack["home"]
    pipelines = home / "runs" / "pipelines"
    if not (pipelines / "e2e-first" / "summary.json").exists():
        pytest.skip("needs the first test's pipeline run (the other encoder's features)")
    first = json.loads((pipelines / "e2e-first" / "summary.json").read_text())
    first_spec = json.loads((pipelines / "e2e-first" / "params.json").read_text())["encoder"]
    first_fps = {m: f["fingerprint"] for m, f in first["extract"]["modalities"].items()}

    readme = next(c for c in COMMANDS if c.kind == "code" and "--param encoder=minilm" in c.text)
    tokens = ["epochs=1" if t.startswith("epochs=") else t for t in readme.tokens]
    assert tokens[:4] == ["prefect", "deployment", "run", "befa/full-pipeline"] and "--watch" in tokens
    small = {
        "dataset": CATALOG,
        "models": ["freedom"],
        "adapters": ["none", "befa"],
        "patience": 1,
        "model_overrides": {"*": {"embedding_dim": 16}},
        "run_name": "e2e-minilm",
        "verify_checkpoints": False,
    }
    proc = _cli(env, *tokens[1:], "--watch-interval", "2", "--params", json.dumps(small))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + _log_tail(stack)
    (run,) = [r for r in _pipeline_runs(env) if r.parameters.get("run_name") == "e2e-minilm"]
    assert run.state.is_completed() and run.parameters["encoder"] == "minilm" and run.parameters["epochs"] == 1

    folder = pipelines / "e2e-minilm"
    summary = json.loads((folder / "summary.json").read_text())
    mods = summary["extract"]["modalities"]
    assert set(mods) == {"text"} and mods["text"]["spec"] == "minilm" and not mods["text"]["random_init"]
    minilm_fp = mods["text"]["fingerprint"]
    assert minilm_fp != first_fps["text"]
    assert all(r["epochs_run"] == 1 for r in summary["runs"])
    report = (folder / "report.md").read_text()
    assert "`minilm`" in report and minilm_fp in report

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def arts(client):
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )

    found = {a.key: a for a in _api(env, arts)}
    assert set(found) >= {"befa-metrics-ml-e2e", "befa-report-ml-e2e"}
    assert "`minilm`" in found["befa-report-ml-e2e"].data and minilm_fp in found["befa-report-ml-e2e"].data
    table = found["befa-metrics-ml-e2e"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {row["model"] for row in rows} == {"freedom", "mostpop"}  # MostPop always runs, as the floor

    # side by side: both encoders' features of every current item, under their own fingerprints
    store = FeatureStore(home / "features")
    catalog = Catalog.load(home / "catalogs" / CATALOG)
    keys = catalog.content_keys("text")
    text_keys = {(str(i), str(h)) for i, h in zip(keys["item_id"], keys["content_hash"])}
    for fp in (first_fps["text"], minilm_fp):
        assert store.current_snapshot(FeatureSetKey(CATALOG, fp, "text")) is not None
        assert text_keys <= store.existing_keys(FeatureSetKey(CATALOG, fp, "text"))
    assert store.current_snapshot(FeatureSetKey(CATALOG, first_fps["image"], "image")) is not None
    back = extract_features(catalog, first_spec, store, progress=False)
    assert {m: s.encoded for m, s in back.modalities.items()} == {"image": 0, "text": 0}
    assert back.modalities["text"].skipped == len(text_keys)
