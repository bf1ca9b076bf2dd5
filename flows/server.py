"""Start a local Prefect server and the serve process together; Ctrl-C stops both.

    python -m flows.server                    # http://127.0.0.1:4200, DB under $BEFA_HOME/prefect
    python -m flows.server --port 4300 -- --cron "0 3 * * *"    # after --: flows.serve options
    befa server --port 4300 --cron "0 3 * * *"                  # the same (serve options may be mixed in)

- The server listens on 127.0.0.1 only, with its SQLite database and Prefect home under
  the befa storage root (``$BEFA_HOME/prefect/``), telemetry off
  (``PREFECT_SERVER_ANALYTICS_ENABLED=false``, ``DO_NOT_TRACK=1``).
- When ``/api/health`` answers, ``python -m flows.serve`` starts with ``PREFECT_API_URL``
  pointing at it.
- Ctrl-C (SIGINT) or SIGTERM: the serve process is interrupted first (it pauses its
  schedules and lets Prefect mark its runs), then the server; each gets 20 s before it is
  killed. Each child runs in its own process group, so only processes started here are
  signalled.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from flows.serve import parser as serve_parser
from pipeline.settings import get_settings

QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def prefect_env(home: Path, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the server and the serve process: local DB under ``home``, no telemetry."""
    env = dict(os.environ if base is None else base)
    prefect_home = home / "prefect"
    prefect_home.mkdir(parents=True, exist_ok=True)
    env.update(QUIET_ENV)
    env["BEFA_HOME"] = str(home)
    env["PREFECT_HOME"] = str(prefect_home)
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}"
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def wait_healthy(api_url: str, timeout_s: float = 90.0, proc: subprocess.Popen | None = None, cancelled=None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cancelled is not None and cancelled():
            raise RuntimeError("interrupted while waiting for the prefect server")
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode} before becoming healthy")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {api_url} not healthy after {timeout_s:.0f} s")


def start_server(env: dict[str, str], port: int, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else None
    return subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True,
    )


def start_serve(env: dict[str, str], serve_args: Sequence[str] = (), log: Path | None = None, cwd: str | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else None
    return subprocess.Popen(
        [sys.executable, "-m", "flows.serve", *serve_args],
        env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True, cwd=cwd,
    )


def stop(proc: subprocess.Popen | None, grace_s: float = 20.0) -> int | None:
    """SIGINT the child's process group, then SIGTERM, then SIGKILL; returns its exit code."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flows.server", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=4200)
    p.add_argument("--home", default=None, help="befa storage root (default $BEFA_HOME or ./.befa)")
    p.add_argument("--no-serve", action="store_true", help="start only the server")
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for the server's health check")
    return p


def split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(this command's options, the serve process's options).

    Serve options go after ``--`` or mixed in: ``befa server --cron "0 3 * * *"`` reaches
    here without its ``--`` (click drops it). They are checked now, so a typo fails
    before anything starts."""

    argv = list(argv)
    rest: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1 :]
    p = parser()
    args, unknown = p.parse_known_args(argv)
    serve_args = unknown + rest
    _, left = serve_parser().parse_known_args(serve_args)
    if left:
        p.error(f"unrecognized arguments: {' '.join(left)} (neither an option of this command nor of python -m flows.serve)")
    return args, serve_args


def main(argv: Sequence[str] | None = None) -> int:
    args, serve_args = split_argv(sys.argv[1:] if argv is None else argv)

    home = get_settings(home=args.home).home
    env = prefect_env(home, args.port)
    api = env["PREFECT_API_URL"]
    server = serve = None
    stopping = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"starting prefect server on {api} (database {env['PREFECT_API_DATABASE_CONNECTION_URL']})", flush=True)
        server = start_server(env, args.port)
        try:
            wait_healthy(api, timeout_s=args.startup_timeout, proc=server, cancelled=lambda: stopping)
        except (TimeoutError, RuntimeError) as exc:
            print(f"error: {exc}", flush=True)
            return 1
        print(f"server healthy; UI at http://127.0.0.1:{args.port}", flush=True)
        if not args.no_serve:
            serve = start_serve(env, serve_args)
            print("serving befa/full-pipeline and befa-watch/catalog-watch; Ctrl-C to stop", flush=True)
        while not stopping:
            if server.poll() is not None:
                print(f"prefect server exited ({server.returncode})", flush=True)
                break
            if serve is not None and serve.poll() is not None:
                print(f"serve process exited ({serve.returncode})", flush=True)
                break
            time.sleep(0.5)
    finally:
        print("stopping ...", flush=True)
        stop(serve)
        stop(server)
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
