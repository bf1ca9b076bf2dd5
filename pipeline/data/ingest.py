"""Run an importer and store what it produced.

``ingest(name_or_importer, settings, **options)`` writes, under ``settings.catalog_dir(name)``:

- ``items.parquet``, ``interactions.parquet``, ``catalog.json`` (last: marks completeness),
  ``ingest_report.json`` and ``ingest_report.md`` (via :meth:`Catalog.save`);
- ``rejects.parquet``: items whose image or text could not be used (item_id, modality,
  file, row, source, problem); written even when empty, so its absence means "not ingested";
- ``splits/<name>.parquet`` (+ ``.json``) for each split the source gives (``given``);
- ready-made features (MMRec ``.npy``) into the feature store at ``settings.feature_store``,
  under fingerprint ``mmrec-npy-<modality>-<sha12>`` registered with
  ``source="mmrec .npy import"``, ``random_init=False``.

Re-ingesting a catalog whose content changed removes the splits stored for the old
content (their indices would no longer match); an unchanged catalog keeps them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from pydantic import ValidationError

from pipeline.data.catalog import Catalog, IngestReport
from pipeline.data.datasets import get_spec
from pipeline.data.importers import Importer, ImportResult, get_importer
from pipeline.data.importers.base import REJECT_COLUMNS
from pipeline.data.splits import Split
from pipeline.settings import Settings
from storage.atomic import write_parquet
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey

REJECTS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("modality", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),
        ("source", pa.string()),
        ("problem", pa.string()),
    ]
)


def _options(importer: Importer, settings: Settings, options: dict[str, Any]) -> tuple[Any, str | None]:
    opts = dict(options)
    rename = None
    # `name` renames the stored catalog for importers whose own options do not use it
    if "name" in opts and "name" not in importer.Options.model_fields:
        rename = opts.pop("name")
    if importer.dataset is not None and opts.get("root") is None:
        opts["root"] = settings.datasets_root / get_spec(importer.dataset).folder
    try:
        return importer.Options(**opts), rename
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"importer {importer.name!r}: bad options: {problems}") from None


def ingest(name_or_importer: str | Importer, settings: Settings, **options: Any) -> tuple[Catalog, IngestReport]:
    """Import, validate and store a catalog; returns it with its ingest report.

    ``name_or_importer``: a key of :data:`pipeline.data.importers.IMPORTERS` or an importer.
    ``options``: the importer's options (see its ``Options`` model); for a known dataset
    ``root`` defaults to ``settings.datasets_root / <dataset folder>``. ``name=`` stores
    the catalog under another name."""
    importer = get_importer(name_or_importer) if isinstance(name_or_importer, str) else name_or_importer
    parsed, rename = _options(importer, settings, options)
    result = importer.run(parsed)
    if rename:
        result.catalog.name = rename
        result.report.dataset = rename
    save_result(result, settings.catalog_dir(result.catalog.name), settings, importer.name)
    return result.catalog, result.report


def save_result(result: ImportResult, folder: str | Path, settings: Settings, source: str = "") -> Path:
    folder = Path(folder)
    catalog, report = result.catalog, result.report
    _drop_stale_splits(folder, catalog, report)

    rejects = result.rejects if result.rejects is not None else pd.DataFrame(columns=REJECT_COLUMNS)
    rejects = rejects.reindex(columns=REJECT_COLUMNS).astype({"row": "Int64"})
    write_parquet(folder / "rejects.parquet", pa.Table.from_pandas(rejects, schema=REJECTS_SCHEMA, preserve_index=False))
    report.counts_out["rejects"] = len(rejects)

    if result.given_splits:
        for name, frame in result.given_splits.items():
            split = Split.from_labels(name, frame, meta={"source": source or catalog.name})
            split.save(folder / "splits")
            counts = split.counts()
            report.notes.append(f"given split {name!r} kept as splits/{name}.parquet: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    if result.features:
        store = FeatureStore(settings.feature_store)
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
            res = store.upsert(key, items["item_id"].tolist(), items[f"{modality}_hash"].tolist(), feat.matrix)
            report.notes.append(
                f"{modality} features {feat.source.name} ({feat.matrix.shape[0]} x {feat.matrix.shape[1]}) -> feature store "
                f"{settings.feature_store}, fingerprint {feat.fingerprint} ({res.written} written, {res.skipped} already there)"
            )
    catalog.save(folder, report)
    return folder


def _drop_stale_splits(folder: Path, catalog: Catalog, report: IngestReport) -> None:
    meta_path = folder / "catalog.json"
    if not meta_path.exists():
        return
    old = json.loads(meta_path.read_text()).get("fingerprint")
    if old == catalog.fingerprint():
        return
    # the old catalog is being replaced: mark the folder incomplete before touching anything
    meta_path.unlink()
    splits = folder / "splits"
    if splits.is_dir():
        names = sorted(p.name for p in splits.iterdir())
        shutil.rmtree(splits)
        if names:
            report.notes.append(f"catalog content changed (fingerprint {old} -> {catalog.fingerprint()}): removed stale splits {names}")
