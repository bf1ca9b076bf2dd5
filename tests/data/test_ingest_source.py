"""Where a catalog came from (pipeline.data.ingest.ingest_source): its ingest record, the
files apart from the other options, and a known dataset's folder under the datasets root;
the pipeline report's Data section shows it (its ``importer: null`` configuration does not)."""

from __future__ import annotations

import io

import pandas as pd
from PIL import Image

from pipeline.data.catalog import Catalog
from pipeline.data.ingest import ingest, ingest_source
from pipeline.data.summary import DatasetSummary
from pipeline.data.versions import current_version
from pipeline.reporting.pipeline_report import ReportContext, write_report
from pipeline.settings import get_settings

OPTIONS = {
    "min_rating": 2,
    "on_unknown_items": "skip",
    "rating_column": "stars",
    "timestamp_column": "ts",
    "title_column": "name",
    "allow_missing_images": True,
    "max_missing_images": 0.5,
    "workers": 2,
}


def _shop(root):
    root.mkdir(parents=True)
    ids = [f"i{k}" for k in range(8)]
    for k, iid in enumerate(ids):
        buf = io.BytesIO()
        Image.new("RGB", (12, 12), (30 * k, 90, 20)).save(buf, format="JPEG")
        (root / f"{iid}.jpg").write_bytes(buf.getvalue())
    pd.DataFrame({"item_id": ids, "name": [f"item {i}" for i in ids], "image": [f"{i}.jpg" for i in ids]}).to_csv(
        root / "items.csv", index=False
    )
    rows = [
        (f"u{u}", ids[(u + j) % 8], 1_700_000_000 + 10 * u + j, 1 + (u + j) % 5) for u in range(12) for j in range(5)
    ]
    pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "stars"]).to_csv(root / "events.csv", index=False)
    return {"items": root / "items.csv", "interactions": root / "events.csv", "images": root}


def test_a_generic_catalog_names_its_files_and_options_in_the_report(tmp_path):
    settings = get_settings(
        home=tmp_path / "home", datasets_root=tmp_path / "datasets", feature_store=str(tmp_path / "fs")
    )
    paths = _shop(tmp_path / "src")
    ingest("generic", settings, name="shop", **paths, **OPTIONS)
    folder = settings.catalog_dir("shop")
    source = ingest_source(folder, settings.datasets_root)
    assert source.importer == "generic" and source.version == current_version(folder) is not None
    assert source.paths == {k: str(v) for k, v in paths.items()}
    assert source.options == OPTIONS  # all 11 options given: 3 files + 8 others ('name' is the catalog's)

    loaded = Catalog.load(folder)
    dataset = DatasetSummary(
        name="shop",
        fingerprint=loaded.fingerprint(),
        num_users=loaded.num_users,
        num_items=loaded.num_items,
        num_interactions=len(loaded.interactions),
        source=source,
    )
    md = write_report(tmp_path / "report", [], ReportContext(dataset=dataset)).report_md.read_text()
    assert f"- source: importer `generic` (catalog version `{source.version}`)" in md
    assert f"    - items: `{paths['items']}`" in md and f"    - images: `{paths['images']}`" in md
    assert "    - options (8): `allow_missing_images=true, max_missing_images=0.5, min_rating=2, " in md
    assert 'on_unknown_items="skip", rating_column="stars"' in md


def test_a_known_dataset_reads_from_its_folder_under_the_datasets_root(tmp_path, datasets_root):
    settings = get_settings(home=tmp_path / "home", datasets_root=datasets_root, feature_store=str(tmp_path / "fs"))
    ingest("movielens-100k-posters", settings)
    source = ingest_source(settings.catalog_dir("movielens-100k-posters"), datasets_root)
    assert source.importer == "movielens-100k-posters" and source.options == {}
    assert source.paths == {"root": str(datasets_root / "movielens-100k-posters")}
    assert ingest_source(tmp_path / "nothing", datasets_root) is None
    md = write_report(
        tmp_path / "report",
        [],
        ReportContext(dataset={"name": "x", "fingerprint": "f", "num_users": 1, "num_items": 1, "num_interactions": 1}),
    ).report_md.read_text()
    assert "- source: no ingest record" in md
