"""Bad input -> a clear error naming the file and row, or a reported, non-silent fix.

Small synthetic shops in tmp_path, read through the generic importer (and the MovieLens
importer on a copy with a planted conflicting duplicate)."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.data.catalog import Catalog, CatalogError
from pipeline.data.importers import IMPORTERS
from pipeline.data.ingest import ingest
from pipeline.data.versions import files_dir
from pipeline.settings import get_settings


def jpeg_bytes(color=(200, 30, 30), size=(24, 36)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


ITEMS = [
    {"item_id": "A", "title": "Red mug", "text": "A red ceramic mug.", "image": "a.jpg"},
    {"item_id": "B", "title": "Blue mug", "text": "A blue ceramic mug.", "image": "b.jpg"},
    {"item_id": "C", "title": "Green mug", "text": "A green ceramic mug.", "image": "c.jpg"},
]
INTERACTIONS = [
    {"user_id": "u1", "item_id": "A", "rating": "5", "timestamp": "1700000000"},
    {"user_id": "u1", "item_id": "B", "rating": "3", "timestamp": "1700000100"},
    {"user_id": "u2", "item_id": "C", "rating": "4", "timestamp": "2024-01-02T03:04:05Z"},
]


def make_shop(tmp_path: Path, items=None, interactions=None, images=("a.jpg", "b.jpg", "c.jpg")) -> dict:
    folder = tmp_path / "shop"
    img_dir = folder / "images"
    img_dir.mkdir(parents=True)
    for k, name in enumerate(images):
        (img_dir / name).write_bytes(jpeg_bytes((40 * k, 100, 200)))
    pd.DataFrame(ITEMS if items is None else items).to_csv(folder / "items.csv", index=False)
    pd.DataFrame(INTERACTIONS if interactions is None else interactions).to_csv(
        folder / "interactions.csv", index=False
    )
    return {"items": folder / "items.csv", "interactions": folder / "interactions.csv", "images": img_dir}


def run(paths: dict, **options):
    return IMPORTERS["generic"](**paths, **options)


def test_clean_shop_imports_with_hashes(tmp_path):
    paths = make_shop(tmp_path)
    res = run(paths, name="shop")
    items = res.catalog.items
    assert items["item_id"].tolist() == ["A", "B", "C"]
    a = items.iloc[0]
    assert a["image"] == str(paths["images"] / "a.jpg")
    assert a["image_hash"] == hashlib.sha256((paths["images"] / "a.jpg").read_bytes()).hexdigest()
    assert a["text_hash"] == hashlib.sha256("A red ceramic mug.".encode()).hexdigest()
    inter = res.catalog.interactions
    assert len(inter) == 3 and res.catalog.num_users == 2
    assert inter["timestamp"].tolist() == [1700000000, 1700000100, 1704164645]  # ISO date read as UTC
    assert res.report.issues == [] and len(res.rejects) == 0


def test_image_references_absolute_and_uri(tmp_path):
    items = [dict(r) for r in ITEMS]
    paths = make_shop(tmp_path, items=items)
    items[0]["image"] = str(paths["images"] / "a.jpg")  # absolute path
    items[1]["image"] = (paths["images"] / "b.jpg").as_uri()  # file:// URI
    fsspec.filesystem("memory").pipe("/befa-test/c.jpg", jpeg_bytes((1, 2, 3)))
    items[2]["image"] = "memory://befa-test/c.jpg"  # any fsspec URI
    pd.DataFrame(items).to_csv(paths["items"], index=False)
    res = run(paths)
    assert res.catalog.items["image_hash"].notna().all()
    assert res.catalog.items["image"].iloc[1] == str(paths["images"] / "b.jpg")
    assert res.catalog.items["image"].iloc[2] == "memory://befa-test/c.jpg"
    assert res.catalog.items["image_hash"].iloc[2] == hashlib.sha256(jpeg_bytes((1, 2, 3))).hexdigest()


def test_missing_items_file(tmp_path):
    paths = make_shop(tmp_path)
    paths["items"].unlink()
    with pytest.raises(CatalogError, match=r"items\.csv: missing item table") as err:
        run(paths)
    assert err.value.file == str(paths["items"])


def test_missing_interactions_file(tmp_path):
    paths = make_shop(tmp_path)
    paths["interactions"] = paths["interactions"].with_name("nope.csv")
    with pytest.raises(CatalogError, match=r"nope\.csv: missing interaction table"):
        run(paths)


def test_unreadable_files(tmp_path):
    paths = make_shop(tmp_path)
    # a folder where a file is expected
    with pytest.raises(CatalogError, match=r"images: item table is not a regular file"):
        run({**paths, "items": paths["images"]})
    # not UTF-8
    paths["items"].write_bytes("item_id,title\nA,Caf\xe9\n".encode("latin-1"))
    with pytest.raises(CatalogError, match=r"items\.csv: item table is not UTF-8"):
        run(paths)
    # a corrupt Parquet file
    bad = paths["items"].with_suffix(".parquet")
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(CatalogError, match=r"items\.parquet: cannot parse item table"):
        run({**paths, "items": bad})


def test_missing_required_column(tmp_path):
    paths = make_shop(tmp_path, items=[{"sku": "A", "title": "x"}])
    with pytest.raises(CatalogError, match=r"items\.csv: missing column\(s\) \['item_id'\]"):
        run(paths)
    # ... unless the column name is configured
    res = run({**paths, "images": None, "interactions": _inter(tmp_path, [("u", "A", "5")])}, item_id_column="sku")
    assert res.catalog.items["item_id"].tolist() == ["A"]


def test_a_missing_interactions_column_names_its_option_key(tmp_path):
    paths = make_shop(tmp_path, interactions=[{"customer": "u1", "article": "A"}])
    with pytest.raises(CatalogError) as err:
        run(paths)
    said = str(err.value)
    assert "interactions.csv: missing column(s) ['user_id', 'item_id']; found ['customer', 'article']" in said
    assert "--column user_id_column=NAME, --column interaction_item_column=NAME" in said
    assert "(ingest options user_id_column, interaction_item_column)" in said
    # only the one still missing is named once the other is configured
    with pytest.raises(CatalogError, match=r"\['item_id'\].*--column interaction_item_column=NAME \(ingest option "):
        run(paths, user_id_column="customer")
    res = run(paths, user_id_column="customer", interaction_item_column="article")
    assert res.catalog.interactions["item_id"].tolist() == ["A"]


def _inter(tmp_path: Path, rows) -> Path:
    path = tmp_path / "inter_extra.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]).to_csv(path, index=False)
    return path


def test_conflicting_duplicate_item_is_an_error_naming_both_rows(tmp_path):
    items = ITEMS + [{"item_id": "A", "title": "Red mug", "text": "A DIFFERENT text.", "image": "a.jpg"}]
    paths = make_shop(tmp_path, items=items)
    with pytest.raises(CatalogError) as err:
        run(paths)
    msg = str(err.value)
    assert "items.csv, data row 4 (line 5)" in msg and "data row 1 (line 2) and data row 4 (line 5)" in msg
    assert "'A'" in msg and "text" in msg
    assert err.value.row == 4


def test_identical_duplicates_are_folded_and_reported(tmp_path):
    items = ITEMS + [dict(ITEMS[1]), dict(ITEMS[1])]
    paths = make_shop(tmp_path, items=items)
    res = run(paths)
    assert res.catalog.num_items == 3
    folds = [i for i in res.report.issues if i["action"].startswith("folded")]
    assert [(f["row"], f["first_row"], f["item_id"]) for f in folds] == [(4, 2, "B"), (5, 2, "B")]
    assert res.report.counts_in["item_rows"] == 5 and res.report.counts_out["items"] == 3


def test_duplicates_differing_only_in_unused_columns_are_folded_with_the_columns_named(tmp_path):
    items = [dict(r, stock=1) for r in ITEMS] + [dict(ITEMS[0], stock=7)]
    paths = make_shop(tmp_path, items=items)
    res = run(paths)
    (fold,) = [i for i in res.report.issues if i["action"].startswith("folded")]
    assert fold["columns"] == ["stock"] and fold["row"] == 4


def test_unknown_items_error_by_default(tmp_path):
    inter = INTERACTIONS + [
        {"user_id": "u3", "item_id": "ZZ", "rating": "5", "timestamp": "1"},
        {"user_id": "u3", "item_id": "YY", "rating": "5", "timestamp": "1"},
    ]
    paths = make_shop(tmp_path, interactions=inter)
    with pytest.raises(CatalogError) as err:
        run(paths)
    msg = str(err.value)
    assert "interactions.csv, data row 4 (line 5)" in msg and "2 interaction(s)" in msg
    assert "'ZZ' (line 5), 'YY' (line 6)" in msg and "--on-unknown-items skip" in msg
    assert "on_unknown_items" not in msg  # the command line's words, not Python's


def test_unknown_items_skip_and_report(tmp_path):
    inter = INTERACTIONS + [{"user_id": "u3", "item_id": "ZZ", "rating": "5", "timestamp": "1"}]
    paths = make_shop(tmp_path, interactions=inter)
    res = run(paths, on_unknown_items="skip")
    assert len(res.catalog.interactions) == 3
    issue, lost = res.report.issues
    assert (lost["user_id"], lost["action"]) == ("u3", "user not in the catalog")
    assert issue == {
        "file": str(paths["interactions"]),
        "row": 4,
        "problem": "unknown item",
        "action": "interaction skipped",
        "item_id": "ZZ",
        "user_id": "u3",
    }


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "image file missing"),
        (b"\xff\xd8\xff\xe0 not really a jpeg", "image does not decode"),
        ("truncated", "image does not decode"),
        (b"", "image file is empty"),
    ],
)
def test_bad_images_are_rejected_item_keeps_text(tmp_path, content, problem):
    paths = make_shop(tmp_path)
    target = paths["images"] / "b.jpg"
    if content is None:
        target.unlink()
    elif content == "truncated":
        data = jpeg_bytes(size=(200, 200))
        target.write_bytes(data[: len(data) // 2])
    else:
        target.write_bytes(content)
    settings = get_settings(datasets_root=tmp_path, home=tmp_path / "home", feature_store=str(tmp_path / "fs"))
    with pytest.raises(CatalogError, match=r"1 of 3 images \(33%\) cannot be used.*--allow-missing-images"):
        ingest("generic", settings, name="shop", **paths)  # 1 in 3 is over the default --max-missing-images 20%
    catalog, report = ingest("generic", settings, name="shop", max_missing_images=0.5, **paths)
    assert "1 of 3 images (33%) cannot be used" in report.warnings[0]
    b = catalog.items.set_index("item_id").loc["B"]
    assert pd.isna(b["image"]) and pd.isna(b["image_hash"])
    assert b["text_hash"] == hashlib.sha256("A blue ceramic mug.".encode()).hexdigest()
    (issue,) = report.issues
    assert issue["problem"].startswith(problem) and issue["row"] == 2 and issue["item_id"] == "B"
    assert issue["file"] == str(paths["items"]) and issue["image"] == str(target)
    rejects = pq.read_table(files_dir(settings.catalog_dir("shop")) / "rejects.parquet").to_pandas()
    assert rejects[["item_id", "modality", "row"]].values.tolist() == [["B", "image", 2]]
    assert rejects["problem"].iloc[0].startswith(problem)
    assert report.counts_out["items_with_image"] == 2 and report.counts_out["items"] == 3
    assert Catalog.load(settings.catalog_dir("shop")).items["image_hash"].isna().sum() == 1


def test_empty_text_reported_item_keeps_image(tmp_path):
    items = [dict(r) for r in ITEMS]
    items[2]["text"] = "   "
    paths = make_shop(tmp_path, items=items)
    res = run(paths)
    c = res.catalog.items.set_index("item_id").loc["C"]
    assert c["text"] == "" and pd.isna(c["text_hash"]) and isinstance(c["image_hash"], str)
    (issue,) = res.report.issues
    assert (issue["problem"], issue["row"], issue["item_id"]) == ("empty text", 3, "C")
    assert res.rejects[["item_id", "modality"]].values.tolist() == [["C", "text"]]


def test_non_numeric_rating(tmp_path):
    inter = [dict(r) for r in INTERACTIONS]
    inter[1]["rating"] = "five"
    paths = make_shop(tmp_path, interactions=inter)
    with pytest.raises(CatalogError, match=r"interactions\.csv, data row 2 \(line 3\): rating 'five' is not a number"):
        run(paths)


def test_bad_timestamp_and_empty_ids(tmp_path):
    inter = [dict(r) for r in INTERACTIONS]
    inter[2]["timestamp"] = "yesterday-ish"
    paths = make_shop(tmp_path, interactions=inter)
    with pytest.raises(CatalogError, match=r"interactions\.csv, data row 3 \(line 4\): timestamp 'yesterday-ish'"):
        run(paths)
    items = [dict(r) for r in ITEMS]
    items[1]["item_id"] = ""
    paths = make_shop(tmp_path / "2", items=items)
    with pytest.raises(CatalogError, match=r"items\.csv, data row 2 \(line 3\): empty item_id"):
        run(paths)


def test_empty_catalog(tmp_path):
    paths = make_shop(tmp_path)
    paths["items"].write_text("item_id,title,text,image\n")
    with pytest.raises(CatalogError, match=r"items\.csv: empty catalog: no items"):
        run(paths)
    paths["items"].write_text("")
    with pytest.raises(CatalogError, match=r"items\.csv: empty item table"):
        run(paths)
    paths = make_shop(tmp_path / "2")
    with pytest.raises(CatalogError, match=r"interactions\.csv: empty catalog: no interactions left"):
        run(paths, min_rating=6)


def test_parquet_inputs_and_implicit_feedback(tmp_path):
    paths = make_shop(tmp_path)
    items_pq = paths["items"].with_suffix(".parquet")
    pd.DataFrame(ITEMS).rename(columns={"text": "description"}).to_parquet(items_pq)
    inter_pq = paths["interactions"].with_suffix(".parquet")
    pd.DataFrame(INTERACTIONS)[["user_id", "item_id"]].rename(columns={"user_id": "customer"}).to_parquet(inter_pq)
    res = run(
        {**paths, "items": items_pq, "interactions": inter_pq}, text_column="description", user_id_column="customer"
    )
    assert res.catalog.items["text"].iloc[0] == "A red ceramic mug."
    assert res.catalog.interactions["rating"].tolist() == [1.0, 1.0, 1.0]
    assert res.catalog.interactions["timestamp"].tolist() == [0, 0, 0]


def test_counts_add_up_nothing_dropped_silently(tmp_path):
    items = ITEMS + [dict(ITEMS[0])]
    inter = INTERACTIONS + [{"user_id": "u9", "item_id": "nope", "rating": "5", "timestamp": "1"}]
    paths = make_shop(tmp_path, items=items, interactions=inter)
    res = run(paths, on_unknown_items="skip", min_rating=4)
    r = res.report
    folded = sum(i["action"].startswith("folded") for i in r.issues)
    skipped = sum(i["action"] == "interaction skipped" for i in r.issues)
    assert r.counts_in["item_rows"] == r.counts_out["items"] + folded
    assert (
        r.counts_in["interactions"] == r.counts_out["interactions"] + skipped + r.counts_out["ratings_below_min_rating"]
    )
    assert (r.counts_out["interactions"], skipped, r.counts_out["ratings_below_min_rating"]) == (2, 1, 1)


def test_unknown_option_is_rejected(tmp_path):
    paths = make_shop(tmp_path)
    settings = get_settings(datasets_root=tmp_path, home=tmp_path / "home")
    with pytest.raises(ValueError, match=r"--column item_column=\.\.\.: unknown column key; keys: item_id_column"):
        ingest("generic", settings, item_column="x", **paths)
    with pytest.raises(ValueError, match=r"--folder does not apply to generic \(its options: --items"):
        ingest("generic", settings, folder=str(tmp_path), **paths)


def test_movielens_conflicting_duplicate_names_both_rows(tmp_path, datasets_root):
    """On a copy of the real items.csv with one duplicate's overview changed."""
    src = datasets_root / "movielens-100k-posters"
    dst = tmp_path / "ml"
    (dst / "ml-100k").mkdir(parents=True)
    shutil.copy(src / "ml-100k" / "u.data", dst / "ml-100k" / "u.data")
    (dst / "posters").symlink_to(src / "posters")
    items = pd.read_csv(src / "items.csv", dtype=str, keep_default_na=False)
    dup_rows = items.index[items["movie_id"].duplicated(keep="first")]
    k = dup_rows[0]
    items.loc[k, "overview"] = items.loc[k, "overview"] + " (edited)"
    items.to_csv(dst / "items.csv", index=False)
    first = int(items.index[items["movie_id"] == items.loc[k, "movie_id"]][0]) + 1
    with pytest.raises(CatalogError) as err:
        IMPORTERS["movielens-100k-posters"](root=dst, verify=False)
    msg = str(err.value)
    assert (
        f"items.csv, data row {k + 1} (line {k + 2})" in msg
        and f"data row {first} (line {first + 1}) and data row {k + 1}" in msg
    )
    assert "overview" in msg
