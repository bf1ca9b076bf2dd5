"""Reading a feature set back, aligned to a catalog's item index, as a ``FeatureBundle``.

The store hands back numpy rows keyed by (item_id, content hash); this is where they
become float32 torch tensors, with masks for items that have no feature and the
snapshot ids that were read (so a run can record exactly which features it used).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch

from pipeline.data.catalog import Catalog, CatalogError
from pipeline.features.bundle import FeatureBundle
from pipeline.features.extract import extract_features
from storage.feature_store import FeatureStore
from storage.keys import ENCODED_MODALITIES, FeatureSetKey, check_modality
from storage.snapshots import Snapshot


# ---------------------------------------------------------------------------- reading back
def _snapshot_to_read(store: FeatureStore, key: FeatureSetKey, wanted: str | None) -> Snapshot:
    """The snapshot id ``wanted`` of ``key``, or its current one; a CatalogError saying what to run when absent."""
    if wanted is None:
        snap = store.current_snapshot(key)
    else:
        snap = next((s for s in store.snapshots(key) if s.id == wanted), None)
    if snap is None:
        what = f"snapshot {wanted}" if wanted else "features"
        fix = (
            f"run `befa extract --dataset {key.dataset} --encoder <spec>` first"
            if key.modality in ENCODED_MODALITIES
            else f"{key.modality} features are imported, not encoded: `befa ingest mmrec` a folder with "
            f"{key.modality}_feat.npy"
        )
        raise CatalogError(
            None,
            f"no {key.modality} {what} for dataset {key.dataset!r} under encoder {key.fingerprint!r} in {store.root} "
            f"({fix})",
        )
    return snap


def _aligned(
    store: FeatureStore, key: FeatureSetKey, snap: Snapshot, catalog: Catalog, as_recorded: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(I, D) float32 rows by item_idx and the (I,) mask of items whose current content has a feature.

    ``as_recorded``: the snapshot's own row of each item id, whatever its content is now, so
    a run's recorded snapshot gives back exactly what the run trained on after the catalog
    was edited (the current content hashes would drop the edited items).

    The store's numpy rows (possibly a read-only view of its buffer) are scattered into a
    new array, which torch then wraps without a copy.
    """
    n = catalog.num_items
    out = np.zeros((n, snap.dim), dtype=np.float32)
    mask = np.zeros(n, dtype=bool)
    keys = catalog.items[["item_id", "item_idx"]] if as_recorded else catalog.content_keys(key.modality)
    if len(keys):
        hashes = None if as_recorded else keys["content_hash"].tolist()
        x, found = store.read(key, keys["item_id"].tolist(), hashes, snapshot=snap.id)
        idx = keys["item_idx"].to_numpy(dtype=np.int64)[found]
        out[idx] = x[found]  # indexing copies: the store's read-only buffer is never written
        mask[idx] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def load_features(
    catalog: Catalog,
    store: FeatureStore,
    fingerprints_by_modality: Mapping[str, str],
    fill: Literal["mean", "zero"] = "mean",
    snapshots: Mapping[str, str] | None = None,
    as_recorded: bool = False,
) -> FeatureBundle:
    """Feature matrices aligned to ``item_idx``, with masks and the snapshot ids read.

    For each modality, row i is the feature of item i computed from its current
    content (the stored content hash must equal the catalog's). Items without one
    (no image, image failed to decode, text empty, not extracted yet) have mask
    False and a filled row:

    - ``fill="mean"`` (default): the mean of the present rows (the centroid; not
      re-normalised). A missing item then sits in the middle of the feature cloud:
      it gets neutral kNN neighbours and projections instead of a zero vector,
      which cosine similarity cannot handle and a linear projection maps to its
      bias. If no row is present, zeros.
    - ``fill="zero"``: zeros.

    Models receive the mask and may treat those items specially.

    Args:
        snapshots: modality -> snapshot id to read exactly a recorded state
            (default: each feature set's current snapshot).
        as_recorded: read each snapshot's own rows by item id, ignoring today's content
            hashes (a run's recorded snapshots after the catalog changed; see ``_aligned``).

    Returns:
        ``FeatureBundle(features {m: (I, D) float32}, masks {m: (I,) bool}, snapshots {m: id})``.
    """
    if fill not in ("mean", "zero"):
        raise ValueError(f"fill must be 'mean' or 'zero', got {fill!r}")
    feats: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    snap_ids: dict[str, str] = {}
    for modality, fp in fingerprints_by_modality.items():
        check_modality(modality, "load_features")  # any name: image, text, audio (imported), ...
        key = FeatureSetKey(catalog.name, fp, modality)
        snap = _snapshot_to_read(store, key, (snapshots or {}).get(modality))
        out, mask = _aligned(store, key, snap, catalog, as_recorded and (snapshots or {}).get(modality) is not None)
        if fill == "mean" and mask.any() and not mask.all():
            out[~mask] = out[mask].mean(dim=0)
        feats[modality], masks[modality], snap_ids[modality] = out, mask, snap.id
    fingerprints = dict(fingerprints_by_modality)
    random_init = {m: bool((store.encoder_info(fp) or {}).get("random_init")) for m, fp in fingerprints.items()}
    return FeatureBundle(feats, masks, snap_ids, fingerprints, random_init)


def features_for_training(
    catalog: Catalog, encoder: str, store: FeatureStore, device: str | None = None, progress: bool = True
) -> FeatureBundle:
    """Extract what is missing (incremental: usually nothing) and load the current features;
    ``encoder="imported"``: the catalog's imported features as ingest stored them."""
    summary = extract_features(catalog, encoder, store, device=device, progress=progress)
    fps = {m: s.fingerprint for m, s in summary.modalities.items() if s.snapshot_id}
    return load_features(catalog, store, fps, snapshots={m: summary.snapshot_ids[m] for m in fps})
