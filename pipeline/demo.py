"""The main job on the default catalog, as a plain function (the CLI and flows call it)."""

from __future__ import annotations

from rich.console import Console

from pipeline.ingest import ingest
from pipeline.settings import Settings
from pipeline.splits import split_random
from pipeline.stats import catalog_stats, render_stats

DEFAULT_DATASET = "movielens-100k-posters"


def run_demo(settings: Settings, console: Console | None = None, dataset: str = DEFAULT_DATASET) -> dict:
    console = console or Console()
    console.rule(f"befa demo: {dataset}")
    catalog, report = ingest(dataset, settings)
    console.print(f"ingested {catalog.num_items:,} items, {len(catalog.interactions):,} interactions, "
                  f"{len(report.issues)} issues (see {settings.catalog_dir(catalog.name) / 'ingest_report.md'})")
    split = split_random(catalog, seed=2024)
    split.save(settings.catalog_dir(catalog.name) / "splits")
    stats = catalog_stats(settings.catalog_dir(catalog.name))
    console.print(render_stats(stats))
    return stats
