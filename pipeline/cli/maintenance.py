"""``befa gc``: remove what killed writers left behind."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import CommandGroup, FeatureStoreOpt, Home, console, fail, settings_from
from storage.atomic import SAFE_AGE_S, clean_temporaries

commands = CommandGroup()


@commands.command("gc")
def gc_cmd(
    older_than: float = typer.Option(
        SAFE_AGE_S,
        "--older-than",
        help="Only temporaries older than this many seconds (a write in progress is younger).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed, remove nothing."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Remove temporary files left by killed writes under $BEFA_HOME and the feature store."""
    if older_than < 0:
        fail(f"--older-than must be >= 0 seconds, got {older_than:g}")
    settings = settings_from(None, home, feature_store)
    roots = [settings.home]
    store = Path(settings.feature_store)
    if "://" not in settings.feature_store and not store.resolve().is_relative_to(settings.home.resolve()):
        roots.append(store)
    found = [p for root in roots for p in clean_temporaries(root, older_than_s=older_than, dry_run=dry_run)]
    size = sum(p.stat().st_size for p in found if p.exists()) if dry_run else None
    for p in found[:50]:
        console.print(f"  {'would remove' if dry_run else 'removed'} {p}", markup=False, highlight=False)
    if len(found) > 50:
        console.print(f"  ... and {len(found) - 50} more")
    verb = "would remove" if dry_run else "removed"
    extra = f" ({size / 2**20:.1f} MB)" if size is not None else ""
    console.print(
        f"{verb} {len(found)} temporary files older than {older_than:g} s{extra} under {', '.join(map(str, roots))}"
    )
