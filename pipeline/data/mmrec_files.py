"""Catalogs out: a catalog, a split and features in the MMRec toolbox format
(``<name>.inter`` + one ``<modality>_feat.npy`` per modality: image, text, audio, ... +
``item_map.tsv``), so results can be checked against the reference implementation.
``befa export-mmrec`` fills the matrices as training does
(``pipeline.features.export_mmrec``); this module writes the files.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.catalog import Catalog, CatalogError
from pipeline.data.importers.mmrec import feature_file
from storage.atomic import atomic_path, write_text
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey, check_modality


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def features_from_store(
    store: FeatureStore, catalog: Catalog, fingerprint: str, modality: str
) -> tuple[np.ndarray, np.ndarray]:
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


ITEM_MAP = "item_map.tsv"


def exported_item_ids(num_items: int, split_items: np.ndarray) -> np.ndarray:
    """befa item_idx -> the itemID written for MMRec.

    MMRec counts items as max(itemID) + 1 over the ``.inter`` file, so items after the last
    one that has an interaction would be lost (and its models crash on the shape of the
    ``.npy``). When that happens, the items without any interaction in the split are moved
    to the front and the others follow in befa's order; otherwise the ids are befa's."""
    present = np.zeros(num_items, dtype=bool)
    present[split_items] = True
    if num_items == 0 or present[-1]:
        return np.arange(num_items, dtype=np.int64)
    order = np.concatenate([np.flatnonzero(~present), np.flatnonzero(present)])
    ids = np.empty(num_items, dtype=np.int64)
    ids[order] = np.arange(num_items, dtype=np.int64)
    return ids


def export_mmrec(
    catalog: Catalog,
    split,
    dest: str | Path,
    features: dict[str, np.ndarray] | None = None,
    name: str | None = None,
) -> Path:
    """Write ``<dest>/<name>.inter`` (+ ``<modality>_feat.npy`` for each given matrix, any
    modality name, row i = befa item_idx i, reordered with the items) and ``item_map.tsv``
    (item_id, befa item_idx, MMRec itemID). ``split`` is a :class:`pipeline.data.splits.Split`
    or a frame with user_idx, item_idx, label. Rating and timestamp come from the catalog's
    first interaction of each (user, item) pair. Returns the .inter path."""
    dest = Path(dest)
    name = name or catalog.name
    frame = split.frame if hasattr(split, "frame") else split
    ev = catalog.interactions.drop_duplicates(["user_idx", "item_idx"], keep="first").set_index(
        ["user_idx", "item_idx"]
    )
    key = pd.MultiIndex.from_arrays([frame["user_idx"].to_numpy(np.int64), frame["item_idx"].to_numpy(np.int64)])
    found = key.isin(ev.index)
    if not found.all():
        i = int(np.flatnonzero(~found)[0])
        raise CatalogError(
            None,
            f"split row {i + 1} (user_idx {key[i][0]}, item_idx {key[i][1]}) "
            f"is not an interaction of catalog {catalog.name!r}",
        )
    for modality, matrix in (features or {}).items():
        check_modality(modality, "export_mmrec")
        if matrix.shape[0] != catalog.num_items:
            raise ValueError(f"{modality} features have {matrix.shape[0]} rows, catalog has {catalog.num_items} items")
    ev = ev.reindex(key)
    item_ids = exported_item_ids(catalog.num_items, frame["item_idx"].to_numpy(np.int64))
    out = pd.DataFrame(
        {
            "userID": frame["user_idx"].to_numpy(np.int64),
            "itemID": item_ids[frame["item_idx"].to_numpy(np.int64)],
            "rating": ev["rating"].to_numpy(np.float64),
            "timestamp": ev["timestamp"].to_numpy(np.int64),
            "x_label": frame["label"].to_numpy(np.int64),
        }
    )
    # ratings print without a trailing ".0" when integral, as in the toolbox's files
    out["rating"] = [f"{r:g}" if r == int(r) else repr(float(r)) for r in out["rating"]]
    inter_path = dest / f"{name}.inter"
    write_text(inter_path, out.to_csv(sep="\t", index=False, lineterminator="\n"))
    items = catalog.items.sort_values("item_idx")
    mapping = pd.DataFrame(
        {"item_id": items["item_id"].to_numpy(), "item_idx": items["item_idx"].to_numpy(np.int64), "itemID": item_ids}
    )
    write_text(dest / ITEM_MAP, mapping.to_csv(sep="\t", index=False, lineterminator="\n"))
    order = np.argsort(item_ids)  # row j of the .npy is the befa item exported as itemID j
    for modality, matrix in (features or {}).items():
        _save_npy(dest / feature_file(modality), matrix[order])
    return inter_path
