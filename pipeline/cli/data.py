"""Data commands: ``befa datasets``, ``download``, ``ingest``, ``split``, ``export-mmrec``, ``stats``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from pipeline.cli.common import CommandGroup, DatasetsRoot, FeatureStoreOpt, Home, console, fail, settings_from
from pipeline.data.catalog import Catalog, CatalogError
from pipeline.data.datasets import KNOWN_DATASETS, DownloadError, download, local_status
from pipeline.data.export import export_command
from pipeline.data.ingest import ingest
from pipeline.data.splits import make_split
from pipeline.data.stats import catalog_stats, render_stats

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


@commands.command("ingest")
def ingest_cmd(
    name: str = typer.Argument(..., help="Dataset name (movielens-100k-posters, amazon-baby-5core) or 'generic' / 'mmrec'."),
    min_rating: Optional[float] = typer.Option(None, help="Keep ratings >= this (MovieLens default 4)."),
    catalog_name: Optional[str] = typer.Option(None, "--as", help="Name to store the catalog under (generic/mmrec)."),
    items: Optional[Path] = typer.Option(None, help="generic: items CSV/Parquet."),
    interactions: Optional[Path] = typer.Option(None, help="generic: interactions CSV/Parquet."),
    images: Optional[Path] = typer.Option(None, help="generic: image folder."),
    folder: Optional[Path] = typer.Option(None, help="mmrec: folder with <name>.inter and *_feat.npy."),
    on_unknown_items: Optional[str] = typer.Option(None, help="Interactions naming unknown items: 'error' (default) or 'skip' (each skip reported)."),
    verify: Optional[bool] = typer.Option(None, "--verify/--no-verify", help="Check known datasets against their SHA256 sums (default on)."),
    column: list[str] = typer.Option([], "--column", help="generic: column mapping KEY=NAME, e.g. --column item_id_column=sku --column text_column=description."),
    datasets_root: Optional[Path] = DatasetsRoot,
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Import and validate a catalog; writes items/interactions Parquet and an ingest report.

    --min-rating 0 keeps every MovieLens rating (leaving it out keeps ratings >= 4)."""

    settings = settings_from(datasets_root, home, feature_store)
    options = dict(min_rating=min_rating, name=catalog_name, items=items, interactions=interactions, images=images,
                   folder=folder, on_unknown_items=on_unknown_items, verify=verify)
    options = {k: v for k, v in options.items() if v is not None}
    for mapping in column:
        key, sep, value = mapping.partition("=")
        if not sep or not key.endswith("_column"):
            fail(f"--column expects KEY_column=NAME, got {mapping!r}")
        options[key] = value
    try:
        catalog, report = ingest(name, settings, **options)
    except (CatalogError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    _print_report(report)
    console.print(f"catalog [bold]{catalog.name}[/] written to {settings.catalog_dir(catalog.name)}")


def _print_report(report) -> None:
    table = Table(title=f"ingest: {report.dataset}")
    for col in ("what", "in", "out"):
        table.add_column(col, justify="right" if col != "what" else "left")
    for key in sorted(set(report.counts_in) | set(report.counts_out)):
        table.add_row(key, str(report.counts_in.get(key, "")), str(report.counts_out.get(key, "")))
    console.print(table)
    for kind, n in report.summary_by_problem().items():
        console.print(f"  [yellow]{n}[/] x {kind}")


@commands.command("split")
def split_cmd(
    name: str = typer.Argument(..., help="Ingested catalog name."),
    kind: str = typer.Option("random", help="random (MMRec 8:1:1 per user) or temporal (leave-last-out)."),
    seed: int = typer.Option(2024, help="Seed of the random split."),
    k_core: Optional[int] = typer.Option(None, help="Apply a k-core filter first (benchmarks use 5)."),
    home: Optional[Path] = Home,
) -> None:
    """Split a catalog's interactions into train/valid/test and store the split with the catalog."""
    settings = settings_from(None, home)
    catalog = Catalog.load(settings.catalog_dir(name))
    split = make_split(catalog, kind=kind, seed=seed, k_core=k_core)
    path = split.save(settings.catalog_dir(name) / "splits")
    console.print(f"split {split.id}: {split.counts()} -> {path}")


@commands.command("export-mmrec")
def export_mmrec_cmd(
    name: str = typer.Argument(..., help="Ingested catalog name."),
    split: str = typer.Option(..., help="Stored split name, e.g. random-s2024."),
    dest: Path = typer.Option(..., help="Output folder for <name>.inter and *_feat.npy."),
    image_fp: Optional[str] = typer.Option(None, help="Feature-store fingerprint of the image features."),
    text_fp: Optional[str] = typer.Option(None, help="Feature-store fingerprint of the text features."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Export a catalog, a split and features in the MMRec toolbox format (.inter + .npy)."""
    fps = {m: fp for m, fp in (("image", image_fp), ("text", text_fp)) if fp}
    out = export_command(name, split, dest, settings_from(None, home, feature_store), fingerprints=fps or None)
    console.print(f"exported: {out}")


@commands.command("stats")
def stats_cmd(
    name: str = typer.Argument(..., help="Ingested catalog name."),
    home: Optional[Path] = Home,
) -> None:
    """Print statistics of an ingested catalog and its stored splits."""
    settings = settings_from(None, home)
    console.print(render_stats(catalog_stats(settings.catalog_dir(name))))
