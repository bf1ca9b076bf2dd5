"""Which image URLs a catalog needs, with the file and row that named each.

An ingested catalog keeps every image reference as given (``items.image``); ingest
records each image it could not use in ``rejects.parquet`` with its file, data row and
source, so a URL that was not downloaded yet is listed there with its row. Both are
read here (the rejects first, for their rows) so ``befa fetch-images CATALOG`` can report a
failure where the user can find it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pipeline.data.catalog import Catalog
from pipeline.data.fetch import FetchReport, ImageRef
from pipeline.data.image_cache import is_url
from pipeline.data.versions import files_dir
from storage.atomic import write_json

FETCH_REPORT = "fetch_report.json"


def catalog_image_refs(folder: str | Path) -> list[ImageRef]:
    folder = Path(folder)
    catalog = Catalog.load(folder)
    refs: list[ImageRef] = []
    rejects = files_dir(folder) / "rejects.parquet"
    if rejects.exists():
        frame = pq.read_table(rejects).to_pandas()
        frame = frame[frame["modality"] == "image"] if "modality" in frame else frame
        for source, file, row in zip(frame["source"], frame["file"], frame["row"]):
            if is_url(source):
                refs.append(
                    ImageRef(str(source), None if pd.isna(file) else str(file), None if pd.isna(row) else int(row))
                )
    items_file = catalog.meta.get("ingest", {}).get("options", {}).get("items")
    for item_id, ref in zip(catalog.items["item_id"], catalog.items["image"]):
        if is_url(ref):
            refs.append(ImageRef(str(ref), items_file or f"catalog {catalog.name}, item {item_id}", None))
    return refs


def save_fetch_report(folder: str | Path, report: FetchReport) -> Path:
    return write_json(Path(folder) / FETCH_REPORT, report.to_dict())
