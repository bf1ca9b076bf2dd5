"""Serving commands: ``befa recommend`` and ``befa similar``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

import pandas as pd
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from models import MAPPERS
from pipeline.cli.checks import device_or_fail
from pipeline.cli.common import CommandGroup, FeatureStoreOpt, Home, console, csv_list, fail, settings_from
from pipeline.data.catalog import CatalogError
from pipeline.serving.ranked_lists import RecommendRequest, write_recommendations
from pipeline.serving.servable import Servable, ServingError, load_servable, read_id_file
from pipeline.serving.similar import write_similar
from pipeline.training.mapping import CALIBRATION_MODES
from storage.feature_store import FeatureStore

commands = CommandGroup()

RunDir = typer.Argument(..., help="A run folder (with run.json and best.safetensors).")
CatalogOpt = typer.Option(
    None, "--catalog", help="Catalog folder to serve against (default: the one the run recorded)."
)


MapperOpt = typer.Option(
    "auto",
    "--mapper",
    help="Content mapper for items without behaviour: auto (the run's best on valid), regression, aldi, or none.",
)


CalibrationOpt = typer.Option(
    CALIBRATION_MODES[0],
    "--calibration",
    help="How mapped items' scores meet the warm items': relevance (the run's valid hit rates; "
    "expected when its mapping.json predates them), expected, or quantile.",
)


def _calibration(value: str) -> str:
    if value not in CALIBRATION_MODES:
        fail(f"--calibration must be one of {', '.join(CALIBRATION_MODES)}; got {value!r}")
    return value


def _mapper(value: str) -> str:
    if value not in ("auto", "none", *MAPPERS):
        fail(f"--mapper must be auto, none or one of {', '.join(MAPPERS)}; got {value!r}")
    return value


def _ids(value: Optional[str], flag: str) -> Optional[list[str]]:
    """``a,b,c`` or ``@file`` (one id per line, or a CSV/Parquet with an id column)."""
    if value is None:
        return None
    if value.startswith("@"):
        return read_id_file(value[1:], flag)
    return csv_list(value)


def _servable(
    run_dir: Path,
    home: Optional[Path],
    feature_store: Optional[str],
    catalog: Optional[Path],
    device: Optional[str],
    new_items: bool,
    mapper: str = "auto",
    calibration: str | None = None,
) -> Servable:
    device_or_fail(device)
    settings = settings_from(None, home, feature_store)
    if not (run_dir / "run.json").exists():
        fail(f"{run_dir}: not a run folder (no run.json); pass the folder `befa train` or `befa run` wrote")
    console.print(f"loading {run_dir} ...")
    return load_servable(
        run_dir,
        FeatureStore(settings.feature_store),
        catalog=catalog,
        device=device,
        new_items=new_items,
        mapper=mapper,
        calibration=calibration,
    )


def _progress(frames: Iterator[pd.DataFrame], total: int) -> Iterator[pd.DataFrame]:
    columns = [TextColumn("scoring users"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("users", total=total)
        for frame in frames:
            bar.update(task, advance=frame["user_id"].nunique())
            yield frame


def _report(written: Any, what: str) -> None:
    info = written.info
    console.print(
        f"wrote {written.rows} {what} rows for {written.users} {'users' if what == 'recommendation' else 'items'} "
        f"in {written.seconds:.2f} s"
    )
    console.print(f"  {written.path}")
    console.print(
        f"  {written.manifest} (run {info['model']} {info['adapter']}, "
        f"catalog {info['catalog']} {info['catalog_fingerprint']})"
    )
    for key in ("removed_since_training", "new_items", "new_items_left_out", "candidates_unknown"):
        if info.get(key):
            console.print(f"  {key.replace('_', ' ')}: {info[key]}")
    unseen = info.get("items_without_behaviour") or []
    if unseen:
        how = f"the {info['mapper']} mapper, calibrated ({info['calibration']})" if info.get("mapper") else None
        n = info.get("new_item_slots") or 0
        slots = f"; {n} place{'s' if n != 1 else ''} per list guaranteed to them" if n else ""
        console.print(
            f"  {len(unseen)} items without behaviour scored by {how or 'the model' + chr(39) + 's own content path'}"
            f"{slots} (listed in the manifest)"
        )
    if info.get("calibration_note"):
        console.print(f"  note: {info['calibration_note']}")
    console.print(f"  read it: duckdb -c \"SELECT * FROM '{written.path}' ORDER BY 1, rank LIMIT 20\"")


@commands.command("recommend")
def recommend_cmd(
    run_dir: Path = RunDir,
    k: int = typer.Option(20, "--k", help="Items per user."),
    users: Optional[str] = typer.Option(
        None, "--users", help="User ids, comma-separated, or @FILE (default: every user of the run)."
    ),
    include_seen: bool = typer.Option(False, "--include-seen", help="Keep items the user already interacted with."),
    candidates: Optional[Path] = typer.Option(
        None, "--candidates", help="File of allowed item ids (one per line, or CSV/Parquet with item_id)."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Parquet file to write (default RUN_DIR/recommendations.parquet)."
    ),
    catalog: Optional[Path] = CatalogOpt,
    new_items: bool = typer.Option(
        True, "--new-items/--no-new-items", help="Serve items added to the catalog after training (content models)."
    ),
    new_item_slots: int = typer.Option(
        0, "--new-item-slots", help="Places in each list guaranteed to items without behaviour (scored by the mapper)."
    ),
    mapper: str = MapperOpt,
    calibration: str = CalibrationOpt,
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda when present)."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Write top-K recommendations per user from a trained run (Parquet + manifest)."""
    if k < 1:
        fail(f"--k must be at least 1, got {k}")
    try:
        request = RecommendRequest(
            k=k,
            users=_ids(users, "--users"),
            seen="none" if include_seen else "all",
            candidates=read_id_file(candidates, "--candidates") if candidates else None,
            new_item_slots=new_item_slots,
        )
        request.check()
        served = _servable(
            run_dir, home, feature_store, catalog, device, new_items, _mapper(mapper), _calibration(calibration)
        )
        written = write_recommendations(served, request, out or run_dir / "recommendations.parquet", progress=_progress)
    except (ServingError, CatalogError, FileNotFoundError) as exc:
        fail(str(exc))
    _report(written, "recommendation")


@commands.command("similar")
def similar_cmd(
    run_dir: Path = RunDir,
    items: Optional[str] = typer.Option(
        None, "--items", help="Item ids, comma-separated, or @FILE (default: every current item)."
    ),
    k: int = typer.Option(10, "--k", help="Neighbours per item."),
    space: str = typer.Option(
        "model", "--space", help="model (the model's item representations) or content (raw features)."
    ),
    candidates: Optional[Path] = typer.Option(None, "--candidates", help="File of allowed item ids."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Parquet file to write (default RUN_DIR/similar-<space>.parquet)."
    ),
    catalog: Optional[Path] = CatalogOpt,
    mapper: str = MapperOpt,
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ..."),
    home: Optional[Path] = Home,
    feature_store: Optional[str] = FeatureStoreOpt,
) -> None:
    """Write item-to-item neighbours from a trained run (model or content space)."""
    if k < 1:
        fail(f"--k must be at least 1, got {k}")
    if space not in ("model", "content"):
        fail(f"--space must be model or content, got {space!r}")
    try:
        wanted = _ids(items, "--items")
        allowed = read_id_file(candidates, "--candidates") if candidates else None
        served = _servable(run_dir, home, feature_store, catalog, device, True, _mapper(mapper))
        written = write_similar(
            served, wanted, out or run_dir / f"similar-{space}.parquet", k=k, space=space, candidates=allowed
        )  # type: ignore[arg-type]
    except (ServingError, CatalogError, FileNotFoundError) as exc:
        fail(str(exc))
    _report(written, "neighbour")
