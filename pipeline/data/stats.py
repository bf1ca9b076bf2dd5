"""Statistics of an ingested catalog and its stored splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from pipeline.data.catalog import Catalog, extra_hash_columns
from pipeline.data.splits import Split


def catalog_stats(folder: str | Path) -> dict[str, Any]:
    catalog = Catalog.load(folder)
    inter, items = catalog.interactions, catalog.items
    per_user = inter.groupby("user_idx").size()
    per_item = inter.groupby("item_idx").size()
    n_users, n_items = catalog.num_users, catalog.num_items
    stats: dict[str, Any] = {
        "catalog": catalog.name,
        "fingerprint": catalog.fingerprint(),
        "users": n_users,
        "items": n_items,
        "interactions": len(inter),
        "density": len(inter) / max(1, n_users * n_items),
        "items_with_image": int(items["image_hash"].notna().sum()),
        "items_with_text": int(items["text_hash"].notna().sum()),
        **{f"items_with_{c.removesuffix('_hash')}": int(items[c].notna().sum()) for c in extra_hash_columns(items)},
        "items_without_interactions": int(n_items - per_item.size),
        "interactions_per_user (min/median/max)": f"{per_user.min()}/{per_user.median():g}/{per_user.max()}",
        "interactions_per_item (min/median/max)": f"{per_item.min()}/{per_item.median():g}/{per_item.max()}",
        "splits": {},
    }
    for path in sorted(catalog.splits_dir.glob("*.parquet")):
        split = Split.load(path)
        stats["splits"][split.name] = {"id": split.id, **split.counts()}
    return stats


def render_stats(stats: dict[str, Any]) -> Table:
    table = Table(title=f"catalog {stats['catalog']} ({stats['fingerprint']})")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        if key in ("catalog", "fingerprint", "splits"):
            continue
        table.add_row(key, f"{value:.4%}" if key == "density" else str(value))
    for name, counts in stats["splits"].items():
        table.add_row(
            f"split {name}", f"train {counts['train']:,} / valid {counts['valid']:,} / test {counts['test']:,}"
        )
    return table
