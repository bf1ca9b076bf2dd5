"""MovieLens 100K with TMDB overviews and posters (``movielens-100k-posters``).

Files (under ``<datasets root>/movielens-100k-posters/``, verified against SHA256SUMS first):

- ``ml-100k/u.data``: ``user_id item_id rating unix_timestamp``, tab-separated, no header;
- ``items.csv``: one row per movie (``movie_id``, ``title``, ..., ``overview``, ...);
- ``posters/{movie_id}.jpg``.

Decisions:

- Interactions: ratings >= ``min_rating`` (default 4, the implicit-feedback convention)
  are kept with their rating and timestamp; the others are counted in the report
  (``ratings_below_min_rating``). ``min_rating=None`` keeps all 100,000.
- Items: every movie of items.csv is an item (1,682), with or without interactions
  after the filter, so item indices do not depend on ``min_rating``.
- Text: ``"{title}. {overview}"``, e.g. ``"Toy Story (1995). Led by Woody, Andy's toys..."``;
  the title alone when the overview is empty (18 movies: reported). The title carries
  the year, which the overview lacks.
- items.csv has 1,746 rows for 1,682 movie ids. The duplicates in the shipped file are
  identical, so they are folded into the first row and every fold is reported (64). A
  duplicate that differed in title or overview would be an error naming both rows; one
  that differed only in a column the catalog does not use (votes, runtime, ...) is
  folded and the differing columns are named in the report.
- Posters: 19 movies have none; they are rejected as "image file missing" and keep
  their text. A poster that does not decode is rejected the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from pipeline.data.catalog import CatalogError, IngestReport, build_catalog
from pipeline.data.datasets import verify_dataset
from pipeline.data.importers.base import REJECT_COLUMNS, Importer, ImporterOptions, ImportResult, count_catalog
from pipeline.data.importers.images import attach_images
from pipeline.data.importers.timestamps import parse_timestamps
from pipeline.data.importers.validation import (
    UnknownPolicy,
    check_known_items,
    clean_ids,
    fold_duplicate_items,
    parse_numbers,
    read_table,
    report_lost_users,
    require_columns,
    require_nonempty,
)

NAME = "movielens-100k-posters"


def movie_text(title: str, overview: str) -> str:
    title, overview = title.strip(), overview.strip()
    if not overview:
        return title
    if not title:
        return overview
    return f"{title}. {overview}"


class MovieLensOptions(ImporterOptions):
    root: Path | None = None  # dataset folder; ingest() fills it from settings.datasets_root
    min_rating: float | None = Field(
        4.0, description="keep only ratings >= this (MovieLens default 4; 0 keeps every rating)"
    )
    verify: bool = Field(True, description="check the dataset's files against their pinned SHA256 sums first")
    on_unknown_items: UnknownPolicy = Field(
        "error", description="interactions naming unknown items: 'error' or 'skip' (each skip reported)"
    )
    workers: int | None = Field(None, ge=1, description="threads that check the images (default: up to 8)")


class MovieLensImporter(Importer):
    name = NAME
    dataset = NAME
    Options = MovieLensOptions

    def run(self, options: MovieLensOptions) -> ImportResult:
        if options.root is None:
            raise CatalogError(
                None, f"{NAME}: no dataset folder given (set BEFA_DATASETS_ROOT or pass --datasets-root)"
            )
        root = Path(options.root)
        report = IngestReport(dataset=NAME)
        if options.verify:
            n = verify_dataset(NAME, root)
            report.notes.append(f"{n} files verified against SHA256SUMS")
        report.sources = {
            "items": str(root / "items.csv"),
            "ratings": str(root / "ml-100k" / "u.data"),
            "posters": str(root / "posters"),
        }
        items, rejects = self._items(root, options, report)
        inter = self._ratings(root / "ml-100k" / "u.data", options, report, items)
        meta = {
            "source": "movielens-100k-posters",
            "min_rating": options.min_rating,
            "text": "'{title}. {overview}' (title alone when the overview is empty)",
        }
        catalog = build_catalog(NAME, items, inter, meta=meta)
        count_catalog(report, catalog)
        return ImportResult(catalog=catalog, report=report, rejects=pd.DataFrame(rejects, columns=REJECT_COLUMNS))

    def _items(self, root: Path, options: MovieLensOptions, report: IngestReport) -> tuple[pd.DataFrame, list[dict]]:
        """items.csv (title, overview) with the posters attached."""
        items_path = root / "items.csv"
        raw = read_table(items_path, "item table")
        require_columns(raw, items_path, ["movie_id", "title", "overview"])
        report.counts_in["item_rows"] = len(raw)
        rows = np.arange(1, len(raw) + 1)
        raw = raw.assign(movie_id=clean_ids(raw["movie_id"], items_path, "movie_id"))
        raw["_row"] = rows
        folded = fold_duplicate_items(
            raw.drop(columns="_row"), items_path, report, ["title", "overview"], id_column="movie_id", rows=rows
        )
        raw = raw.loc[folded.index]
        item_rows = raw["_row"].to_numpy()
        report.counts_in["items"] = len(raw)
        require_nonempty(len(raw), items_path, "items")
        items = pd.DataFrame(
            {
                "item_id": raw["movie_id"].to_numpy(),
                "title": raw["title"].str.strip().to_numpy(),
                "text": [movie_text(t, o) for t, o in zip(raw["title"].tolist(), raw["overview"].tolist())],
            }
        )
        rejects = []
        for i, (iid, ov, t) in enumerate(
            zip(items["item_id"].tolist(), raw["overview"].tolist(), items["text"].tolist())
        ):
            if not t:
                report.add(
                    "empty title and overview",
                    "item kept without text",
                    file=items_path,
                    row=int(item_rows[i]),
                    item_id=iid,
                )
                rejects.append(
                    {
                        "item_id": iid,
                        "modality": "text",
                        "file": str(items_path),
                        "row": int(item_rows[i]),
                        "source": None,
                        "problem": "empty text",
                    }
                )
            elif not ov.strip():
                report.add(
                    "empty overview", "text is the title alone", file=items_path, row=int(item_rows[i]), item_id=iid
                )
        refs = [f"posters/{iid}.jpg" for iid in items["item_id"]]
        rejects += attach_images(items, refs, root, report, items_path, item_rows, options.workers)
        return items, rejects

    def _ratings(
        self, ratings_path: Path, options: MovieLensOptions, report: IngestReport, items: pd.DataFrame
    ) -> pd.DataFrame:
        """u.data, parsed, checked against the items and filtered by ``min_rating``."""
        names = ["user_id", "item_id", "rating", "timestamp"]
        inter = read_table(ratings_path, "ratings file", sep="\t", header=None, names=names)
        if inter.shape[1] != 4:
            raise CatalogError(ratings_path, f"expected 4 tab-separated fields, found {inter.shape[1]}")
        report.counts_in["ratings"] = len(inter)
        require_nonempty(len(inter), ratings_path, "ratings")
        inter["user_id"] = clean_ids(inter["user_id"], ratings_path, "user_id")
        inter["item_id"] = clean_ids(inter["item_id"], ratings_path, "item_id")
        inter["rating"] = parse_numbers(inter["rating"], ratings_path, "rating")
        inter["timestamp"] = parse_timestamps(inter["timestamp"], ratings_path, "timestamp")
        report.counts_in["users"] = int(inter["user_id"].nunique())
        keep = check_known_items(
            inter["item_id"],
            items["item_id"],
            ratings_path,
            report,
            options.on_unknown_items,
            user_ids=inter["user_id"],
        )
        inter = inter[keep]
        if options.min_rating is not None:
            low = inter["rating"].to_numpy() < options.min_rating
            report.counts_out["ratings_below_min_rating"] = int(low.sum())
            report.notes.append(
                f"kept ratings >= {options.min_rating:g} as implicit interactions; "
                f"{int(low.sum())} lower ratings not kept"
            )
            report_lost_users(
                inter["user_id"],
                inter.loc[~low, "user_id"],
                report,
                ratings_path,
                f"user has no rating >= {options.min_rating:g}",
            )
            inter = inter[~low]
        require_nonempty(len(inter), ratings_path, f"interactions with rating >= {options.min_rating}")
        return inter
