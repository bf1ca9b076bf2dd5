"""Feature extraction on a separate Ray cluster through Ray Client (``cluster="ray://host:port"``).

The test starts a real Ray head with ``ray start --head --block`` (the venv's ``ray``, 1 CPU,
no dashboard, its own temp dir, free ports, token authentication with a token made here,
so nothing under ``~/.ray`` is read or written), then runs the flow's extraction step
(:func:`pipeline.job.run.extract_step`, which calls
:func:`pipeline.features.ray_extract.extract_features_ray`) in a separate Python process connected
as a Ray Client to ``ray://127.0.0.1:<port>``, and checks the vectors equal a local
extraction's. A separate process because a Ray Client is per process and Ray caches its
authentication settings per process (another test may have run ``ray.init`` here).

Ray itself listens on the machine's interfaces (GCS and raylet bind every interface; Ray
turns ``--node-ip-address=127.0.0.1`` into the machine's address); the client connects
over loopback and the cluster refuses requests without the token.

Teardown stops only what this test started: SIGTERM to the ``ray start`` process group,
then SIGKILL to every process left in its session (Ray's detached actors get their own
process group but stay in the session). Not ``ray stop --force``: that kills every Ray
process of the machine, other tests' and benchmarks' included.

No GPU here: the GPU actor path (``num_gpus=1`` per actor) is not exercised.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("grpc", reason="Ray Client needs grpcio (the ray[client] extra)")

from pipeline.cluster import _init_with_retries
from pipeline.data.ingest import ingest  # noqa: E402
from pipeline.features.extract import extract_features
from pipeline.features.load import load_features
from pipeline.job.train_batch import train_runs
from pipeline.settings import get_settings  # noqa: E402
from storage.feature_store import FeatureStore  # noqa: E402
from tests.flows_data import make_small_catalog  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
SPEC = "imagebind:tiny@random"
CATALOG = "ml-ray-client"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _session_members(sid: int) -> list[int]:
    """Pids of the processes in session ``sid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session
            out.append(int(stat.parent.name))
    return out


def _stop_cluster(head: subprocess.Popen) -> list[int]:
    """Stop the head started by this test; returns the pids still alive afterwards (expected none)."""
    sid = head.pid  # start_new_session: the head leads its own session
    if head.poll() is None:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=5)  # `ray start --block` often outlives SIGTERM; the session sweep below ends it
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    for pid in _session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if head.poll() is None:
        head.wait(timeout=10)
    deadline = time.monotonic() + 10
    while (
        left := [
            p
            for p in _session_members(sid)
            if Path(f"/proc/{p}/stat").exists() and " Z " not in Path(f"/proc/{p}/stat").read_text()
        ]
    ) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture(scope="module")
def ray_head():
    if not RAY.exists():
        pytest.skip(f"no ray executable next to {sys.executable}")
    temp = Path(tempfile.mkdtemp(prefix="rayc", dir="/tmp"))  # short: Ray's unix socket paths must stay < 108 chars
    gcs, client, agent, metrics = _free_ports(4)
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
    )
    log = temp / "ray-start.log"
    cmd = [
        str(RAY),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--metrics-export-port={metrics}",
        "--num-cpus=1",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp / 't'}",
    ]
    with open(log, "wb") as out:
        head = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(temp)
        )
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"ray start did not come up (exit {head.poll()}):\n{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.5)
        while True:  # the client server starts a moment after the runtime
            try:
                socket.create_connection(("127.0.0.1", client), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"Ray Client server not listening on 127.0.0.1:{client}")
                time.sleep(0.5)
        yield {"address": f"ray://127.0.0.1:{client}", "env": env, "temp": temp}
    finally:
        left = _stop_cluster(head)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


def _ray_logs(temp: Path, chars: int = 2500) -> str:
    """Tails of the cluster's client-server and worker error logs, for a failure message."""
    logs = sorted((temp / "t").glob("session_2*/logs/*.err"))  # not session_latest, a link to the same folder
    picked = [p for p in logs if p.name.startswith(("ray_client_server", "raylet", "gcs_server")) or "worker" in p.name]
    return "".join(f"\n--- {p.name} ---\n{p.read_text(errors='replace')[-chars:]}" for p in picked if p.stat().st_size)


CLIENT = textwrap.dedent(
    """
    import json, sys
    from pipeline.job.params import validate_params
    from pipeline.job.steps import extract_step
    from pipeline.settings import get_settings

    home, datasets_root, catalog, spec, address = sys.argv[1:]
    settings = get_settings(home=home, datasets_root=datasets_root)
    params = validate_params(
        dict(dataset=catalog, encoder=spec, cluster=address, ingest="never", extract_batch_size=8), settings
    )
    summary = extract_step(params, settings, str(settings.catalog_dir(catalog)))
    print("RESULT " + summary.model_dump_json())
    """
)


def test_extraction_through_ray_client_matches_local(ray_head, tmp_path, datasets_root):
    cat = make_small_catalog(tmp_path / "src", datasets_root, n_items=24, n_users=60)
    home = tmp_path / "home"
    settings = get_settings(home=home, datasets_root=datasets_root, feature_store=str(home / "features"))
    catalog, _ = ingest("generic", settings, name=CATALOG, **cat.ingest_options())

    env = dict(ray_head["env"])
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    # a loaded 2-core machine can take longer than Ray's default ~35 s for the client's
    # first handshake (the proxy starts a server process per client)
    env.setdefault("RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S", "10")
    env.setdefault("RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S", "60")
    env.pop("BEFA_FEATURE_STORE", None)  # default: <home>/features, as settings above
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, str(settings.home), str(datasets_root), CATALOG, SPEC, ray_head["address"]],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:] + _ray_logs(ray_head["temp"])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    dist = json.loads(line[len("RESULT ") :])
    assert dist["backend"] == f"ray ({ray_head['address']})"

    local_store = FeatureStore(tmp_path / "local")
    local = extract_features(catalog, SPEC, local_store, batch_size=8, progress=False)
    assert set(dist["modalities"]) == set(local.modalities) == {"image", "text"}
    for m, a in local.modalities.items():
        b = dist["modalities"][m]
        assert (b["encoded"], b["skipped"], b["failed"]) == (a.encoded, 0, 0) == (24, 0, 0)
        assert b["fingerprint"] == a.fingerprint and b["random_init"]

    fps = {m: s.fingerprint for m, s in local.modalities.items()}
    ray_store = FeatureStore(settings.feature_store)
    local, remote = load_features(catalog, local_store, fps), load_features(catalog, ray_store, fps)
    fa, ma, fb, mb = local.features, local.masks, remote.features, remote.masks
    for m in fps:
        assert bool(ma[m].all()) and bool(mb[m].all())
        np.testing.assert_allclose(fb[m].numpy(), fa[m].numpy(), rtol=0, atol=1e-6)


class _FlakyRay:
    """Stands in for the ``ray`` module: the first ``fails`` handshakes fail as the Ray Client
    proxy's does when its per-client server dies at birth."""

    def __init__(self, fails: int, exc: type[BaseException] = ConnectionAbortedError):
        self.fails, self.exc, self.inits, self.shutdowns = fails, exc, 0, 0

    def init(self, **_kw):
        self.inits += 1
        if self.inits <= self.fails:
            raise self.exc("Initialization failure from server")

    def shutdown(self):
        self.shutdowns += 1


def test_client_handshake_failure_is_retried(capsys):
    fake = _FlakyRay(fails=2)
    _init_with_retries(fake, "ray://127.0.0.1:1", wait_s=0)
    assert (fake.inits, fake.shutdowns) == (3, 2)
    assert "retry 2/2" in capsys.readouterr().out

    always = _FlakyRay(fails=99)
    with pytest.raises(ConnectionAbortedError):
        _init_with_retries(always, "ray://127.0.0.1:1", wait_s=0)
    assert always.inits == 3

    other = _FlakyRay(fails=1, exc=ValueError)  # not a connection problem: raised at once
    with pytest.raises(ValueError):
        _init_with_retries(other, "ray://127.0.0.1:1", wait_s=0)
    assert other.inits == 1

    local = _FlakyRay(fails=1)  # 'auto' (no Ray Client proxy): no retry
    with pytest.raises(ConnectionAbortedError):
        _init_with_retries(local, "auto", wait_s=0)
    assert local.inits == 1


def test_the_flows_task_runner_uses_the_connection_made_with_retries(monkeypatch):
    """prefect-ray's RayTaskRunner calls ray.init itself, without the handshake retries; the
    flow connects first (``connected``), so the runner finds Ray up and uses that connection."""
    import contextlib

    import prefect_ray

    from flows import pipeline_flow

    order: list[str] = []

    @contextlib.contextmanager
    def fake_connected(cluster):
        order.append(f"connect {cluster}")
        yield
        order.append("disconnect")

    class FakeRunner:
        def __init__(self, address, init_kwargs):
            order.append(f"runner {address}")

        def __enter__(self):
            order.append("runner enter")
            return self

        def __exit__(self, *exc):
            order.append("runner exit")

        def submit(self, task, parameters):
            return type("Done", (), {"result": lambda self, m=parameters["job"].model: f"trained {m}"})()

    monkeypatch.setattr(pipeline_flow, "connected", fake_connected)
    monkeypatch.setattr(prefect_ray, "RayTaskRunner", FakeRunner)
    monkeypatch.setattr(pipeline_flow, "run_options", lambda cpus, device: {})
    params = type("Params", (), {"cluster": "ray://head:10001", "cpus_per_run": 1, "device": "cpu"})()
    jobs = [type("Job", (), {"model": m, "adapter": "none", "run_dir": f"runs/{m}"})() for m in ("lightgcn", "bm3")]
    runs = train_runs(
        object(), None, params, None, "catalog", "split.parquet", None, jobs, pipeline_flow.flow_executor(params)
    )
    assert runs == ["trained lightgcn", "trained bm3"]
    assert order == ["connect ray://head:10001", "runner ray://head:10001", "runner enter", "runner exit", "disconnect"]
