"""Your own catalog (``generic``): an item table, an interaction table, an image folder.

Item table (CSV or Parquet; a ``.tsv`` is read tab-separated), one row per item:

    item_id   required  your id (SKU, ASIN, ...); duplicates: see below
    title     optional  short name
    text      optional  the exact string the text encoder embeds; when the column is
                        absent, the title is used; an empty cell means "no text" (reported)
    image     optional  file name relative to ``images`` (default: the item table's
                        folder), an absolute path, or a URI (file://, s3://, https://
                        through fsspec); empty cell = no image (reported)

Interaction table (CSV or Parquet), one row per event:

    user_id   required
    item_id   required  must name an item of the item table
    rating    optional  a number; absent = 1.0 (implicit feedback)
    timestamp optional  unix seconds or a date (ISO 8601); absent or empty = 0 (unknown)

Every column name is configurable (``item_id_column``, ``title_column``, ...). Errors name
the file and the row (1-based, header excluded). Identical duplicate items are folded
(reported); duplicates with different title/text/image are an error naming both rows.
Interactions naming unknown items are an error by default; ``on_unknown_items="skip"``
drops and reports them. ``min_rating`` keeps only ratings >= it (counted in the report).
Images that are missing or do not decode are rejected (the item keeps its text).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import field_validator

from pipeline.data.catalog import IngestReport, build_catalog
from pipeline.data.importers.base import REJECT_COLUMNS, Importer, ImporterOptions, ImportResult, count_catalog
from pipeline.data.importers.images import attach_images
from pipeline.data.importers.validation import (
    UnknownPolicy,
    check_known_items,
    clean_ids,
    fold_duplicate_items,
    parse_numbers,
    parse_timestamps,
    read_table,
    report_lost_users,
    require_columns,
    require_nonempty,
)


class GenericOptions(ImporterOptions):
    name: str = "generic"  # catalog name: the folder under $BEFA_HOME/catalogs/
    items: Path
    interactions: Path
    images: Path | None = None  # folder for relative image names (default: the item table's folder)
    item_id_column: str = "item_id"
    title_column: str = "title"
    text_column: str = "text"
    image_column: str = "image"
    user_id_column: str = "user_id"
    interaction_item_column: str = "item_id"
    rating_column: str = "rating"
    timestamp_column: str = "timestamp"
    min_rating: float | None = None
    on_unknown_items: UnknownPolicy = "error"
    workers: int | None = None

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"catalog name {v!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        return v


class GenericImporter(Importer):
    name = "generic"
    dataset = None
    Options = GenericOptions

    def run(self, o: GenericOptions) -> ImportResult:
        report = IngestReport(dataset=o.name)
        report.sources = {"items": str(o.items), "interactions": str(o.interactions)}
        items, rejects = self._items(o, report)
        inter = self._interactions(o, report, items)
        catalog = build_catalog(o.name, items, inter, meta={"source": "generic", "min_rating": o.min_rating})
        count_catalog(report, catalog)
        return ImportResult(catalog=catalog, report=report, rejects=pd.DataFrame(rejects, columns=REJECT_COLUMNS))

    def _items(self, o: GenericOptions, report: IngestReport) -> tuple[pd.DataFrame, list[dict]]:
        """The item table, validated (ids, duplicates), with texts and images attached."""
        raw = read_table(o.items, "item table")
        require_columns(raw, o.items, [o.item_id_column], "item id")
        report.counts_in["item_rows"] = len(raw)
        require_nonempty(len(raw), o.items, "items (the item table has no rows)")
        rows = np.arange(1, len(raw) + 1)
        raw = raw.reset_index(drop=True)
        raw[o.item_id_column] = clean_ids(raw[o.item_id_column], o.items, o.item_id_column)
        content = [c for c in (o.title_column, o.text_column, o.image_column) if c in raw.columns]
        kept = fold_duplicate_items(raw, o.items, report, content, id_column=o.item_id_column, rows=rows)
        rows = rows[kept.index.to_numpy()]
        raw = kept.reset_index(drop=True)
        report.counts_in["items"] = len(raw)

        def text_col(col: str) -> pd.Series:
            return raw[col].fillna("").astype(str).str.strip() if col in raw.columns else pd.Series([""] * len(raw))

        title = text_col(o.title_column)
        if o.text_column in raw.columns:
            text = text_col(o.text_column)
        else:
            text = title
            report.notes.append(f"no {o.text_column!r} column: the title is the text")
        items = pd.DataFrame({"item_id": raw[o.item_id_column].to_numpy(), "title": title.to_numpy(), "text": text.to_numpy()})
        rejects: list[dict] = []
        for i in np.flatnonzero(~items["text"].astype(bool).to_numpy()):
            iid = items["item_id"].iat[i]
            report.add("empty text", "item kept without text (text_hash null)", file=o.items, row=int(rows[i]), item_id=iid)
            rejects.append({"item_id": iid, "modality": "text", "file": str(o.items), "row": int(rows[i]), "source": None, "problem": "empty text"})
        if o.image_column in raw.columns:
            base = o.images if o.images is not None else Path(o.items).parent
            refs = [None if pd.isna(v) else str(v) for v in raw[o.image_column].tolist()]
            rejects += attach_images(items, refs, base, report, o.items, rows, o.workers)
        else:
            items["image"], items["image_hash"] = None, None
            report.notes.append(f"no {o.image_column!r} column: no item has an image")
        return items, rejects

    def _interactions(self, o: GenericOptions, report: IngestReport, items: pd.DataFrame) -> pd.DataFrame:
        """The interaction table, parsed (ratings, timestamps), checked against the items, filtered."""
        inter_raw = read_table(o.interactions, "interaction table").reset_index(drop=True)
        require_columns(inter_raw, o.interactions, [o.user_id_column, o.interaction_item_column])
        report.counts_in["interactions"] = len(inter_raw)
        require_nonempty(len(inter_raw), o.interactions, "interactions (the interaction table has no rows)")
        irows = np.arange(1, len(inter_raw) + 1)
        inter = pd.DataFrame({
            "user_id": clean_ids(inter_raw[o.user_id_column], o.interactions, o.user_id_column),
            "item_id": clean_ids(inter_raw[o.interaction_item_column], o.interactions, o.interaction_item_column),
        })
        if o.rating_column in inter_raw.columns:
            inter["rating"] = parse_numbers(inter_raw[o.rating_column], o.interactions, o.rating_column)
        else:
            inter["rating"] = 1.0
            report.notes.append(f"no {o.rating_column!r} column: implicit feedback, every rating is 1.0")
        if o.timestamp_column in inter_raw.columns:
            inter["timestamp"] = parse_timestamps(inter_raw[o.timestamp_column], o.interactions, o.timestamp_column)
        else:
            inter["timestamp"] = 0
        report.counts_in["users"] = int(inter["user_id"].nunique())
        keep = check_known_items(inter["item_id"], items["item_id"], o.interactions, report, o.on_unknown_items, rows=irows, user_ids=inter["user_id"])
        all_users = inter["user_id"]
        inter = inter[keep]
        if o.min_rating is not None:
            low = inter["rating"].to_numpy() < o.min_rating
            report.counts_out["ratings_below_min_rating"] = int(low.sum())
            report.notes.append(f"kept ratings >= {o.min_rating:g}; {int(low.sum())} lower ratings not kept")
            inter = inter[~low]
        report_lost_users(all_users, inter["user_id"], report, o.interactions, "every interaction of the user was skipped or filtered")
        require_nonempty(len(inter), o.interactions, "interactions left after validation and filtering")
        repeats = int(inter.duplicated(["user_id", "item_id"]).sum())
        if repeats:
            report.notes.append(f"{repeats} interactions repeat an earlier (user, item) pair; all are kept")
        return inter
