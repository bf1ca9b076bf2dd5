"""The MMRec toolbox format, both ways (``mmrec``).

A folder holding

- ``<name>.inter``: tab-separated, header ``userID itemID rating timestamp x_label``;
  ids 0-based, the number of users/items is max id + 1; ``x_label`` 0 train, 1 valid,
  2 test;
- ``<m>_feat.npy`` (I x D_m), row i = item i, for any modality ``m``: ``image_feat.npy``,
  ``text_feat.npy``, ``audio_feat.npy``, ``video_feat.npy`` ... (every one is read; none is
  required). ``m`` must be a valid modality name (:func:`storage.keys.check_modality`:
  lowercase letters, digits, ``_``); a file whose name gives another one is refused.

Import: items are ``"0" .. str(I-1)`` with I = the feature matrices' row count (or max
itemID + 1 without features); ``item_idx`` = itemID. They have no raw text or image:
``text`` is empty and ``image`` null, and ``<m>_hash`` (``image_hash``, ``text_hash``,
``audio_hash`` ...) holds the sha256 of the item's feature row (float32 bytes), so the
content key of an imported feature changes exactly when the feature does. The matrices
are returned as ready-made features (fingerprint ``mmrec-npy-<modality>-<first 12 hex of
the .npy sha256>``) that :func:`pipeline.data.ingest.ingest` writes into the feature store
(``catalog.json`` lists them under ``features``); ``x_label`` becomes the named split
``given``: ``befa run/study/train --encoder imported --split-kind given`` train on both as they
are (:mod:`pipeline.features.imported`). Users are ``str(userID)``; with contiguous ids ``user_idx`` = userID (a gap is
reported: the catalog renumbers densely).

Export (:func:`export_mmrec`): a catalog, a split and per-modality matrices (or a feature
store + fingerprints) -> the same format, userID = user_idx, itemID = item_idx,
x_label = split label, so results can be cross-checked with the toolbox.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from pipeline.data.catalog import CatalogError, IngestReport, build_catalog
from pipeline.data.importers.base import ImportedFeatures, Importer, ImporterOptions, ImportResult, count_catalog
from pipeline.data.importers.timestamps import parse_timestamps
from pipeline.data.importers.validation import (
    parse_numbers,
    read_table,
    require_columns,
    require_file,
)
from storage.keys import check_modality, modality_order, sha256_file

INTER_COLUMNS = ["userID", "itemID", "rating", "timestamp", "x_label"]
FEATURE_SUFFIX = "_feat.npy"


def feature_file(modality: str) -> str:
    """The MMRec file name of a modality's features: ``audio`` -> ``audio_feat.npy``."""
    return f"{check_modality(modality)}{FEATURE_SUFFIX}"


class MMRecOptions(ImporterOptions):
    folder: Path = Field(
        description="MMRec dataset folder: <name>.inter and any <modality>_feat.npy (image, text, audio, video, ...)"
    )
    inter: str | None = Field(None, description="the .inter file name in --folder (default: the only *.inter there)")
    name: str | None = None  # catalog name; default: the .inter file's stem


def row_hashes(matrix: np.ndarray) -> list[str]:
    """sha256 of each row's float32 little-endian bytes."""
    m = np.ascontiguousarray(matrix, dtype="<f4")
    return [hashlib.sha256(m[i].tobytes()).hexdigest() for i in range(m.shape[0])]


def _int_ids(values: pd.Series, path: Path, column: str) -> np.ndarray:
    num = parse_numbers(values, path, column)
    bad = (num < 0) | (num != np.floor(num))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CatalogError(path, f"{column} {values.iloc[i]!r} is not a 0-based integer id", i + 1)
    return num.astype(np.int64)


def _load_npy(path: Path) -> np.ndarray:
    require_file(path, "feature file")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise CatalogError(path, f"not a readable .npy array: {exc}") from exc
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise CatalogError(
            path, f"expected a 2-D numeric array (items x dims), found shape {arr.shape} dtype {arr.dtype}"
        )
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise CatalogError(path, f"item {i} has a non-finite feature value ({int((~finite).sum())} such rows)", i + 1)
    return arr


class MMRecImporter(Importer):
    name = "mmrec"
    dataset = None
    given_split = True  # x_label
    Options = MMRecOptions

    def run(self, o: MMRecOptions) -> ImportResult:
        folder = Path(o.folder)
        if not folder.is_dir():
            raise CatalogError(folder, "missing MMRec dataset folder")
        inter_path = _inter_file(folder, o.inter)
        name = o.name or inter_path.stem
        report = IngestReport(dataset=name)
        report.sources = {"interactions": str(inter_path)}
        inter, labels = _read_inter(inter_path, report)

        features = _feature_files(folder, report)
        rows = {m: f.matrix.shape[0] for m, f in features.items()}
        if len(set(rows.values())) > 1:
            raise CatalogError(folder, f"feature files disagree on the number of items: {rows}")
        item_ids = inter["item_id"].to_numpy(dtype=np.int64)
        n_items = next(iter(rows.values())) if rows else int(item_ids.max()) + 1
        too_big = item_ids >= n_items
        if too_big.any():
            i = int(np.flatnonzero(too_big)[0])
            raise CatalogError(
                inter_path, f"itemID {item_ids[i]} has no feature row (the .npy files have {n_items} rows)", i + 1
            )
        report.counts_in["items"] = n_items

        items = pd.DataFrame(
            {"item_id": np.arange(n_items).astype(str), "title": "", "text": "", "image": None, "image_hash": None}
        )
        inter["item_id"] = inter["item_id"].astype(str)
        meta: dict[str, Any] = {"source": "mmrec", "given_splits": ["given"], "features": {}}
        catalog = build_catalog(name, items, inter, meta=meta)
        for modality, feat in features.items():
            catalog.items[f"{modality}_hash"] = row_hashes(feat.matrix)
            meta["features"][modality] = {
                "fingerprint": feat.fingerprint,
                "dim": int(feat.matrix.shape[1]),
                "file": feat.source.name,
                "sha256": feat.sha256,  # of the file: where the matrix came from (--encoder imported says so)
            }
        count_catalog(report, catalog)
        report.notes.append(
            "items carry no raw text/image; content hashes (<modality>_hash) are sha256 of the imported feature rows"
        )
        split = pd.DataFrame(
            {
                "user_idx": catalog.interactions["user_idx"].to_numpy(),
                "item_idx": catalog.interactions["item_idx"].to_numpy(),
                "label": labels.astype(np.int8),
            }
        )
        return ImportResult(catalog=catalog, report=report, given_splits={"given": split}, features=features)


def _inter_file(folder: Path, named: str | None) -> Path:
    """The ``.inter`` file named, else the folder's only one."""
    if named:
        return folder / named
    found = sorted(folder.glob("*.inter"))
    if len(found) != 1:
        raise CatalogError(
            folder, f"expected exactly one *.inter file, found {[p.name for p in found]}; name one with --inter"
        )
    return found[0]


def _read_inter(inter_path: Path, report: IngestReport) -> tuple[pd.DataFrame, np.ndarray]:
    """The interactions (user_id as text, item_id as the integer itemID, rating, timestamp) and the x_label column."""
    raw = read_table(inter_path, "MMRec .inter file", sep="\t")
    require_columns(raw, inter_path, ["userID", "itemID", "x_label"])
    if len(raw) == 0:
        raise CatalogError(inter_path, "empty catalog: no interactions")
    users = _int_ids(raw["userID"], inter_path, "userID")
    item_ids = _int_ids(raw["itemID"], inter_path, "itemID")
    labels = _int_ids(raw["x_label"], inter_path, "x_label")
    bad = ~np.isin(labels, [0, 1, 2])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CatalogError(
            inter_path, f"x_label {raw['x_label'].iloc[i]!r} must be 0 (train), 1 (valid) or 2 (test)", i + 1
        )
    rating = parse_numbers(raw["rating"], inter_path, "rating") if "rating" in raw else np.ones(len(raw))
    ts = (
        parse_timestamps(raw["timestamp"], inter_path, "timestamp")
        if "timestamp" in raw
        else np.zeros(len(raw), np.int64)
    )
    report.counts_in.update(interactions=len(raw), users=int(users.max()) + 1)
    gaps = np.setdiff1d(np.arange(users.max() + 1), users)
    if gaps.size:
        report.add(
            f"{gaps.size} userIDs below the maximum never appear (e.g. {gaps[:5].tolist()})",
            "users renumbered densely: user_idx differs from userID",
            file=inter_path,
        )
    inter = pd.DataFrame({"user_id": users.astype(str), "item_id": item_ids, "rating": rating, "timestamp": ts})
    return inter, labels


def _feature_files(folder: Path, report: IngestReport) -> dict[str, ImportedFeatures]:
    """Every ``<modality>_feat.npy`` the folder holds, in modality order (image, text, then by name)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.glob(f"*{FEATURE_SUFFIX}")):
        modality = path.name.removesuffix(FEATURE_SUFFIX)
        try:
            check_modality(modality)
        except ValueError as exc:
            raise CatalogError(
                path, f"{exc}; a feature file is named <modality>{FEATURE_SUFFIX}: rename or move it"
            ) from None
        found[modality] = path
    if not found:
        report.notes.append(f"no *{FEATURE_SUFFIX} file: no ready-made features")
    for missing in [m for m in ("image", "text") if m not in found and found]:
        report.notes.append(f"no {feature_file(missing)}: no ready-made {missing} features")
    features: dict[str, ImportedFeatures] = {}
    for modality in modality_order(found):
        path = found[modality]
        features[modality] = ImportedFeatures(modality, _load_npy(path), path, sha256_file(path))
        report.sources[f"{modality}_features"] = str(path)
        zero = int((~features[modality].matrix.any(axis=1)).sum())
        if zero:
            # some toolbox files mark a missing modality with a zero row; kept as given
            report.notes.append(f"{path.name}: {zero} all-zero rows (kept as features, as the toolbox does)")
    return features
