"""Prefect commands: ``befa serve``, ``befa server``, ``befa demo``. The only place in
``pipeline`` that imports ``flows``: inside each command, so the rest of the CLI starts
without Prefect.

Each is the typer app of its ``flows`` module (``python -m flows.serve`` is the same
command), loaded only when the command is asked for, so its ``--help`` lists its options.
"""

from __future__ import annotations

from typing import Any

import typer

from pipeline.cli.common import CommandGroup

commands = CommandGroup()


@commands.external("serve")
def serve_cmd() -> Any:
    """Serve befa/full-pipeline and befa-watch/catalog-watch (+ retrain trigger) to a Prefect server."""
    from flows.serve import app  # lazy: only these commands load Prefect

    return typer.main.get_command(app)


@commands.external("server")
def server_cmd() -> Any:
    """Start a local Prefect server (127.0.0.1, SQLite under $BEFA_HOME/prefect, no analytics) and the serve process."""
    from flows.server import app  # lazy: only these commands load Prefect

    return typer.main.get_command(app)


@commands.external("demo")
def demo_cmd() -> Any:
    """The main job on the default catalog through the `befa` flow (what `make demo` runs)."""
    from flows.demo import app  # lazy: only these commands load Prefect

    return typer.main.get_command(app)
