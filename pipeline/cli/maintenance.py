"""``befa gc``: remove what killed writers left behind.

A temporary's name carries its writer's host and pid (``storage.atomic``): one whose writer
is dead goes at once, one whose writer runs is kept, and one whose writer cannot be told (a
name from before that scheme, another machine sharing the folder) goes once older than
``--older-than``. ``$BEFA_HOME`` and the feature store are always looked at; ``--run-dir``
adds folders outside them (``befa train --run-dir`` writes wherever it is told).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import CommandGroup, FeatureStoreOpt, Home, console, fail, settings_from
from storage.atomic import SAFE_AGE_S, clean_temporaries

commands = CommandGroup()
SHOWN = 50


def gc_roots(home: Path, feature_store: str, run_dirs: list[Path]) -> list[Path]:
    """The folders to look at: the home, the feature store (when local and outside the home)
    and each extra run folder not already under one of them."""
    roots = [home]
    if "://" not in feature_store:
        roots.append(Path(feature_store))
    roots += run_dirs
    out: list[Path] = []
    for root in sorted(roots, key=lambda p: len(p.resolve().parts)):  # outer folders first
        if not any(root.resolve().is_relative_to(kept.resolve()) for kept in out):
            out.append(root)
    return out


@commands.command("gc")
def gc_cmd(
    older_than: float = typer.Option(
        SAFE_AGE_S,
        "--older-than",
        envvar="BEFA_GC_OLDER_THAN",
        help="Temporaries whose writer cannot be told (older names, another machine) go only when older than this "
        "many seconds (a write in progress is younger); a dead writer's go at once, a live writer's never.",
    ),
    run_dirs: list[Path] = typer.Option(
        [], "--run-dir", help="Also look in this folder, e.g. a `befa train --run-dir` outside $BEFA_HOME (repeatable)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed, remove nothing."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Remove temporary files left by killed writes under $BEFA_HOME and the feature store."""
    if older_than < 0:
        fail(f"--older-than must be >= 0 seconds, got {older_than:g}")
    missing = [p for p in run_dirs if not p.is_dir()]
    if missing:
        fail(f"--run-dir {missing[0]}: no such folder")
    settings = settings_from(None, home, feature_store)
    roots = gc_roots(settings.home, settings.feature_store, list(run_dirs))
    found = [p for root in roots for p in clean_temporaries(root, older_than_s=older_than, dry_run=dry_run)]
    size = sum(p.stat().st_size for p in found if p.exists()) if dry_run else None
    verb = "would remove" if dry_run else "removed"
    for p in found[:SHOWN]:
        console.print(f"  {verb} {p}", markup=False, highlight=False)
    if len(found) > SHOWN:
        console.print(f"  ... and {len(found) - SHOWN} more")
    extra = f" ({size / 2**20:.1f} MB)" if size is not None else ""
    console.print(
        f"{verb} {len(found)} temporary files{extra} (writer dead, or unknown and older than {older_than:g} s) "
        f"under {', '.join(map(str, roots))}",
        markup=False,
        highlight=False,
    )
