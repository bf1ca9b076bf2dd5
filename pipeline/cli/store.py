"""``befa store check``: read back every file of the feature store; ``--repair`` moves damaged ones aside.

Without ``--repair`` nothing is written: the check lists what is damaged and exits with code 1
when something is (0 when all is well). With ``--repair`` each damaged file is moved into
``quarantine/`` beside it and each current snapshot made readable again (``storage.check``),
exit code 0; the next ``befa extract`` re-encodes exactly the items the damaged files held.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from pipeline.cli.common import CommandGroup, FeatureStoreOpt, Home, console, settings_from
from storage.check import StoreCheck, check_store

commands = CommandGroup()
store_app = typer.Typer(add_completion=False, no_args_is_help=True)


@store_app.callback()
def store() -> None:
    """The feature store's own maintenance: `befa store check [--repair]`."""


def _say(text: str) -> None:
    console.print(escape(text), highlight=False)


def print_check(report: StoreCheck) -> None:
    sets = report.feature_sets
    _say(
        f"checked {len(sets)} feature sets under {report.root}: {sum(f.parts for f in sets)} parts "
        f"({sum(f.rows for f in sets)} rows intact), {sum(f.snapshots for f in sets)} snapshots"
    )
    for fset in sets:
        for damage in fset.damage:
            _say(f"  damaged {damage.kind} {damage.path}: {damage.problem}")
            if damage.path in fset.moved:
                _say(f"    moved to {fset.moved[damage.path]}")
        if fset.damage or fset.lost_items:
            current = f"current snapshot {fset.current}" if fset.current else "no current snapshot"
            _say(
                f"  {fset.key}: {current}; {fset.lost_items} items without a vector"
                + (" (the next `befa extract` re-encodes them)" if report.repaired else "")
            )
    for damage in report.records:
        _say(f"  damaged {damage.kind} {damage.path}: {damage.problem}")
        if damage.path in report.records_moved:
            _say(f"    moved to {report.records_moved[damage.path]}")


@store_app.command("check")
def check_cmd(
    repair: bool = typer.Option(
        False,
        "--repair",
        help="Move damaged files into quarantine/ beside them and make each current snapshot readable; "
        "the next `befa extract` re-encodes what they held.",
    ),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Only this catalog's feature sets."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Read back every part, snapshot and record of the feature store and check them against each other."""
    settings = settings_from(None, home, feature_store)
    report = check_store(settings.feature_store, dataset=dataset, repair=repair)
    print_check(report)
    if not report.damage:
        _say("all files intact")
    elif repair:
        _say(
            f"repaired: {len(report.damage)} damaged files moved aside; run `befa extract` to re-encode what they held"
        )
    else:
        _say(f"{len(report.damage)} damaged files: `befa store check --repair` moves them aside")
        raise typer.Exit(code=1)


@commands.external("store")
def store_cmd() -> Any:
    """Check the feature store's files against its records (befa store check); --repair moves damaged ones aside."""
    return typer.main.get_command(store_app)
