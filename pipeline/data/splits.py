"""Train/valid/test splits (spec section 1), stored with the dataset.

- ``split_random``: the MMRec rule. Each user's interactions are shuffled with the
  seed; a user with n < 10 interactions gives n - 2 train, 1 valid, 1 test; others give
  int(0.2 n) held out, half (rounded down) valid and the rest test (about 8:1:1).
  Choice where the spec is silent: users with n < 3 keep everything in train (holding out
  would leave them without a train row, and the spec drops such users' held-out rows
  anyway), so no user is lost.
- ``split_temporal``: leave-last-out by timestamp (ties broken by item index): the last
  interaction is test, the one before valid, the rest train; n < 3 as above.
- ``split_cold_items``: the item cold-start split. A seeded ``cold_fraction`` of the
  items that have interactions is drawn as *cold*: every interaction of a cold item goes
  to valid or test (alternating over the item's interactions in a seeded order, so each
  cold item is split about evenly), none to train. The other (warm) interactions follow
  the MMRec rule above, per user over the user's warm interactions. The cold item list is
  kept in the split's meta (``cold_items``, also in ``<name>.json``) so that evaluation
  reports the cold group; a user whose items are all cold has no train row, and the
  trainer drops such users' held-out rows (spec section 1), with a note.
- ``given`` (:func:`load_given`): the split a source comes with (MMRec ``x_label``, Amazon's
  train/val/test), kept at ingest as ``given``; used as it is (no k-core, no seed).
- ``kcore``: optional iterative k-core filter applied before splitting (5-core is the
  benchmark convention). Item and user indices are kept: items filtered out stay in the
  ranking universe as cold items, so features stay aligned with the catalog.

A split is a table (user_idx, item_idx, label) with label 0 train / 1 valid / 2 test,
the same encoding as MMRec's ``x_label``. The same catalog, options and seed always
give the same split (tested), and the split id hashes its content.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.catalog import Catalog
from storage.atomic import write_json, write_parquet

TRAIN, VALID, TEST = 0, 1, 2
GIVEN = "given"  # the name (and split kind) of the split a source comes with
LABEL_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}


@dataclass
class Split:
    name: str
    frame: pd.DataFrame  # user_idx int64, item_idx int64, label int8
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        h = hashlib.sha256(self.name.encode())
        h.update(np.ascontiguousarray(self.frame[["user_idx", "item_idx"]].to_numpy(np.int64)).tobytes())
        h.update(np.ascontiguousarray(self.frame["label"].to_numpy(np.int8)).tobytes())
        return f"{self.name}-{h.hexdigest()[:10]}"

    def part(self, label: int) -> pd.DataFrame:
        return self.frame[self.frame["label"] == label]

    def counts(self) -> dict[str, int]:
        vc = self.frame["label"].value_counts()
        return {LABEL_NAMES[k]: int(vc.get(k, 0)) for k in (TRAIN, VALID, TEST)}

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        path = folder / f"{self.name}.parquet"
        write_parquet(path, pa.Table.from_pandas(self.frame, preserve_index=False))
        write_json(
            folder / f"{self.name}.json", {**self.meta, "name": self.name, "id": self.id, "counts": self.counts()}
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such split (run `befa split` first)")
        frame = pq.read_table(path).to_pandas()
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return cls(name=path.stem, frame=frame, meta=meta)

    @classmethod
    def from_labels(cls, name: str, frame: pd.DataFrame, meta: dict[str, Any] | None = None) -> "Split":
        """Wrap a given split (e.g. MMRec x_label, Amazon train/val/test json)."""
        bad = ~frame["label"].isin([TRAIN, VALID, TEST])
        if bad.any():
            raise ValueError(
                f"split {name!r}: label must be 0/1/2, "
                f"row {int(np.flatnonzero(bad)[0]) + 1} has {frame['label'][bad].iloc[0]!r}"
            )
        return cls(name=name, frame=_canonical(frame), meta=dict(meta or {}, kind="given"))

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "given"))

    @property
    def cold_items(self) -> np.ndarray | None:
        """item_idx of the items held out as cold (sorted), or None when the split has none."""
        cold = self.meta.get("cold_items")
        return None if cold is None else np.asarray(cold, dtype=np.int64)

    def subsample_train(self, fraction: float, seed: int) -> "Split":
        """Keep ``fraction`` of each user's train rows (at least one), valid/test unchanged.

        Used by the sparsity sweep: behaviour gets scarce while the evaluation stays fixed."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        train = self.part(TRAIN)
        rng = np.random.default_rng(seed)
        pos = _positions_within_user(train["user_idx"].to_numpy(), rng)
        n = train.groupby("user_idx")["user_idx"].transform("size").to_numpy()
        keep = pos < np.maximum(1, np.floor(n * fraction)).astype(np.int64)
        frame = pd.concat([train[keep], self.frame[self.frame["label"] != TRAIN]])
        name = f"{self.name}-train{int(round(fraction * 100))}"
        return Split(
            name=name, frame=_canonical(frame), meta=dict(self.meta, train_fraction=fraction, subsample_seed=seed)
        )


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "user_idx": frame["user_idx"].to_numpy(np.int64),
            "item_idx": frame["item_idx"].to_numpy(np.int64),
            "label": frame["label"].to_numpy(np.int8),
        }
    )
    return out.sort_values(["label", "user_idx", "item_idx"], kind="stable").reset_index(drop=True)


def _positions_within_user(users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded random rank 0..n_u-1 for each row among its user's rows."""
    order = np.lexsort((rng.permutation(len(users)), users))
    pos = np.empty(len(users), dtype=np.int64)
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    pos[order] = np.arange(len(users)) - run_start
    return pos


def _labels_from_positions(pos: np.ndarray, n: np.ndarray) -> np.ndarray:
    """MMRec rule given each row's position within its user's shuffled list and n_u."""
    small = n < 10
    held = np.where(small, 2, (0.2 * n).astype(np.int64))
    n_valid = np.where(small, 1, held // 2)
    held = np.where(n < 3, 0, held)
    n_valid = np.where(n < 3, 0, n_valid)
    n_train = n - held
    label = np.full(len(pos), TRAIN, dtype=np.int8)
    label[(pos >= n_train) & (pos < n_train + n_valid)] = VALID
    label[pos >= n_train + n_valid] = TEST
    return label


def kcore(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively drop users and items with fewer than ``k`` interactions."""
    df = interactions
    while True:
        u = df.groupby("user_idx")["item_idx"].transform("size")
        i = df.groupby("item_idx")["user_idx"].transform("size")
        keep = (u >= k) & (i >= k)
        if keep.all():
            return df
        df = df[keep]


def _prepare(catalog: Catalog, k_core: int | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The interactions to split, one row per (user, item) pair, and what the split's record
    says about them. Ingest already keeps one row per pair for generic catalogs (the latest
    event); a catalog that holds repeats (an older catalog, some MMRec/Amazon sources) has
    them folded here by the same rule, and the record counts them."""
    inter = catalog.interactions.drop_duplicates(["user_idx", "item_idx"], keep="last")
    notes: dict[str, Any] = {"repeats_folded": len(catalog.interactions) - len(inter)}
    if k_core:
        before = len(inter)
        inter = kcore(inter, k_core)
        notes["k_core_removed"] = before - len(inter)
    if inter.empty:
        raise ValueError(f"catalog {catalog.name!r}: no interactions left to split (--k-core {k_core})")
    return inter, notes


def split_random(catalog: Catalog, seed: int = 2024, k_core: int | None = None) -> Split:
    """Seeded per-user random 8:1:1 split (MMRec rule)."""
    inter, notes = _prepare(catalog, k_core)
    users = inter["user_idx"].to_numpy(np.int64)
    pos = _positions_within_user(users, np.random.default_rng(seed))
    n = inter.groupby("user_idx")["user_idx"].transform("size").to_numpy()
    frame = pd.DataFrame(
        {"user_idx": users, "item_idx": inter["item_idx"].to_numpy(np.int64), "label": _labels_from_positions(pos, n)}
    )
    name = f"random-s{seed}" + (f"-k{k_core}" if k_core else "")
    return Split(
        name=name,
        frame=_canonical(frame),
        meta={"kind": "random", "seed": seed, "k_core": k_core, "catalog": catalog.fingerprint(), **notes},
    )


def split_temporal(catalog: Catalog, k_core: int | None = None) -> Split:
    """Leave-last-out by timestamp: last -> test, second last -> valid, the rest train."""
    inter, notes = _prepare(catalog, k_core)
    inter = inter.sort_values(["user_idx", "timestamp", "item_idx"], kind="stable")
    users = inter["user_idx"].to_numpy(np.int64)
    pos = inter.groupby("user_idx").cumcount().to_numpy()
    n = inter.groupby("user_idx")["user_idx"].transform("size").to_numpy()
    label = np.full(len(pos), TRAIN, dtype=np.int8)
    eligible = n >= 3
    label[eligible & (pos == n - 2)] = VALID
    label[eligible & (pos == n - 1)] = TEST
    frame = pd.DataFrame({"user_idx": users, "item_idx": inter["item_idx"].to_numpy(np.int64), "label": label})
    name = "temporal-loo" + (f"-k{k_core}" if k_core else "")
    return Split(
        name=name,
        frame=_canonical(frame),
        meta={"kind": "temporal", "k_core": k_core, "catalog": catalog.fingerprint(), **notes},
    )


DEFAULT_COLD_FRACTION = 0.2


def check_cold_fraction(cold_fraction: float) -> float:
    if not (isinstance(cold_fraction, (int, float)) and 0 < cold_fraction < 1):
        raise ValueError(
            f"--cold-fraction must be strictly between 0 and 1 (the share of items held out as cold), "
            f"got {cold_fraction!r}"
        )
    return float(cold_fraction)


def cold_split_name(cold_fraction: float, seed: int, k_core: int | None = None) -> str:
    return f"cold-items-f{cold_fraction * 100:g}-s{seed}" + (f"-k{k_core}" if k_core else "")


def split_cold_items(
    catalog: Catalog, cold_fraction: float = DEFAULT_COLD_FRACTION, seed: int = 2024, k_core: int | None = None
) -> Split:
    """Item cold-start split: a seeded share of the items has all its interactions in
    valid/test and none in train (module docstring)."""
    cold_fraction = check_cold_fraction(cold_fraction)
    inter, notes = _prepare(catalog, k_core)
    users = inter["user_idx"].to_numpy(np.int64)
    items = inter["item_idx"].to_numpy(np.int64)
    rng = np.random.default_rng(seed)
    candidates = np.unique(items)
    if candidates.size < 2:
        raise ValueError(
            f"catalog {catalog.name!r}: a cold-items split needs at least 2 items with interactions, "
            f"has {candidates.size}"
        )
    # at least one cold and one warm item, whatever the fraction
    n_cold = min(max(int(round(cold_fraction * candidates.size)), 1), candidates.size - 1)
    cold = np.sort(rng.choice(candidates, size=n_cold, replace=False))
    is_cold = np.isin(items, cold)
    label = np.empty(len(items), dtype=np.int8)
    warm_users = users[~is_cold]
    pos = _positions_within_user(warm_users, rng)
    n = pd.Series(warm_users).groupby(warm_users).transform("size").to_numpy()
    label[~is_cold] = _labels_from_positions(pos, n)
    # each cold item's interactions alternate valid / test in a seeded order
    label[is_cold] = np.where(_positions_within_user(items[is_cold], rng) % 2 == 0, VALID, TEST)
    frame = pd.DataFrame({"user_idx": users, "item_idx": items, "label": label})
    meta = {
        "kind": "cold-items",
        "seed": seed,
        "k_core": k_core,
        "cold_fraction": cold_fraction,
        "cold_items": [int(i) for i in cold],
        "catalog": catalog.fingerprint(),
        **notes,
    }
    return Split(name=cold_split_name(cold_fraction, seed, k_core), frame=_canonical(frame), meta=meta)


SPLITTERS = {"random": split_random, "temporal": split_temporal, "cold-items": split_cold_items}


def make_split(
    catalog: Catalog,
    kind: str = "random",
    seed: int = 2024,
    k_core: int | None = None,
    cold_fraction: float | None = None,
) -> Split:
    if kind not in SPLITTERS:
        raise ValueError(f"unknown split kind {kind!r} (--kind); choose from {sorted(SPLITTERS)}")
    if cold_fraction is not None and kind != "cold-items":
        raise ValueError(f"--cold-fraction applies to --kind cold-items only (got --kind {kind})")
    if kind == "random":
        return split_random(catalog, seed=seed, k_core=k_core)
    if kind == "cold-items":
        return split_cold_items(
            catalog, DEFAULT_COLD_FRACTION if cold_fraction is None else cold_fraction, seed=seed, k_core=k_core
        )
    return split_temporal(catalog, k_core=k_core)


def load_given(catalog: Catalog) -> tuple[Split, Path]:
    """The catalog's given split (stored at ingest) and its path; a clear error when it has none."""
    path = Path(catalog.splits_dir) / f"{GIVEN}.parquet"
    if not path.exists():
        raise FileNotFoundError(
            f"--split-kind (split_kind) given: catalog {catalog.name!r} has no given split ({path}); only a source "
            "that comes with one keeps it at ingest (an MMRec folder's x_label, Amazon's train/val/test): "
            "use --split-kind random or temporal"
        )
    return Split.load(path), path


_COLD_NAME = re.compile(r"cold-items-f(\d+(?:\.\d+)?)-s(\d+)")


def ensure_split(catalog: Catalog, folder: str | Path, name: str) -> Path:
    """The stored split ``<folder>/<name>.parquet``; a missing ``random-s<SEED>`` or
    ``cold-items-f<PERCENT>-s<SEED>`` is made (deterministic, so making it again gives the
    same split). Other names must exist."""
    path = Path(folder) / f"{name}.parquet"
    if path.exists():
        return path
    if name.startswith("random-s") and name[8:].isdigit():
        return split_random(catalog, seed=int(name[8:])).save(folder)
    cold = _COLD_NAME.fullmatch(name)
    if cold and 0 < float(cold.group(1)) < 100:
        return split_cold_items(catalog, float(cold.group(1)) / 100, seed=int(cold.group(2))).save(folder)
    raise FileNotFoundError(f"{path}: no such split; create it with `befa split {catalog.name}`")
