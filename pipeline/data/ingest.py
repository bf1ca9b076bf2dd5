"""Run an importer and store what it produced as a new catalog version.

``ingest(name_or_importer, settings, **options)`` reads and validates (writing nothing),
then, holding the catalog's lock (``<catalog>/.lock``; a second ingest waits), writes a new
version under ``settings.catalog_dir(name)`` (layout: :mod:`pipeline.data.versions`):

- ``versions/<id>/``: ``items.parquet``, ``interactions.parquet``, ``rejects.parquet``
  (items whose image or text could not be used: item_id, modality, file, row, source,
  problem; written even when empty), ``ingest_report.json`` / ``.md`` and ``catalog.json``
  (last: counts, fingerprints and every file's sha256, checked by :meth:`Catalog.load`);
  then ``CURRENT`` is switched to it (one atomic rename), and versions beyond the newest
  three are removed;
- ``splits/<interactions fingerprint>/<name>.parquet`` (+ ``.json``) for each split the
  source gives (``given``);
- ready-made features (MMRec ``.npy``) into the feature store at ``settings.feature_store``,
  under fingerprint ``mmrec-npy-<modality>-<sha12>`` registered with
  ``source="mmrec .npy import"``, ``random_init=False``.

A split depends only on the interactions (with their dense indices), and splits are
stored by interactions fingerprint: re-ingesting with unchanged interactions finds the
stored splits, however the items' titles, texts or images changed. When the interactions
changed, the old splits do not apply to the new version (the report's warnings say which
and why); the previous version keeps them until it is pruned, so a killed re-ingest
leaves the previous version and its splits usable.

``catalog.json`` records how the catalog was ingested (``ingest``: importer and options,
paths absolute), so a catalog ingested with ``befa ingest`` can be re-ingested by the
pipeline and the catalog watch without the options being given again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from pipeline.data.catalog import Catalog, CatalogError, IngestReport
from pipeline.data.datasets import get_spec
from pipeline.data.importers import Importer, ImportResult, get_importer
from pipeline.data.importers.base import REJECT_COLUMNS
from pipeline.data.splits import Split
from pipeline.data.summary import IngestSource
from pipeline.data.versions import (
    LOCK_TIMEOUT_S,
    adopt_unversioned_splits,
    catalog_lock,
    current_splits_dir,
    current_version,
    meta_path,
    prune,
    remove_switch_leftovers,
    splits_dir,
)
from pipeline.settings import Settings
from storage.atomic import clean_temporaries
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey

# options that name files or folders (made absolute in the catalog's ingest record)
PATH_OPTIONS = ("items", "interactions", "images", "folder")


def option_flag(key: str) -> str:
    """An importer option as the command line spells it (``on_unknown_items`` -> ``--on-unknown-items``)."""
    if key.endswith("_column"):
        return f"--column {key}=NAME"
    return "--" + key.replace("_", "-")


def _options(importer: Importer, settings: Settings, options: dict[str, Any]) -> tuple[Any, str | None]:
    opts = dict(options)
    rename = None
    # `name` renames the stored catalog for importers whose own options do not use it
    if "name" in opts and "name" not in importer.Options.model_fields:
        rename = opts.pop("name")
    if "image_cache" in importer.Options.model_fields:
        opts["image_cache"] = settings.image_cache_dir  # image URLs are read from it, never fetched
    if importer.dataset is not None and opts.get("root") is None:
        opts["root"] = settings.datasets_root / get_spec(importer.dataset).folder
    try:
        return importer.Options(**opts), rename
    except ValidationError as exc:
        raise ValueError(
            f"befa ingest {importer.name}: " + "; ".join(_option_problem(importer, e) for e in exc.errors())
        ) from None


def _option_problem(importer: Importer, error: dict[str, Any]) -> str:
    """One validation problem, naming the command-line flag, never the Python keyword."""
    key = str(error["loc"][0]) if error["loc"] else ""
    fields = [k for k in importer.Options.model_fields if k not in ("root", "name")]
    if error["type"] == "extra_forbidden" and key.endswith("_column"):
        keys = [k for k in fields if k.endswith("_column")]
        return (
            f"--column {key}=...: unknown column key; "
            f"keys: {', '.join(keys) or 'none (this importer reads a fixed format)'}"
        )
    if error["type"] == "extra_forbidden":
        known = [option_flag(k) for k in fields if not k.endswith("_column")]
        known += ["--column KEY=NAME"] if any(k.endswith("_column") for k in fields) else []
        return f"{option_flag(key)} does not apply to {importer.name} (its options: {', '.join(known) or 'none'})"
    if error["type"] == "missing":
        return f"{option_flag(key)} is required"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{option_flag(key)}: {message}" if key else message


def ingest_record(importer: Importer, options: dict[str, Any]) -> dict[str, Any]:
    """How this catalog was ingested, JSON-ready: local paths absolute (a later watch or
    pipeline run may start from another folder), the datasets root left to the settings."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key in ("root", "image_cache") or value is None:
            continue
        if isinstance(value, Path) or (key in PATH_OPTIONS and "://" not in str(value)):
            value = os.path.abspath(os.path.expanduser(str(value)))
        out[key] = value
    return {"importer": importer.name, "options": out}


def recorded_ingest(folder: str | Path) -> dict[str, Any] | None:
    """How the catalog in ``folder`` was ingested (``{"importer", "options"}``), or None
    when it is not there or was ingested before catalogs recorded it."""
    meta = _previous_meta(Path(folder))
    if meta is None:
        return None
    record = meta.get("ingest")
    return record if isinstance(record, dict) and record.get("importer") else None


def ingest_source(folder: str | Path, datasets_root: str | Path) -> IngestSource | None:
    """Where the catalog in ``folder`` came from (its ingest record, file options apart), or
    None when it has no record. A known dataset's ``root``, left out of the record, is its
    folder under ``datasets_root`` (the root the ingest resolves it against)."""
    record = recorded_ingest(folder)
    if record is None:
        return None
    options = {k: v for k, v in (record.get("options") or {}).items() if k != "name"}
    paths = {k: str(options.pop(k)) for k in PATH_OPTIONS if options.get(k) is not None}
    try:
        dataset = get_importer(record["importer"]).dataset
    except ValueError:  # an importer this version no longer has: its record as it is
        dataset = None
    if dataset is not None and "root" not in options:
        paths = {"root": str(Path(datasets_root) / get_spec(dataset).folder), **paths}
    return IngestSource(importer=record["importer"], paths=paths, options=options, version=current_version(folder))


def ingest(
    name_or_importer: str | Importer,
    settings: Settings,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    on_wait: Callable[[str], None] | None = None,
    **options: Any,
) -> tuple[Catalog, IngestReport]:
    """Import, validate and store a catalog as a new version; returns it with its report.

    ``name_or_importer``: a key of :data:`pipeline.data.importers.IMPORTERS` or an importer.
    ``options``: the importer's options (see its ``Options`` model); for a known dataset
    ``root`` defaults to ``settings.datasets_root / <dataset folder>``. ``name=`` stores
    the catalog under another name. Image URLs are read from ``settings.image_cache_dir``;
    ``fetch_images=True`` (generic importer) downloads the item table's URLs into it once the
    tables' ids and values are checked, before the images are; without it no URL is fetched.
    Ingests of one catalog take its lock in turn: a second one waits (``on_wait`` is told
    why) up to ``lock_timeout_s``."""
    importer = get_importer(name_or_importer) if isinstance(name_or_importer, str) else name_or_importer
    parsed, rename = _options(importer, settings, options)
    # reading and validating write nothing, so they run outside the lock; the lock covers
    # what the new version is compared with (the previous one) and the write
    result = importer.run(parsed)
    if rename:
        result.catalog.name = rename
        result.report.dataset = rename
    result.catalog.meta["ingest"] = ingest_record(importer, options)
    result.catalog.meta["image_cache"] = str(settings.image_cache_dir)
    folder = settings.catalog_dir(result.catalog.name)
    with catalog_lock(folder, lock_timeout_s, on_wait):
        clean_temporaries(folder)  # what killed writers left (dead writers', or older than the safe age)
        remove_switch_leftovers(folder)  # a .tmp-*-CURRENT of an ingest killed at the switch (we hold the lock)
        save_result(result, folder, settings, importer.name)
    return result.catalog, result.report


def save_result(result: ImportResult, folder: str | Path, settings: Settings, source: str = "") -> Path:
    """Store ``result`` as the catalog's new version (the caller holds the catalog lock)."""
    folder = Path(folder)
    catalog, report = result.catalog, result.report
    rejects = result.rejects if result.rejects is not None else pd.DataFrame(columns=REJECT_COLUMNS)
    report.counts_out["rejects"] = len(rejects)
    target = splits_dir(folder, catalog.interactions_fingerprint(), versioned=True)
    _report_splits(folder, catalog, report, target)

    if result.given_splits:
        for name, frame in result.given_splits.items():
            split = Split.from_labels(name, frame, meta={"source": source or catalog.name})
            split.save(target)
            counts = split.counts()
            report.notes.append(
                f"given split {name!r} kept as splits/{name}.parquet: "
                + ", ".join(f"{k} {v}" for k, v in counts.items())
            )

    if result.features:
        _store_features(result, settings, report)
    version_dir = catalog.save(folder, report, rejects)
    removed = prune(folder)
    if removed:
        report.notes.append(f"removed {len(removed)} old catalog files/versions: {', '.join(removed[:5])}")
    return version_dir


def _store_features(result: ImportResult, settings: Settings, report: IngestReport) -> None:
    """Ready-made features (MMRec ``.npy``) into the feature store."""
    store = FeatureStore(settings.feature_store)
    catalog = result.catalog
    items = catalog.items
    for modality, feat in result.features.items():
        store.register_encoder(
            feat.fingerprint,
            {
                "random_init": False,
                "weights": f"{feat.source.name} sha256:{feat.sha256}",
                "dim": int(feat.matrix.shape[1]),
                "source": "mmrec .npy import",
                "modality": modality,
            },
        )
        key = FeatureSetKey(catalog.name, feat.fingerprint, modality)
        res = store.upsert(
            key, items["item_id"].tolist(), items[f"{modality}_hash"].tolist(), feat.matrix, backend="imported"
        )
        report.notes.append(
            f"{modality} features {feat.source.name} ({feat.matrix.shape[0]} x {feat.matrix.shape[1]}) "
            f"-> feature store {settings.feature_store}, fingerprint {feat.fingerprint} "
            f"({res.written} written, {res.skipped} already there)"
        )


def _report_splits(folder: Path, catalog: Catalog, report: IngestReport, target: Path) -> None:
    """Say what becomes of the stored splits. Splits are keyed by the interactions
    fingerprint, so nothing is deleted here: unchanged interactions find their splits, changed
    ones start without (the previous version keeps its own until it is pruned)."""
    previous = _previous_meta(folder)
    if previous is None:
        return
    old_inter = previous.get("interactions_fingerprint") or _stored_interactions_fingerprint(folder)
    if current_version(folder) is None:  # a catalog written before versions: its splits are copied over
        old_dir = folder / "splits"
        names = sorted(p.stem for p in old_dir.glob("*.parquet")) if old_dir.is_dir() else []
        if old_inter == catalog.interactions_fingerprint():
            adopt_unversioned_splits(folder, target)
    else:
        old_dir = current_splits_dir(folder)
        names = sorted(p.stem for p in old_dir.glob("*.parquet")) if old_dir.is_dir() else []
    if not names or previous.get("fingerprint") == catalog.fingerprint():
        return
    if old_inter == catalog.interactions_fingerprint():
        report.notes.append(f"item content changed, interactions unchanged: splits kept ({', '.join(names)})")
        return
    report.warnings.append(
        f"splits {', '.join(names)} do not apply to the new catalog version: the interactions changed (fingerprint "
        f"{old_inter} -> {catalog.interactions_fingerprint()}), and a split indexes the interactions it was made from. "
        "`befa split` or `befa run` makes them again from the new interactions; runs trained on the old "
        "splits keep their recorded split id (the previous version keeps its splits until it is pruned)"
    )


def _previous_meta(folder: Path) -> dict[str, Any] | None:
    path = meta_path(folder)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _stored_interactions_fingerprint(folder: Path) -> str | None:
    """The interactions fingerprint of a catalog stored before catalog.json recorded it."""
    try:
        return Catalog.load(folder).interactions_fingerprint()
    except (CatalogError, OSError, KeyError, ValueError):
        return None
