"""The catalog's imported features, read where an encoder would run: the encoder spec ``imported``.

An MMRec catalog's feature matrices (every ``<modality>_feat.npy``: TikTok's image and audio)
go into the feature store at ingest (fingerprint ``mmrec-npy-<modality>-<sha12>``, listed
in ``catalog.json`` under ``features``), and its items have no raw image or text for an
encoder to embed. ``--encoder imported`` (flow and study parameter ``encoder=imported``)
says: take every modality the catalog imported, as ingest stored it. ``befa run``,
``befa study``, ``befa train`` and ``befa extract`` take it, and the catalog watch follows it.

- Checked before any work, from ``catalog.json`` alone (:func:`stored_entries`) or, for a
  catalog still to be ingested, from the MMRec folder's file names
  (:func:`folder_modalities`): a catalog without imported features is refused naming
  ``--encoder`` and the catalog (:func:`refusal`).
- It stands alone: mixed into a per-modality spec (``image=imported,text=minilm``) the spec
  parser refuses it, saying so (:data:`encoders.spec.IMPORTED_STANDS_ALONE`). A catalog
  with raw content (the only one an encoder can embed) imports no features, and an MMRec
  catalog has no raw content, so a mix has nothing to run on.
- :func:`imported_summary` is what extraction returns for it (``extract_features`` hands the
  spec here): per modality the spec ``imported``, the weights label ``<folder>/<file>
  sha256:<file sha>`` (where the matrix came from), the store's current snapshot of that
  fingerprint (ingest committed it: exactly the catalog's items), nothing encoded and every
  item with a row counted as reused (``skipped``). A snapshot that is gone (another feature
  store than at ingest) or lacks items of the current catalog is an error saying to ingest
  again: never a silent mean-filled matrix.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from encoders.spec import IMPORTED, is_imported
from pipeline.data.catalog import Catalog
from pipeline.data.importers.mmrec import FEATURE_SUFFIX
from pipeline.data.versions import meta_path
from pipeline.features.summary import ExtractSummary, ModalitySummary
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey, modality_order

__all__ = ["IMPORTED", "NoImportedFeatures", "imported_summary", "is_imported", "refusal", "stored_entries"]

BACKEND = "none: imported at ingest"


class NoImportedFeatures(ValueError):
    """``--encoder imported`` on a catalog that has none (or whose stored ones are gone)."""


def refusal(dataset: str, why: str = "has no imported features") -> NoImportedFeatures:
    """The error for a catalog without imported features, naming the flag and the catalog."""
    return NoImportedFeatures(
        f"--encoder (encoder) imported: catalog {dataset!r} {why}; only an MMRec folder's "
        f"<modality>{FEATURE_SUFFIX} files are imported as features (`befa ingest mmrec --folder DIR`): "
        "give an encoder spec instead, e.g. --encoder 'image=effnet:lite2,text=minilm'"
    )


def imported_entries(meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """modality -> {fingerprint, dim, file, ...} of the features a catalog's meta lists, in modality order."""
    feats = meta.get("features") or {}
    entries = {m: dict(f) for m, f in feats.items() if isinstance(f, Mapping) and f.get("fingerprint")}
    return {m: entries[m] for m in modality_order(entries)}


def stored_entries(folder: str | Path) -> dict[str, dict[str, Any]]:
    """The imported features an ingested catalog's ``catalog.json`` lists (no Parquet is read);
    {} when there is no catalog there."""
    try:
        meta = json.loads(meta_path(folder).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return imported_entries(meta)


def folder_modalities(folder: str | Path) -> list[str]:
    """The modalities an MMRec folder would import: its ``<modality>_feat.npy`` file names."""
    path = Path(folder).expanduser()
    names = [p.name.removesuffix(FEATURE_SUFFIX) for p in path.glob(f"*{FEATURE_SUFFIX}")] if path.is_dir() else []
    return modality_order(names)


def weights_label(catalog: Catalog, modality: str, entry: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """Where the matrix came from: ``<ingest folder>/<file> sha256:<sha of the file>``."""
    file = str(entry.get("file") or f"{modality}{FEATURE_SUFFIX}")
    folder = ((catalog.meta.get("ingest") or {}).get("options") or {}).get("folder")
    where = str(Path(folder) / file) if folder else file
    sha = entry.get("sha256") or str(info.get("weights") or "").rpartition("sha256:")[2]
    return f"{where} sha256:{sha}" if sha else f"{where} (imported, {entry['fingerprint']})"


def imported_summary(catalog: Catalog, store: FeatureStore, modalities: Sequence[str] | None = None) -> ExtractSummary:
    """Each imported modality's current snapshot, as an extraction's summary (nothing encoded)."""
    t0 = time.perf_counter()
    entries = imported_entries(catalog.meta)
    if not entries:
        raise refusal(catalog.name)
    if modalities is not None:
        unknown = [m for m in modalities if m not in entries]
        if unknown:
            raise refusal(catalog.name, f"imported no {unknown[0]!r} features (it imported {list(entries)})")
        entries = {m: entries[m] for m in modality_order(modalities)}
    out = {m: _modality(catalog, store, m, entry) for m, entry in entries.items()}
    return ExtractSummary(dataset=catalog.name, modalities=out, seconds=time.perf_counter() - t0)


def _modality(catalog: Catalog, store: FeatureStore, modality: str, entry: Mapping[str, Any]) -> ModalitySummary:
    t0 = time.perf_counter()
    key = FeatureSetKey(catalog.name, entry["fingerprint"], modality)
    again = (
        f"ingest it again with this feature store (`befa ingest mmrec --folder DIR --as {catalog.name}`, "
        "or `befa run` with --ingest always)"
    )
    snap = store.current_snapshot(key)
    if snap is None:
        raise refusal(
            catalog.name,
            f"imported {modality} features ({key.fingerprint}) at ingest, but {store.root} has none: {again}",
        )
    keys = catalog.content_keys(modality)
    _, found = store.read(key, keys["item_id"].tolist(), keys["content_hash"].tolist(), snapshot=snap.id)
    if not found.all():
        raise refusal(
            catalog.name,
            f"has {int((~found).sum())} of {len(keys)} items without a row in {modality} snapshot {snap.id} "
            f"({key.fingerprint}): the store no longer matches the catalog; {again}",
        )
    summary = ModalitySummary(
        modality=modality,
        encoder=IMPORTED,
        fingerprint=key.fingerprint,
        weights=weights_label(catalog, modality, entry, store.encoder_info(key.fingerprint) or {}),
        random_init=False,
        dim=snap.dim,
        items=catalog.num_items,
        with_content=len(keys),
        skipped=len(keys),  # every vector is the store's own: nothing encoded
        device="none",
        precision="no encoder: imported at ingest",
        snapshot_id=snap.id,
        snapshot_rows=snap.num_rows,
    )
    summary.record_no_content(catalog.items)
    summary.seconds = time.perf_counter() - t0
    return summary
