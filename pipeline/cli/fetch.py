"""``befa fetch-images``: download a catalog's image URLs into the local image cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.cli.common import CommandGroup, Home, console, fail, settings_from
from pipeline.data.catalog import CatalogError
from pipeline.data.fetch import FetchOptions, fetch_images
from pipeline.data.fetch_catalog import catalog_image_refs, save_fetch_report
from pipeline.data.image_cache import ImageCache

commands = CommandGroup()


@commands.command("fetch-images")
def fetch_images_cmd(
    catalog: str = typer.Argument(..., help="Ingested catalog whose image URLs to download."),
    concurrency: int = typer.Option(16, "--concurrency", help="Downloads in flight."),
    per_host: int = typer.Option(4, "--per-host", help="At most this many requests to one host at a time."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds per request."),
    retries: int = typer.Option(
        3, "--retries", help="Retries (with backoff) after a timeout, connection error, HTTP 429 or 5xx."
    ),
    home: Optional[Path] = Home,
) -> None:
    """Download a catalog's image URLs into the local image cache (the only step that uses the network)."""
    settings = settings_from(None, home)
    options = FetchOptions(concurrency=concurrency, per_host=per_host, timeout_s=timeout, retries=retries)
    try:
        options.check()
        refs = catalog_image_refs(settings.catalog_dir(catalog))
    except (CatalogError, ValueError) as exc:
        fail(str(exc))
    if not refs:
        console.print(f"catalog {catalog}: no image URLs to download")
        return
    columns = [TextColumn("fetching images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("images", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            if not console.is_terminal and (done == total or done % 100 == 0):
                console.print(f"fetched {done}/{total}")

        report = fetch_images(refs, ImageCache(settings.image_cache_dir), options, progress=progress)
    path = save_fetch_report(settings.catalog_dir(catalog), report)
    for line in report.lines():
        console.print(line, markup=False, highlight=False)
    console.print(f"report: {path}; cache: {settings.image_cache_dir}")
    if report.downloaded:
        console.print(f"re-ingest to use them: befa ingest ... (or befa run {catalog} --ingest always)")
    if report.failures:
        raise typer.Exit(code=1)
