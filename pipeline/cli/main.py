"""The ``befa`` command line: the app and its command groups, in one place.

Each command is a thin shell over a plain function of the core (it parses, calls the
library and prints), so everything the CLI does can also be called from Python, from
tests and from Prefect flows. Command groups live in ``data``, ``features``, ``train``,
``job`` and ``prefect`` (the only one that imports ``flows``).
"""

from __future__ import annotations

import typer

from pipeline.cli import data, features, job, prefect, train

app = typer.Typer(
    name="befa",
    help="Behaviour-driven feature adaptation for multimedia recommendation: "
    "ingest catalogs, extract frozen-encoder features, train graph recommenders with and without BeFA.",
    no_args_is_help=True,
    add_completion=False,
)
for group in (data, features, train, job, prefect):
    group.commands.add_to(app)


if __name__ == "__main__":  # pragma: no cover
    app()
