"""From a catalog split and loaded features to what the trainer consumes.

``prepare_data`` turns a split table (user_idx, item_idx, label 0 train / 1 valid /
2 test) plus a :class:`FeatureBundle` (modality -> (I, D) float32 tensor, modality ->
(I,) bool mask, modality -> snapshot id; ``pipeline.features.load`` reads one) into:

- ``TrainData`` (``models.base``): the train graph and the features, on the device;
- an ``Evaluator`` with the train mask and the valid and test ground truth.

Sizes come from the catalog: items are the catalog's items (cold items stay rankable),
users are max(user_idx) + 1 (never nunique). Duplicate (user, item) rows inside a part
are collapsed; valid/test rows of users with no train row are dropped (spec section 1)
and counted in ``PreparedData.notes``. Bad input raises a ValueError naming the row.
The evaluator also reports metrics per item group (warm, cold when the split records
cold items, long tail by train popularity: ``pipeline.evaluation.groups``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from models.base import TrainData
from pipeline.evaluation.evaluator import Evaluator, UserItems
from pipeline.evaluation.groups import item_groups
from pipeline.features.bundle import FeatureBundle

TRAIN, VALID, TEST = 0, 1, 2


@dataclass
class PreparedData:
    train: TrainData
    evaluator: Evaluator
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    feature_sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # FeatureBundle.provenance()


def _split_frame(split: Any) -> tuple[pd.DataFrame, str]:
    if isinstance(split, pd.DataFrame):
        return split, "unknown"
    frame = getattr(split, "frame", None)
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a Split (with .frame) or a DataFrame, got {type(split).__name__}")
    split_id = getattr(split, "id", None) or getattr(split, "name", "unknown")
    return frame, str(split_id)


def _check_frame(frame: pd.DataFrame, num_users: int | None, num_items: int) -> None:
    for col in ("user_idx", "item_idx", "label"):
        if col not in frame:
            raise ValueError(f"split table lacks column {col!r} (has {list(frame.columns)})")
    for col, hi in (("user_idx", num_users), ("item_idx", num_items)):
        values = frame[col].to_numpy()
        bad = values < 0 if hi is None else (values < 0) | (values >= hi)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            limit = "" if hi is None else f" (catalog has {hi})"
            raise ValueError(f"split table row {row + 1}: {col} = {values[row]} is out of range{limit}")
    labels = frame["label"].to_numpy()
    bad = ~np.isin(labels, [TRAIN, VALID, TEST])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"split table row {row + 1}: label {labels[row]!r} is not 0 (train), 1 (valid) or 2 (test)")


def _check_features(features: Mapping[str, Tensor], masks: Mapping[str, Tensor], num_items: int) -> None:
    for modality, x in features.items():
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(
                f"features[{modality!r}] must be a 2-D tensor (items x dims), got {getattr(x, 'shape', type(x))}"
            )
        if x.size(0) != num_items:
            raise ValueError(
                f"features[{modality!r}] has {x.size(0)} rows but the catalog has {num_items} items "
                "(features must be aligned to item_idx)"
            )
        m = masks.get(modality)
        if m is not None and m.numel() != num_items:
            raise ValueError(f"feature mask {modality!r} has {m.numel()} entries for {num_items} items")


def prepare_data(
    split: Any,
    num_items: int,
    features: FeatureBundle | None = None,
    num_users: int | None = None,
    device: torch.device | str = "cpu",
    graph_cache_dir: str | Path | None = None,
) -> PreparedData:
    """Build ``TrainData`` and the valid/test ``Evaluator`` from a split and features."""
    frame, split_id = _split_frame(split)
    bundle = features if features is not None else FeatureBundle.empty()
    features, masks, snapshots = dict(bundle.features), dict(bundle.masks), dict(bundle.snapshots)
    _check_frame(frame, num_users, num_items)
    _check_features(features, masks, num_items)
    device = torch.device(device)
    users = frame["user_idx"].to_numpy(np.int64)
    items = frame["item_idx"].to_numpy(np.int64)
    labels = frame["label"].to_numpy()
    if num_users is None:
        num_users = int(users.max()) + 1 if users.size else 0
    notes: list[str] = []

    parts = _parts(users, items, labels, num_users, num_items, notes)

    def tensor(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    tu, ti = tensor(parts[TRAIN][0]), tensor(parts[TRAIN][1])
    train = TrainData(
        num_users=num_users,
        num_items=num_items,
        train_users=tu,
        train_items=ti,
        features={m: x.to(device=device, dtype=torch.float32) for m, x in features.items()},
        feature_masks={m: masks[m].to(device=device, dtype=torch.bool) for m in features if m in masks},
        feature_snapshots={m: str(snapshots.get(m, "unknown")) for m in features},
        split_id=split_id,
        graph_cache_dir=Path(graph_cache_dir) if graph_cache_dir is not None else None,
    )
    heldout = {
        name: UserItems.from_pairs(num_users, tensor(parts[lab][0]), tensor(parts[lab][1]))
        for lab, name in ((VALID, "valid"), (TEST, "test"))
    }
    # item groups (warm / cold / long tail) from train popularity and the split's cold list
    groups = item_groups(num_items, parts[TRAIN][1], getattr(split, "meta", {}).get("cold_items"))
    evaluator = Evaluator(UserItems.from_pairs(num_users, tu, ti), heldout, num_items, item_groups=groups)
    counts = {
        "users": num_users,
        "items": num_items,
        "train": int(tu.numel()),
        "valid": int(parts[VALID][0].size),
        "test": int(parts[TEST][0].size),
    }
    return PreparedData(train=train, evaluator=evaluator, notes=notes, counts=counts, feature_sets=bundle.provenance())


def _parts(
    users: np.ndarray, items: np.ndarray, labels: np.ndarray, num_users: int, num_items: int, notes: list[str]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """label -> (users, items): duplicates collapsed, valid/test rows of users without a
    train row dropped (each counted in ``notes``)."""
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for lab, name in ((TRAIN, "train"), (VALID, "valid"), (TEST, "test")):
        sel = labels == lab
        keys = np.unique(users[sel] * num_items + items[sel])
        if keys.size != int(sel.sum()):
            notes.append(f"{name}: {int(sel.sum()) - keys.size} duplicate (user, item) rows collapsed")
        parts[lab] = (keys // num_items, keys % num_items)
    if parts[TRAIN][0].size == 0:
        raise ValueError("split has no train rows (label 0)")
    has_train = np.zeros(num_users, dtype=bool)
    has_train[parts[TRAIN][0]] = True
    for lab, name in ((VALID, "valid"), (TEST, "test")):
        u, i = parts[lab]
        keep = has_train[u]
        if not keep.all():
            notes.append(f"{name}: {int((~keep).sum())} rows of users with no train row dropped")
            parts[lab] = (u[keep], i[keep])
    return parts
