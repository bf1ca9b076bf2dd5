"""Prefect commands: ``befa serve``, ``befa server``, ``befa demo``. The only place in
``pipeline`` that imports ``flows``: inside each command, so the rest of the CLI starts
without Prefect.
"""

from __future__ import annotations

import typer

from pipeline.cli.common import CommandGroup

commands = CommandGroup()


@commands.command("serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve_cmd(ctx: typer.Context) -> None:
    """Serve befa/full-pipeline and befa-watch/catalog-watch (+ retrain trigger) to a Prefect server.

    Options are those of `python -m flows.serve --help` (--interval, --cron, --no-schedule, --no-retrain-on-change, --catalog)."""
    from flows.serve import main  # lazy: only these commands load Prefect

    main(list(ctx.args))


@commands.command("server", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def server_cmd(ctx: typer.Context) -> None:
    """Start a local Prefect server (127.0.0.1, SQLite under $BEFA_HOME/prefect, analytics off) and the serve process.

    Options are those of `python -m flows.server --help` (--port, --no-serve, ...). Ctrl-C stops both."""
    from flows.server import main  # lazy: only these commands load Prefect

    raise typer.Exit(main(list(ctx.args)) or 0)


@commands.command("demo")
def demo_cmd(
    epochs: int = typer.Option(30, help="Max epochs per model (capped so the demo fits 15 minutes on 2 cores)."),
    patience: int = typer.Option(5, help="Early-stopping patience."),
) -> None:
    """The main job on the default catalog through the `befa` flow (what `make demo` runs).

    Ingest, extract, train LightGCN/FREEDOM/MGCN with and without BeFA, evaluate, report."""
    from flows.demo import main  # lazy: only these commands load Prefect

    raise typer.Exit(main(["--epochs", str(epochs), "--patience", str(patience)]))
