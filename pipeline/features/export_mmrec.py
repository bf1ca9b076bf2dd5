"""``befa export-mmrec``: a stored catalog, a split and features, exactly as befa trains on
them, in the MMRec toolbox format (the files are written by ``pipeline.data.mmrec_files``).

The feature matrices come from :func:`pipeline.features.load.load_features` with the
training fill: an item without a feature (no poster, text empty, decode failed) gets the
mean of the present rows, as in training. Zero rows would not be what befa trained on, and
in the toolbox a zero row makes the cosine kNN graph of its modality NaN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.catalog import Catalog
from pipeline.data.mmrec_files import export_mmrec
from pipeline.data.splits import Split
from pipeline.features.load import load_features
from pipeline.settings import Settings
from storage.feature_store import FeatureStore


def export_command(
    catalog_name: str,
    split_name: str,
    dest: str | Path,
    settings: Settings,
    fingerprints: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Export catalog ``catalog_name``, its split ``splits/<split_name>.parquet`` and, per
    modality, the current features of ``fingerprints`` (an MMRec catalog's own imported
    fingerprints when none are given). Returns what was written, with the filled rows."""
    folder = settings.catalog_dir(catalog_name)
    catalog = Catalog.load(folder)
    split = Split.load(catalog.splits_dir / f"{split_name}.parquet")
    if fingerprints is None:
        fingerprints = {m: f["fingerprint"] for m, f in catalog.meta.get("features", {}).items()}
    bundle = load_features(catalog, FeatureStore(settings.feature_store), fingerprints, fill="mean")
    matrices = {m: bundle.features[m].numpy() for m in bundle.features}
    inter = export_mmrec(catalog, split, dest, matrices, name=catalog_name)
    items_in_inter = int(split.frame["item_idx"].nunique())
    return {
        "inter": str(inter),
        "rows": len(split.frame),
        "items": catalog.num_items,
        "items_without_interactions": catalog.num_items - items_in_inter,
        "features": {m: list(x.shape) for m, x in matrices.items()},
        "mean_filled_rows": {m: int((~bundle.masks[m]).sum()) for m in bundle.masks},
        "snapshots": dict(bundle.snapshots),
    }
