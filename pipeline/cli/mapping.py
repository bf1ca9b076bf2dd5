"""``befa map RUN``: fit the content-to-behaviour mappers to a trained run, so its cold and new
items are scored from their content (``pipeline.training.mapping``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from models import MAPPERS, parse_overrides
from pipeline.cli.checks import device_or_fail
from pipeline.cli.common import CommandGroup, FeatureStoreOpt, Home, console, fail, settings_from
from pipeline.data.catalog import CatalogError
from pipeline.reporting.cold_start import mapping_summary, setting_rows, settings_table
from pipeline.serving.servable import ServingError, load_on_own_items
from pipeline.training.mapping import DEFAULT_METHODS, WARM_BUDGET, map_run
from pipeline.training.record import RunRecord
from storage.feature_store import FeatureStore

commands = CommandGroup()


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in MAPPERS]
    if not methods or unknown:
        fail(f"--methods: {unknown[0] if unknown else text!r} is not a mapper; choose from {', '.join(MAPPERS)}")
    return methods


def _overrides(items: list[str], methods: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    try:
        flat = parse_overrides(items)
    except ValueError as exc:
        fail(f"--set: {exc}")
    for key, value in flat.items():
        method, dot, field = key.partition(".")
        if not dot or method not in MAPPERS:
            fail(f"--set {key}: expected METHOD.KEY=VALUE with METHOD one of {', '.join(MAPPERS)}")
        if field not in MAPPERS[method].Config.model_fields:
            fail(
                f"--set {key}: {method} has no setting {field!r}; "
                f"it has {', '.join(MAPPERS[method].Config.model_fields)}"
            )
        out.setdefault(method, {})[field] = value
    return out


@commands.command("map")
def map_cmd(
    run: Path = typer.Argument(..., help="A run folder of a content model (written by `befa train` or `befa run`)."),
    methods: str = typer.Option(",".join(DEFAULT_METHODS), "--methods", help="Mapper methods, comma list."),
    set_: list[str] = typer.Option(
        [], "--set", help="Mapper setting METHOD.KEY=VALUE (e.g. aldi.steps=800), repeatable."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the mappers' initialisation and batches."),
    warm_budget: float = typer.Option(
        WARM_BUDGET,
        "--warm-budget",
        min=0.0,
        max=1.0,
        help="Relevance calibration: the largest share of their valid Recall@20 new items may cost the warm "
        "items (1: no limit).",
    ),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ..."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Fit content mappers to a trained run so cold and new items are scored from their content."""
    device_or_fail(device)
    chosen = _methods(methods)
    overrides = _overrides(set_, chosen)
    settings = settings_from(None, home, feature_store)
    try:
        record = RunRecord.load(run)
        # on the items the run trained on, so a catalog grown since (new items) does not change what is fitted
        trained = load_on_own_items(run, FeatureStore(settings.feature_store), device)
        mapping = map_run(trained.model, trained.prepared, run, chosen, overrides, seed, warm_budget)
    except (ValueError, FileNotFoundError, CatalogError, ServingError) as exc:
        fail(str(exc))
    console.print(mapping_summary(mapping.methods))
    rows = setting_rows(record, mapping)
    if rows:
        console.print(settings_table(rows))
    else:
        console.print(
            "the run's split has no cold items, so only new items added to the catalog will use the mappers "
            "(befa recommend)"
        )
    console.print(f"mappers written to {Path(run) / 'mappers'} and {Path(run) / 'mapping.json'}")
