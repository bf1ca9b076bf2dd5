"""The item and user universe a run was trained on, kept in its folder.

A model's rows are catalog indices (``item_idx``, ``user_idx``) of the catalog *as it was
when the run trained*. A later re-ingest may add, remove or reorder items and users, so a
run that is served later needs its own id -> row table, not the catalog's current one::

    <run_dir>/items.parquet   item_idx, item_id, title, text_hash, image_hash (+ <m>_hash per imported modality)
    <run_dir>/users.parquet   user_idx, user_id

Written once per run by ``train_model`` (atomically). With them, serving maps a current
catalog onto the trained rows by id: items removed since are dropped, items added since
are new rows, and the recorded feature snapshots are read for exactly the trained items.
Runs from before these files existed fall back to the current catalog, and only when its
item count still matches (said in the serving manifest).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.catalog import Catalog, extra_hash_columns
from storage.atomic import write_parquet

ITEMS = "items.parquet"
USERS = "users.parquet"
ITEM_COLUMNS = ("item_idx", "item_id", "title", "text_hash", "image_hash")


@dataclass(frozen=True)
class Universe:
    """Ids by row: ``items.item_id[i]`` is the trained model's item i (and so for users)."""

    items: pd.DataFrame  # ITEM_COLUMNS, sorted by item_idx, item_idx == 0..I-1
    users: pd.DataFrame  # user_idx, user_id, sorted by user_idx
    source: str  # "run" (the run's own files) or "catalog" (fallback: the current catalog)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_users(self) -> int:
        return len(self.users)

    def item_rows(self) -> pd.Series:
        """item_id -> row."""
        return pd.Series(self.items["item_idx"].to_numpy(np.int64), index=self.items["item_id"].to_numpy())

    def user_rows(self) -> pd.Series:
        """user_id -> row."""
        return pd.Series(self.users["user_idx"].to_numpy(np.int64), index=self.users["user_id"].to_numpy())


def catalog_universe(catalog: Catalog, source: str = "catalog") -> Universe:
    columns = list(ITEM_COLUMNS) + extra_hash_columns(catalog.items)  # audio_hash, ...: imported modalities
    items = catalog.items[columns].sort_values("item_idx").reset_index(drop=True)
    users = (
        catalog.interactions[["user_idx", "user_id"]]
        .drop_duplicates("user_idx")
        .sort_values("user_idx")
        .reset_index(drop=True)
    )
    return Universe(items=items, users=users, source=source)


def save_universe(run_dir: str | Path, catalog: Catalog) -> None:
    run_dir = Path(run_dir)
    universe = catalog_universe(catalog, source="run")
    write_parquet(run_dir / ITEMS, pa.Table.from_pandas(universe.items, preserve_index=False))
    write_parquet(run_dir / USERS, pa.Table.from_pandas(universe.users, preserve_index=False))


def load_universe(run_dir: str | Path) -> Universe | None:
    """The run's universe, or None for a run that predates the files."""
    run_dir = Path(run_dir)
    if not (run_dir / ITEMS).exists() or not (run_dir / USERS).exists():
        return None
    items = pq.read_table(run_dir / ITEMS).to_pandas()
    users = pq.read_table(run_dir / USERS).to_pandas()
    return Universe(items=items, users=users, source="run")


def as_catalog(universe: Universe, name: str) -> Catalog:
    """A catalog view of the trained items (no interactions): enough to read their features."""
    items = universe.items.copy()
    items["text"] = ""
    items["image"] = None
    return Catalog(
        name=name, items=items, interactions=pd.DataFrame(columns=["user_id", "item_id", "user_idx", "item_idx"])
    )
