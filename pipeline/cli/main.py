"""The ``befa`` command line: the app and its command groups, in one place.

Each command is a thin shell over a plain function of the core (it parses, calls the
library and prints), so everything the CLI does can also be called from Python, from
tests and from Prefect flows. Command groups live in ``data``, ``features``, ``train``,
``job`` and ``prefect`` (the only one that imports ``flows``).

A group's module is imported only when one of its commands runs (:class:`LazyCommands`).
The library keeps its imports at the top of its files, so importing every group would
pull in torch, the models and the encoders: about 7 s on 2 cores before ``befa --help`` or
``befa datasets`` could print a line. :data:`COMMANDS` therefore names each command's
module and its one-line help (a test checks both against the modules).

Storage failures an operator must act on (``storage.errors``: a damaged feature-store file,
a full disk) are reported here for every command, as one line naming the file, exit code 2.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from pipeline.cli.common import console
from pipeline.cpu_threads import bound_omp_spin
from pipeline.quiet import quiet_known_warnings
from storage.errors import DamagedFile, DiskFull

# at the entry point, before any command module imports torch or an encoder
bound_omp_spin()
quiet_known_warnings()

# command -> (module that defines it, the first line of its docstring: what `befa --help` shows)
COMMANDS: dict[str, tuple[str, str]] = {
    "datasets": (
        "pipeline.cli.data",
        "List the datasets befa knows, their public upstream and whether a local copy is present.",
    ),
    "download": (
        "pipeline.cli.data",
        "Download a dataset from its public upstream into the datasets root and verify it (needs internet).",
    ),
    "fetch-images": (
        "pipeline.cli.fetch",
        "Download a catalog's image URLs into the local image cache (the only step that uses the network).",
    ),
    "ingest": (
        "pipeline.cli.data",
        "Import and validate a catalog; writes items/interactions Parquet and an ingest report.",
    ),
    "split": (
        "pipeline.cli.data",
        "Split a catalog's interactions into train/valid/test and store the split with the catalog.",
    ),
    "export-mmrec": (
        "pipeline.cli.features",
        "Export a catalog, a split and features in the MMRec toolbox format (.inter + .npy).",
    ),
    "stats": ("pipeline.cli.data", "Print statistics of an ingested catalog and its stored splits."),
    "extract": (
        "pipeline.cli.features",
        "Embed a catalog's images/texts with a frozen encoder into the feature store (incremental).",
    ),
    "train": ("pipeline.cli.train", "Train one model (optionally +BeFA) to early stopping and print its test metrics."),
    "evaluate": ("pipeline.cli.train", "Reload a run's best checkpoint and recompute its valid and test metrics."),
    "map": (
        "pipeline.cli.mapping",
        "Fit content mappers to a trained run so cold and new items are scored from their content.",
    ),
    "recommend": (
        "pipeline.cli.serving",
        "Write top-K recommendations per user from a trained run (Parquet + manifest).",
    ),
    "similar": ("pipeline.cli.serving", "Write item-to-item neighbours from a trained run (model or content space)."),
    "run": (
        "pipeline.cli.job",
        "Run the whole pipeline in this process, without a Prefect server (same steps as befa/full-pipeline).",
    ),
    "watch": (
        "pipeline.cli.job",
        "Check registered catalogs for changes and re-extract only what changed (no Prefect event).",
    ),
    "status": (
        "pipeline.cli.status",
        "Say per catalog its current version, the one the served recommendations came from, and if they are older.",
    ),
    "study": (
        "pipeline.cli.job",
        "Base vs +BeFA across models and seeds, t sweep, modality ablation, sparsity sweep; writes report.html.",
    ),
    "gc": (
        "pipeline.cli.maintenance",
        "Remove temporary files left by killed writes under $BEFA_HOME and the feature store.",
    ),
    "store": (
        "pipeline.cli.store",
        "Check the feature store's files against its records (befa store check); --repair moves damaged ones aside.",
    ),
    "serve": (
        "pipeline.cli.prefect",
        "Serve befa/full-pipeline and befa-watch/catalog-watch (+ retrain trigger) to a Prefect server.",
    ),
    "server": (
        "pipeline.cli.prefect",
        "Start a local Prefect server (127.0.0.1, SQLite under $BEFA_HOME/prefect, no analytics) "
        "and the serve process.",
    ),
    "demo": (
        "pipeline.cli.prefect",
        "The main job on the default catalog through the `befa` flow (what `make demo` runs).",
    ),
}


@functools.cache
def group_of(module: str) -> Any:
    """The click command(s) of one command-group module, built by Typer (its vendored click)."""
    sub = typer.Typer(add_completion=False)
    importlib.import_module(module).commands.add_to(sub)
    return typer.main.get_command(sub)


def load_command(name: str) -> Any:
    external = importlib.import_module(COMMANDS[name][0]).commands.external_command(name)
    if external is not None:  # built by its own typer app (the Prefect commands, in flows)
        return external
    group = group_of(COMMANDS[name][0])
    # a module with a single command comes back as that command, not as a group
    return group.get_command(None, name) if isinstance(group, TyperGroup) else group


class LazyCommands(TyperGroup):
    """The befa group: lists :data:`COMMANDS` and loads a command's module when it is asked for
    by name; the top-level help shows the recorded one-line help instead of loading them all."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if self._listing:
            return TyperCommand(cmd_name, help=COMMANDS[cmd_name][1])
        return load_command(cmd_name)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (DamagedFile, DiskFull) as exc:  # the file and the fix, not a traceback
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(code=2) from None

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="befa",
    cls=LazyCommands,
    help="Behaviour-driven feature adaptation for multimedia recommendation: "
    "ingest catalogs, extract frozen-encoder features, train graph recommenders with and without BeFA.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def befa() -> None:
    """Behaviour-driven feature adaptation for multimedia recommendation: ingest catalogs, extract
    frozen-encoder features, train graph recommenders with and without BeFA."""


if __name__ == "__main__":  # pragma: no cover
    app()
