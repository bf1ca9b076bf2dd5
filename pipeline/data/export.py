"""Catalogs out: a catalog, a split and features in the MMRec toolbox format
(``<name>.inter`` + ``image_feat.npy`` / ``text_feat.npy``), so results can be checked
against the reference implementation (``befa export-mmrec``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.catalog import Catalog, CatalogError
from pipeline.data.importers.mmrec import FEATURE_FILES
from pipeline.data.splits import Split
from pipeline.settings import Settings
from storage.atomic import atomic_path, write_text
from storage.feature_store import FeatureStore
from storage.keys import MODALITIES, FeatureSetKey


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def features_from_store(store: FeatureStore, catalog: Catalog, fingerprint: str, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """(I x D float32 matrix aligned with item_idx, present mask) read from a FeatureStore."""
    # only items with content have a key; the others stay zero (MMRec needs every row)
    keys = catalog.content_keys(modality)
    info = store.encoder_info(fingerprint) or {}
    if len(keys):
        key = FeatureSetKey(catalog.name, fingerprint, modality)
        x, got = store.read(key, keys["item_id"].tolist(), keys["content_hash"].tolist())
        dim = x.shape[1]
    else:
        x, got, dim = None, None, int(info.get("dim") or 0)
    matrix = np.zeros((catalog.num_items, dim), dtype=np.float32)
    mask = np.zeros(catalog.num_items, dtype=bool)
    if x is not None:
        idx = keys["item_idx"].to_numpy(np.int64)[got]
        matrix[idx] = x[got]
        mask[idx] = True
    return matrix, mask


def export_mmrec(
    catalog: Catalog,
    split,
    dest: str | Path,
    features: dict[str, np.ndarray] | None = None,
    name: str | None = None,
) -> Path:
    """Write ``<dest>/<name>.inter`` (+ ``image_feat.npy``/``text_feat.npy`` for the given
    matrices, row i = item_idx i). ``split`` is a :class:`pipeline.data.splits.Split` or a frame
    with user_idx, item_idx, label. Rating and timestamp come from the catalog's first
    interaction of each (user, item) pair. Returns the .inter path."""
    dest = Path(dest)
    name = name or catalog.name
    frame = split.frame if hasattr(split, "frame") else split
    ev = catalog.interactions.drop_duplicates(["user_idx", "item_idx"], keep="first").set_index(["user_idx", "item_idx"])
    key = pd.MultiIndex.from_arrays([frame["user_idx"].to_numpy(np.int64), frame["item_idx"].to_numpy(np.int64)])
    found = key.isin(ev.index)
    if not found.all():
        i = int(np.flatnonzero(~found)[0])
        raise CatalogError(None, f"split row {i + 1} (user_idx {key[i][0]}, item_idx {key[i][1]}) is not an interaction of catalog {catalog.name!r}")
    ev = ev.reindex(key)
    out = pd.DataFrame(
        {
            "userID": frame["user_idx"].to_numpy(np.int64),
            "itemID": frame["item_idx"].to_numpy(np.int64),
            "rating": ev["rating"].to_numpy(np.float64),
            "timestamp": ev["timestamp"].to_numpy(np.int64),
            "x_label": frame["label"].to_numpy(np.int64),
        }
    )
    # ratings print without a trailing ".0" when integral, as in the toolbox's files
    out["rating"] = [f"{r:g}" if r == int(r) else repr(float(r)) for r in out["rating"]]
    inter_path = dest / f"{name}.inter"
    write_text(inter_path, out.to_csv(sep="\t", index=False, lineterminator="\n"))
    for modality, matrix in (features or {}).items():
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        if matrix.shape[0] != catalog.num_items:
            raise ValueError(f"{modality} features have {matrix.shape[0]} rows, catalog has {catalog.num_items} items")
        _save_npy(dest / FEATURE_FILES[modality], matrix)
    return inter_path


def export_command(
    catalog_name: str,
    split_name: str,
    dest: str | Path,
    settings: Settings,
    fingerprints: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What ``befa export-mmrec`` runs: the stored catalog, its split
    ``splits/<split_name>.parquet`` and, per modality, the features of ``fingerprints``
    from the feature store (items without a feature get a zero row, counted in the
    result; an MMRec catalog's own imported fingerprints are used when none are given)."""

    folder = settings.catalog_dir(catalog_name)
    catalog = Catalog.load(folder)
    split = Split.load(folder / "splits" / f"{split_name}.parquet")
    if fingerprints is None:
        fingerprints = {m: f["fingerprint"] for m, f in catalog.meta.get("features", {}).items()}
    store = FeatureStore(settings.feature_store)
    matrices, missing = {}, {}
    for modality, fp in fingerprints.items():
        matrix, mask = features_from_store(store, catalog, fp, modality)
        matrices[modality], missing[modality] = matrix, int((~mask).sum())
    inter = export_mmrec(catalog, split, dest, matrices, name=catalog_name)
    return {"inter": str(inter), "rows": len(split.frame), "features": {m: list(x.shape) for m, x in matrices.items()}, "missing_rows": missing}
