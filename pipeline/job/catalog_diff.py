"""What changed between two versions of a catalog, by ``item_id`` and content hash (the
catalog watch's comparison, :mod:`pipeline.job.watch`)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from pydantic import BaseModel, Field


class CatalogDiff(BaseModel):
    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    text_changed: list[str] = Field(default_factory=list)
    image_changed: list[str] = Field(default_factory=list)
    interactions_changed: bool = False

    @property
    def items_changed(self) -> bool:
        return bool(self.added or self.removed or self.text_changed or self.image_changed)

    @property
    def any(self) -> bool:
        return self.items_changed or self.interactions_changed

    def to_encode(self, new_items: Any) -> dict[str, set[str]]:
        """Item ids whose features must be (re)computed, per modality."""
        by_id = new_items.set_index("item_id")
        out = {"image": set(self.image_changed), "text": set(self.text_changed)}
        for modality in out:
            # an edit that removed the content needs no encoding
            out[modality] = {i for i in out[modality] if pd.notna(by_id.at[i, f"{modality}_hash"])}
            out[modality] |= {i for i in self.added if pd.notna(by_id.at[i, f"{modality}_hash"])}
        return out


def diff_catalogs(old: Any, new: Any) -> CatalogDiff:
    """What changed between two catalogs, by item_id and content hash."""
    o = old.items.set_index("item_id")[["text_hash", "image_hash"]]
    n = new.items.set_index("item_id")[["text_hash", "image_hash"]]
    common = o.index.intersection(n.index)

    def changed(col: str) -> list[str]:
        a, b = o.loc[common, col], n.loc[common, col]
        differ = ~((a == b) | (a.isna() & b.isna()))
        # an item whose image was removed also counts: its feature goes away
        return sorted(map(str, common[differ.to_numpy()]))

    inter_cols = ["user_id", "item_id", "rating", "timestamp"]
    return CatalogDiff(
        added=sorted(map(str, n.index.difference(o.index))),
        removed=sorted(map(str, o.index.difference(n.index))),
        text_changed=changed("text_hash"),
        image_changed=changed("image_hash"),
        interactions_changed=not old.interactions[inter_cols]
        .reset_index(drop=True)
        .equals(new.interactions[inter_cols].reset_index(drop=True)),
    )
