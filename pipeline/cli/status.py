"""``befa status``: per catalog, its current version and the version the served
recommendations were made from, saying plainly when they are older than the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import CommandGroup, Home, console, fail, settings_from
from pipeline.job.status import CatalogStatus, catalog_status, known_catalogs

commands = CommandGroup()


def status_lines(s: CatalogStatus) -> list[str]:
    lines = [f"{s.catalog}: {s.verdict()}"]
    if s.current is not None:
        lines.append(f"  catalog version   {s.current.label()}")
    if s.served is not None:
        run = f" ({s.served.served_run})" if s.served.served_run else ""
        lines.append(f"  served from       {s.served.catalog_version.label()}, finished {s.served.finished_at}")
        lines.append(f"  pipeline run      {s.served.pipeline_folder}{run}")
        lines.append(f"  recommendations   {s.served.recommendations or 'none (recommend_k 0)'}")
    retrain = s.retrain_line()
    if retrain:
        lines.append(f"  retrain           {retrain}")
    if s.last_watch_at:
        lines.append(f"  last watch        {s.last_watch_at}: {s.last_watch}")
    elif s.registered:
        lines.append("  last watch        never (befa watch, or the catalog-watch deployment)")
    return lines


@commands.command("status")
def status_cmd(
    names: list[str] = typer.Argument(None, help="Catalogs to report on (default: every registered one)."),
    home: Optional[Path] = Home,
) -> None:
    """Say per catalog its current version, the one the served recommendations came from, and if they are older."""
    settings = settings_from(None, home)
    known = known_catalogs(settings)
    unknown = [n for n in names or [] if n not in known and not settings.catalog_dir(n).is_dir()]
    if unknown:
        fail(f"catalog {unknown[0]!r} is unknown here (known: {', '.join(known) or 'none'}; BEFA_HOME {settings.home})")
    if not names and not known:
        console.print("no catalog is registered: `befa run` registers the catalogs it runs on", markup=False)
        return
    for name in names or known:
        for line in status_lines(catalog_status(settings, name, known.get(name, False))):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
