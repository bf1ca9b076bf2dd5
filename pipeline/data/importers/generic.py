"""Your own catalog (generic): an item table, an interaction table, an image folder.

Item table (CSV or Parquet; a .tsv is read tab-separated), one row per item:

    item_id   required  your id (SKU, ASIN, ...); duplicates: see below
    title     optional  short name
    text      optional  the exact string the text encoder embeds; when the column is
                        absent, the title is used; an empty cell means "no text" (reported)
    image     optional  file name relative to --images (default: the item table's
                        folder), an absolute path, an http(s):// URL (read from the
                        image cache: `befa fetch-images` or --fetch-images download
                        it; ingest itself never uses the network), or a URI (file://,
                        s3:// through fsspec); empty cell = no image (reported)

Instead of an image column, --image-template 'photos/{item_id[:3]}/{item_id}.jpg'
says where each item's image is (relative to --images): {item_id} and slices
{item_id[a:b]} only.

Instead of a text column, --text-template '{name}. {product_type}, {colour}. {description}'
builds each item's text from item-table columns ({column} only; empty cells give nothing;
a column the table lacks is an error before any table is read).

Interaction table (CSV or Parquet), one row per event:

    user_id   required
    item_id   required  must name an item of the item table
    rating    optional  a number; absent = 1.0 (implicit feedback)
    timestamp optional  unix seconds or an ISO 8601 date (2024-05-01, 2024-05-01T10:00:00Z);
                        another date form only with --date-format (a strptime format,
                        e.g. '%d/%m/%Y'); absent or empty = 0 (unknown)

Rules:

- every column name is configurable (--column item_id_column=sku, ...);
- errors name the file and the data row (1-based, header excluded; line = row + 1);
- ids (item and user) must be printable: a control character is an error;
- references outside the images folder (../, absolute paths) are listed in the report;
  --images-only refuses them;
- identical duplicate items are folded (reported); duplicates with different
  title/text/image are an error naming both rows;
- interactions naming unknown items are an error by default; --on-unknown-items skip
  drops and reports them; no known item at all is an error, with a hint when the ids
  differ only in case or leading zeros;
- repeats: a (user, item) pair seen several times is kept once, as its latest event;
  the report says how many rows were folded;
- --min-rating keeps only ratings >= it (counted in the report);
- a negative rating (a dislike) is not kept as an interaction: those rows are dropped,
  counted in the report (negative_ratings_dropped) and named in its warnings;
  --keep-negative-ratings keeps them (as does a negative --min-rating, which says which to keep);
- an image that is missing or does not decode is rejected (the item keeps its text);
  when more than --max-missing-images (default 20%) of the images given are
  rejected, ingest fails unless --allow-missing-images; --images with neither an
  image column nor a template is an error (no item would get an image).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from pipeline.data.catalog import CatalogError, IngestReport, build_catalog, row_location
from pipeline.data.fetch import ImageRef, fetch_images
from pipeline.data.image_cache import ImageCache, is_url
from pipeline.data.importers import text_template as texts
from pipeline.data.importers.base import REJECT_COLUMNS, Importer, ImporterOptions, ImportResult, count_catalog
from pipeline.data.importers.images import (
    attach_images,
    check_missing_images,
    expand_image_template,
    outside_refs,
    parse_image_template,
    resolve,
)
from pipeline.data.importers.timestamps import parse_timestamps
from pipeline.data.importers.validation import (
    UnknownPolicy,
    check_known_items,
    clean_ids,
    fold_duplicate_items,
    fold_repeat_interactions,
    parse_numbers,
    read_table,
    report_lost_users,
    require_columns,
    require_file,
    require_nonempty,
)


class GenericOptions(ImporterOptions):
    name: str = Field("generic", description="catalog name: the folder under $BEFA_HOME/catalogs/")
    items: Path = Field(description="item table (CSV, TSV or Parquet)")
    interactions: Path = Field(description="interaction table (CSV, TSV or Parquet)")
    images: Path | None = Field(
        None,
        description="folder that image names and --image-template are relative to (default: the item table's folder)",
    )
    image_template: str | None = Field(
        None,
        description="where each item's image is, e.g. 'photos/{item_id[:3]}/{item_id}.jpg' "
        "({item_id} and slices only); replaces the image column",
    )
    text_template: str | None = Field(
        None,
        description="each item's text built from item-table columns, e.g. '{name}. {product_type}, {colour}. "
        "{description}' ({column} only); replaces the text column",
    )
    max_missing_images: float = Field(
        0.2,
        ge=0,
        le=1,
        description="fail when more than this share of the images given is missing or does not decode (default 0.2)",
    )
    allow_missing_images: bool = Field(
        False, description="ingest even when more images are missing than --max-missing-images (warned)"
    )
    item_id_column: str = "item_id"
    title_column: str = "title"
    text_column: str = "text"
    image_column: str = "image"
    user_id_column: str = "user_id"
    interaction_item_column: str = "item_id"
    rating_column: str = "rating"
    timestamp_column: str = "timestamp"
    min_rating: float | None = Field(None, description="keep only ratings >= this")
    keep_negative_ratings: bool = Field(
        False,
        description="keep interactions with a negative rating (by default they are dropped, counted in the "
        "report: a dislike is not a positive interaction)",
    )
    on_unknown_items: UnknownPolicy = Field(
        "error", description="interactions naming unknown items: 'error' or 'skip' (each skip reported)"
    )
    workers: int | None = Field(None, ge=1, description="threads that check the images (default: up to 8)")
    date_format: str | None = Field(
        None,
        description="strptime format of the timestamp column's dates when they are not ISO 8601 or unix seconds, "
        "e.g. '%d/%m/%Y'",
    )
    images_only: bool = Field(False, description="refuse image references outside --images (../, absolute paths)")
    fetch_images: bool = Field(
        False, description="download the image URLs into the image cache first (as befa fetch-images does)"
    )
    # set by ingest from the settings (not a flag): where image URLs are read from
    image_cache: Path | None = None

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"catalog name {v!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        return v

    @field_validator("date_format")
    @classmethod
    def _date_format(cls, v: str | None) -> str | None:
        if v is None:
            return v
        sample = dt.datetime(2024, 5, 1, 13, 45, 30)
        try:  # a format that cannot read back what it writes is refused before any file is read
            ok = "%" in v and dt.datetime.strptime(sample.strftime(v), v) is not None
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a strptime format ({exc}); e.g. '%d/%m/%Y' or '%m/%d/%Y %H:%M'") from None
        if not ok:
            raise ValueError(f"{v!r} is not a strptime format (no % directive); e.g. '%d/%m/%Y'")
        return v

    @field_validator("image_template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None:
            parse_image_template(v)  # a bad template fails here, before any file is read
        return v

    @field_validator("text_template")
    @classmethod
    def _text_template(cls, v: str | None) -> str | None:
        if v is not None:
            texts.parse_text_template(v)  # its form here; its columns against the item table's header in run()
        return v


class GenericImporter(Importer):
    name = "generic"
    dataset = None
    Options = GenericOptions

    def run(self, o: GenericOptions) -> ImportResult:
        report = IngestReport(dataset=o.name)
        report.sources = {"items": str(o.items), "interactions": str(o.interactions)}
        require_file(o.items, "item table")  # both files first, the item table's problems named first
        require_file(o.interactions, "interaction table")
        if o.text_template is not None:  # before any table is read in full
            texts.check_text_template(o.text_template, o.items)
        # every value of the interaction table is checked before any image is read
        parsed = self._read_interactions(o, report)
        items, rejects = self._items(o, report)
        inter = self._interactions(o, report, items, parsed)
        catalog = build_catalog(o.name, items, inter, meta={"source": "generic", "min_rating": o.min_rating})
        count_catalog(report, catalog)
        return ImportResult(catalog=catalog, report=report, rejects=pd.DataFrame(rejects, columns=REJECT_COLUMNS))

    def _items(self, o: GenericOptions, report: IngestReport) -> tuple[pd.DataFrame, list[dict]]:
        """The item table, validated (ids, duplicates), with texts and images attached."""
        raw = read_table(o.items, "item table")
        require_columns(raw, o.items, {o.item_id_column: "item_id_column"}, "item id")
        report.counts_in["item_rows"] = len(raw)
        require_nonempty(len(raw), o.items, "items (the item table has no rows)")
        rows = np.arange(1, len(raw) + 1)
        raw = raw.reset_index(drop=True)
        raw[o.item_id_column] = clean_ids(raw[o.item_id_column], o.items, o.item_id_column)
        used = (o.title_column, *(texts.template_columns(o.text_template) if o.text_template else [o.text_column]))
        content = [c for c in dict.fromkeys((*used, o.image_column)) if c in raw.columns]
        kept = fold_duplicate_items(raw, o.items, report, content, id_column=o.item_id_column, rows=rows)
        rows = rows[kept.index.to_numpy()]
        raw = kept.reset_index(drop=True)
        report.counts_in["items"] = len(raw)

        def text_col(col: str) -> pd.Series:
            return raw[col].fillna("").astype(str).str.strip() if col in raw.columns else pd.Series([""] * len(raw))

        title = text_col(o.title_column)
        if o.text_template is not None:
            text = texts.render_text_template(o.text_template, raw)
            report.notes.append(f"texts: --text-template {o.text_template!r}")
        elif o.text_column in raw.columns:
            text = text_col(o.text_column)
        else:
            text = title
            report.notes.append(f"no {o.text_column!r} column: the title is the text")
        items = pd.DataFrame(
            {"item_id": raw[o.item_id_column].to_numpy(), "title": title.to_numpy(), "text": text.to_numpy()}
        )
        rejects: list[dict] = []
        for i in np.flatnonzero(~items["text"].astype(bool).to_numpy()):
            iid = items["item_id"].iat[i]
            report.add(
                "empty text", "item kept without text (text_hash null)", file=o.items, row=int(rows[i]), item_id=iid
            )
            rejects.append(
                {
                    "item_id": iid,
                    "modality": "text",
                    "file": str(o.items),
                    "row": int(rows[i]),
                    "source": None,
                    "problem": "empty text",
                }
            )
        rejects += self._images(o, report, raw, items, rows)
        return items, rejects

    def _images(
        self, o: GenericOptions, report: IngestReport, raw: pd.DataFrame, items: pd.DataFrame, rows: np.ndarray
    ) -> list[dict]:
        """Attach images from the template or the image column; fail when too many are unusable."""
        base = o.images if o.images is not None else Path(o.items).parent
        if o.image_template is not None:
            refs = expand_image_template(o.image_template, items["item_id"].astype(str).tolist())
            report.notes.append(f"images: --image-template {o.image_template!r} under {base}")
            if o.image_column in raw.columns:
                report.notes.append(
                    f"the {o.image_column!r} column is not used: --image-template says where images are"
                )
        elif o.image_column in raw.columns:
            refs = [None if pd.isna(v) else str(v) for v in raw[o.image_column].tolist()]
        elif o.images is not None:
            raise CatalogError(
                o.items,
                f"--images {o.images} is given, but the item table has no {o.image_column!r} column and there is no "
                "--image-template, so no item would get an image. Say where each image is with --image-template "
                "'{item_id}.jpg' (relative to --images), or name the image column with --column image_column=NAME.",
            )
        else:
            items["image"], items["image_hash"] = None, None
            report.notes.append(f"no {o.image_column!r} column: no item has an image")
            report.warnings.append(
                f"no item has an image (no {o.image_column!r} column, no --image-template): only texts will be encoded"
            )
            return []
        self._outside(o, report, refs, base, rows)
        cache = ImageCache(o.image_cache) if o.image_cache is not None else None
        if o.fetch_images:
            self._fetch(o, report, refs, base, rows, cache)
        rejects = attach_images(items, refs, base, report, o.items, rows, o.workers, cache)
        given = sum(1 for r in refs if r is not None and str(r).strip())
        if not given:
            report.warnings.append(
                f"the {o.image_column!r} column is empty for every item: "
                "no item has an image, only texts will be encoded"
            )
        if rejects:
            check_missing_images(rejects, given, report, o.items, o.max_missing_images, o.allow_missing_images)
        return rejects

    def _fetch(
        self,
        o: GenericOptions,
        report: IngestReport,
        refs: list,
        base: Path,
        rows: np.ndarray,
        cache: ImageCache | None,
    ) -> None:
        """--fetch-images: download the image URLs into the cache (the one write an import
        makes, and only when asked), after the tables' values are checked, before the images."""
        if cache is None:
            raise ValueError("--fetch-images needs the image cache (ingest passes it from the settings)")
        resolved = [
            (resolve(str(r).strip(), base), int(row)) for r, row in zip(refs, rows) if isinstance(r, str) and r.strip()
        ]
        fetched = fetch_images([ImageRef(url, str(o.items), row) for url, row in resolved if is_url(url)], cache)
        report.notes.append("--fetch-images: " + " ".join(" ".join(fetched.lines(max_rows=5)).split()))

    def _outside(self, o: GenericOptions, report: IngestReport, refs: list, base: Path, rows: np.ndarray) -> None:
        """References outside the images folder: listed in the report, refused with --images-only."""
        outside = outside_refs(refs, base, rows)
        if not outside:
            return
        shown = ", ".join(f"{r!r} ({row_location(o.items, row)})" for row, r in outside[:5])
        more = f" and {len(outside) - 5} more" if len(outside) > 5 else ""
        if o.images_only:
            raise CatalogError(
                o.items,
                f"{len(outside)} image reference(s) lie outside the images folder {base}: {shown}{more}; "
                "--images-only refuses them (move the images under --images, or leave out --images-only)",
                outside[0][0],
            )
        report.counts_out["images_outside_images_folder"] = len(outside)
        report.warnings.append(
            f"{len(outside)} image reference(s) lie outside the images folder {base} (e.g. {shown}{more}); "
            "--images-only refuses them"
        )

    def _read_interactions(self, o: GenericOptions, report: IngestReport) -> pd.DataFrame:
        """The interaction table, parsed: ids, ratings, timestamps (each bad value an error)."""
        inter_raw = read_table(o.interactions, "interaction table").reset_index(drop=True)
        require_columns(
            inter_raw,
            o.interactions,
            {o.user_id_column: "user_id_column", o.interaction_item_column: "interaction_item_column"},
        )
        report.counts_in["interactions"] = len(inter_raw)
        require_nonempty(len(inter_raw), o.interactions, "interactions (the interaction table has no rows)")
        inter = pd.DataFrame(
            {
                "user_id": clean_ids(inter_raw[o.user_id_column], o.interactions, o.user_id_column),
                "item_id": clean_ids(inter_raw[o.interaction_item_column], o.interactions, o.interaction_item_column),
            }
        )
        if o.rating_column in inter_raw.columns:
            inter["rating"] = parse_numbers(inter_raw[o.rating_column], o.interactions, o.rating_column)
        else:
            inter["rating"] = 1.0
            report.notes.append(f"no {o.rating_column!r} column: implicit feedback, every rating is 1.0")
        if o.timestamp_column in inter_raw.columns:
            inter["timestamp"] = parse_timestamps(
                inter_raw[o.timestamp_column], o.interactions, o.timestamp_column, date_format=o.date_format
            )
        else:
            inter["timestamp"] = 0
        report.counts_in["users"] = int(inter["user_id"].nunique())
        return inter

    def _interactions(
        self, o: GenericOptions, report: IngestReport, items: pd.DataFrame, inter: pd.DataFrame
    ) -> pd.DataFrame:
        """The parsed interactions checked against the items, filtered, repeats folded."""
        irows = np.arange(1, len(inter) + 1)
        keep = check_known_items(
            inter["item_id"],
            items["item_id"],
            o.interactions,
            report,
            o.on_unknown_items,
            rows=irows,
            user_ids=inter["user_id"],
        )
        all_users = inter["user_id"]
        inter = drop_negative_ratings(inter[keep], o, report)
        if o.min_rating is not None:
            low = inter["rating"].to_numpy() < o.min_rating
            report.counts_out["ratings_below_min_rating"] = int(low.sum())
            report.notes.append(f"kept ratings >= {o.min_rating:g}; {int(low.sum())} lower ratings not kept")
            inter = inter[~low]
        report_lost_users(
            all_users, inter["user_id"], report, o.interactions, "every interaction of the user was skipped or filtered"
        )
        require_nonempty(len(inter), o.interactions, "interactions left after validation and filtering")
        return fold_repeat_interactions(inter, report)


def drop_negative_ratings(inter: pd.DataFrame, o: GenericOptions, report: IngestReport) -> pd.DataFrame:
    """Interactions without the negative ratings (dislikes), counted and warned about; kept
    with ``--keep-negative-ratings`` or a negative ``--min-rating`` (noted)."""
    negative = inter["rating"].to_numpy() < 0
    n = int(negative.sum())
    if not n:
        return inter
    if o.keep_negative_ratings or (o.min_rating is not None and o.min_rating < 0):
        why = "--keep-negative-ratings" if o.keep_negative_ratings else f"--min-rating {o.min_rating:g}"
        report.notes.append(f"{n} interactions with a negative rating kept as interactions ({why})")
        return inter
    report.counts_out["negative_ratings_dropped"] = n
    report.warnings.append(
        f"{o.interactions}: {n} interactions with a negative rating (a dislike, not a positive interaction) "
        "were not kept; --keep-negative-ratings keeps them"
    )
    return inter[~negative]
