"""Data commands: ``befa datasets``, ``download``, ``ingest``, ``split``, ``stats``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from pipeline.cli.common import CommandGroup, DatasetsRoot, FeatureStoreOpt, Home, console, fail, settings_from
from pipeline.cli.ingest_options import ImporterHelpCommand, with_ingest_options
from pipeline.data.catalog import Catalog, CatalogError
from pipeline.data.datasets import KNOWN_DATASETS, DownloadError, download, local_status
from pipeline.data.ingest import ingest
from pipeline.data.splits import check_cold_fraction, make_split
from pipeline.data.stats import catalog_stats, render_stats
from pipeline.data.versions import CatalogLockTimeout

commands = CommandGroup()


@commands.command("datasets")
def datasets_cmd(datasets_root: Optional[Path] = DatasetsRoot) -> None:
    """List the datasets befa knows, their public upstream and whether a local copy is present."""
    settings = settings_from(datasets_root, None)
    table = Table(title=f"datasets (root: {settings.datasets_root})")
    for col in ("name", "local copy", "upstream"):
        table.add_column(col)
    for name, ds in KNOWN_DATASETS.items():
        table.add_row(name, local_status(name, settings.datasets_root), "\n".join(ds.upstream_urls))
    console.print(table)


@commands.command("download")
def download_cmd(
    name: str = typer.Argument(..., help="Dataset name, e.g. movielens-100k-posters."),
    datasets_root: Optional[Path] = DatasetsRoot,
) -> None:
    """Download a dataset from its public upstream into the datasets root and verify it (needs internet)."""
    settings = settings_from(datasets_root, None)
    try:
        path = download(name, settings.datasets_root)
    except (DownloadError, ValueError) as exc:
        fail(str(exc))
    console.print(f"downloaded and verified: {path}")


@commands.command("ingest", cls=ImporterHelpCommand)
@with_ingest_options
def ingest_cmd(
    name: str = typer.Argument(
        ...,
        help="Dataset name (movielens-100k-posters, amazon-baby-5core) or 'generic' / 'mmrec'; "
        "`befa ingest generic --help` shows that importer's format and options.",
    ),
    catalog_name: Optional[str] = typer.Option(None, "--as", help="Name to store the catalog under (generic/mmrec)."),
    datasets_root: Optional[Path] = DatasetsRoot,
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
    ingest_options: Optional[dict] = None,
) -> None:
    """Import and validate a catalog; writes items/interactions Parquet and an ingest report.

    --min-rating 0 keeps every MovieLens rating (leaving it out keeps ratings >= 4)."""

    settings = settings_from(datasets_root, home, feature_store)
    options = dict(ingest_options or {})
    if catalog_name is not None:
        options["name"] = catalog_name
    try:
        # a second ingest of the same catalog waits for the first one's lock, saying so
        catalog, report = ingest(
            name, settings, on_wait=lambda why: console.print(why, markup=False, highlight=False), **options
        )
    except (CatalogError, CatalogLockTimeout, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    _print_report(report)
    console.print(
        f"catalog [bold]{catalog.name}[/] version {catalog.version} written to {settings.catalog_dir(catalog.name)}"
    )


def _print_report(report) -> None:
    table = Table(title=f"ingest: {report.dataset}")
    for col in ("what", "in", "out"):
        table.add_column(col, justify="right" if col != "what" else "left")
    for key in sorted(set(report.counts_in) | set(report.counts_out)):
        table.add_row(key, str(report.counts_in.get(key, "")), str(report.counts_out.get(key, "")))
    console.print(table)
    for kind, n in report.summary_by_problem().items():
        console.print(f"  [yellow]{n}[/] x {kind}")
    for note in report.notes:
        console.print(f"  {note}", markup=False, highlight=False)
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")


@commands.command("split")
def split_cmd(
    name: str = typer.Argument(..., help="Ingested catalog name."),
    kind: str = typer.Option(
        "random", help="random (MMRec 8:1:1 per user), temporal (leave-last-out) or cold-items (item cold start)."
    ),
    seed: int = typer.Option(2024, help="Seed of the random and cold-items splits."),
    k_core: Optional[int] = typer.Option(None, help="Apply a k-core filter first (benchmarks use 5)."),
    cold_fraction: Optional[float] = typer.Option(
        None,
        help="cold-items: share of items (0 < f < 1, default 0.2) with all interactions in valid/test, none in train.",
    ),
    home: Optional[Path] = Home,
) -> None:
    """Split a catalog's interactions into train/valid/test and store the split with the catalog."""
    settings = settings_from(None, home)
    try:
        if cold_fraction is not None:  # checked before any work, naming the flag
            if kind != "cold-items":
                raise ValueError(f"--cold-fraction applies to --kind cold-items only (got --kind {kind})")
            check_cold_fraction(cold_fraction)
        catalog = Catalog.load(settings.catalog_dir(name))
        split = make_split(catalog, kind=kind, seed=seed, k_core=k_core, cold_fraction=cold_fraction)
    except (CatalogError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    path = split.save(catalog.splits_dir)
    cold = split.cold_items
    extra = f", {cold.size} cold items (no train interaction)" if cold is not None else ""
    console.print(f"split {split.id}: {split.counts()}{extra} -> {path}")


@commands.command("stats")
def stats_cmd(
    name: str = typer.Argument(..., help="Ingested catalog name."),
    home: Optional[Path] = Home,
) -> None:
    """Print statistics of an ingested catalog and its stored splits."""
    settings = settings_from(None, home)
    try:
        stats = catalog_stats(settings.catalog_dir(name))
    except (CatalogError, FileNotFoundError, OSError, ValueError) as exc:
        fail(
            f"{exc}"
            if isinstance(exc, CatalogError)
            else f"{settings.catalog_dir(name)}: the catalog cannot be read ({exc}); re-run `befa ingest`"
        )
    console.print(render_stats(stats))
