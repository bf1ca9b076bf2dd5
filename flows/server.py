"""Start a local Prefect server and the serve process together; Ctrl-C stops both.

    befa server                               # http://127.0.0.1:4200, DB under $BEFA_HOME/prefect
    befa server --port 4300 --cron "0 3 * * *"                  # serve options are passed on
    python -m flows.server --port 4300 -- --cron "0 3 * * *"    # the same; serve options may also follow --

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

import copy
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence

import typer

from flows.serve import CatalogOpt, Cron, Interval, NoSchedule, RetrainOnChange, schedule_of, serve_argv
from flows.serve import app as serve_app
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
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        start_new_session=True,
    )


def start_serve(
    env: dict[str, str], serve_args: Sequence[str] = (), log: Path | None = None, cwd: str | None = None
) -> subprocess.Popen:
    out = open(log, "ab") if log else None
    return subprocess.Popen(
        [sys.executable, "-m", "flows.serve", *serve_args],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        start_new_session=True,
        cwd=cwd,
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


DEFAULT_PORT = 4200


def _check_serve_args(args: list[str] | None) -> list[str]:
    """Serve options after ``--``, checked now (a typo fails before anything starts)."""
    args = list(args or [])
    if args:
        command = typer.main.get_command(serve_app)
        try:
            command.make_context("python -m flows.serve", list(args))
        except typer.TyperException as exc:  # click's usage errors (typer vendors click)
            raise typer.BadParameter(f"not options of python -m flows.serve: {' '.join(args)} ({exc})") from None
    return args


def _passed_on(option: Any) -> Any:
    """A serve option, shown in its own panel of this command's help."""
    option = copy.copy(option)
    option.rich_help_panel = "Serve options (passed on to the serve process)"
    return option


app = typer.Typer(add_completion=False)


@app.command(name="server")
def server_command(
    ctx: typer.Context,
    port: int = typer.Option(DEFAULT_PORT, help="Port of the Prefect server (on 127.0.0.1)."),
    home: Optional[str] = typer.Option(None, help="befa storage root (default $BEFA_HOME or ./.befa)."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Start only the server."),
    startup_timeout: float = typer.Option(180.0, help="Seconds to wait for the server's health check."),
    interval: float = _passed_on(Interval),
    cron: Optional[str] = _passed_on(Cron),
    no_schedule: bool = _passed_on(NoSchedule),
    retrain: bool = _passed_on(RetrainOnChange),
    catalogs: list[str] = _passed_on(CatalogOpt),
    after: Optional[list[str]] = typer.Argument(
        None,
        metavar="-- SERVE-OPTIONS",
        callback=_check_serve_args,
        show_default=False,
        help="Serve options may also follow --.",
    ),
) -> None:
    """Start a local Prefect server (127.0.0.1, SQLite under $BEFA_HOME/prefect, no analytics) and the serve process.

    The serve options are passed on to the serve process (`befa serve`); they may also follow `--`.
    Ctrl-C stops both."""
    schedule_of(ctx, interval, cron, no_schedule)  # mutually exclusive: checked before anything starts
    raise typer.Exit(run(port, home, no_serve, startup_timeout, serve_argv(ctx) + list(after or [])))


def run(
    port: int = DEFAULT_PORT,
    home: str | None = None,
    no_serve: bool = False,
    startup_timeout: float = 180.0,
    serve_args: Sequence[str] = (),
) -> int:
    """The server, then the serve process with ``serve_args``, until Ctrl-C or SIGTERM; the exit code."""
    home_dir = get_settings(home=home).home
    env = prefect_env(home_dir, port)
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
        server = start_server(env, port)
        try:
            wait_healthy(api, timeout_s=startup_timeout, proc=server, cancelled=lambda: stopping)
        except (TimeoutError, RuntimeError) as exc:
            print(f"error: {exc}", flush=True)
            return 1
        print(f"server healthy; UI at http://127.0.0.1:{port}", flush=True)
        if not no_serve:
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
    app(prog_name="python -m flows.server")
