"""Importers on the real datasets (known counts) and the MMRec format both ways."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.data.catalog import Catalog, CatalogError
from pipeline.data.importers import IMPORTERS
from pipeline.data.importers.mmrec import row_hashes
from pipeline.data.ingest import ingest
from pipeline.data.mmrec_files import export_mmrec, features_from_store
from pipeline.data.splits import Split, split_random
from pipeline.data.versions import files_dir
from pipeline.settings import get_settings
from storage.feature_store import FeatureStore


@pytest.fixture(scope="module")
def ml_ingested(tmp_path_factory, datasets_root):
    home = tmp_path_factory.mktemp("home")
    settings = get_settings(datasets_root=datasets_root, home=home, feature_store=str(home / "features"))
    catalog, report = ingest("movielens-100k-posters", settings)
    return settings, catalog, report


def test_movielens_known_counts(ml_ingested):
    settings, catalog, report = ml_ingested
    assert report.counts_in["ratings"] == 100_000
    assert report.counts_in["users"] == 943
    assert report.counts_in["item_rows"] == 1_746
    assert report.counts_in["items"] == catalog.num_items == 1_682
    assert len(catalog.interactions) == 55_375  # rating >= 4
    assert (catalog.interactions["rating"] >= 4).all()
    assert report.counts_out["ratings_below_min_rating"] == 100_000 - 55_375
    assert report.counts_out["items_with_image"] == catalog.items["image_hash"].notna().sum() == 1_663
    # one of the 943 users rated nothing >= 4: reported, not silently lost
    assert catalog.num_users == 942
    (lost,) = [i for i in report.issues if i["action"] == "user not in the catalog"]
    assert lost["user_id"] not in set(catalog.interactions["user_id"])


def test_movielens_every_fold_and_reject_reported(ml_ingested):
    settings, catalog, report = ml_ingested
    kinds = report.summary_by_problem()
    assert kinds["duplicate item id, identical row -> folded into the first row"] == 1_746 - 1_682
    assert kinds["empty overview -> text is the title alone"] == 18
    assert kinds["image file missing -> item kept without image"] == 1_682 - 1_663
    folder = files_dir(settings.catalog_dir("movielens-100k-posters"))  # the current version
    rejects = pq.read_table(folder / "rejects.parquet").to_pandas()
    assert len(rejects) == 19 and set(rejects["modality"]) == {"image"}
    on_disk = json.loads((folder / "ingest_report.json").read_text())
    assert on_disk["counts_in"]["ratings"] == 100_000 and on_disk["counts_out"]["interactions"] == 55_375
    assert "| ratings | 100000 |" in (folder / "ingest_report.md").read_text()


def test_movielens_content(ml_ingested, datasets_root):
    settings, catalog, report = ml_ingested
    items = catalog.items.set_index("item_id")
    toy = items.loc["1"]
    assert toy["text"].startswith("Toy Story (1995). Led by Woody, Andy's toys")
    assert toy["text_hash"] == hashlib.sha256(toy["text"].encode()).hexdigest()
    poster = datasets_root / "movielens-100k-posters" / "posters" / "1.jpg"
    assert toy["image"] == str(poster)
    assert toy["image_hash"] == hashlib.sha256(poster.read_bytes()).hexdigest()
    # an empty overview leaves the title as the text
    empty = [i["item_id"] for i in report.issues if i["problem"] == "empty overview"]
    assert all(items.loc[e, "text"] == items.loc[e, "title"] for e in empty)
    # user and item ids map as MovieLens numbers them
    inter = catalog.interactions
    assert (inter["item_idx"] == inter["item_id"].astype(int) - 1).all()
    loaded = Catalog.load(settings.catalog_dir("movielens-100k-posters"))
    assert loaded.fingerprint() == catalog.fingerprint()


def test_movielens_all_ratings(datasets_root):
    res = IMPORTERS["movielens-100k-posters"](
        root=datasets_root / "movielens-100k-posters", min_rating=None, verify=False
    )
    assert len(res.catalog.interactions) == 100_000 and res.catalog.num_users == 943
    assert res.catalog.num_items == 1_682


def test_amazon_baby_counts(tmp_path, datasets_root):
    settings = get_settings(datasets_root=datasets_root, home=tmp_path, feature_store=str(tmp_path / "fs"))
    catalog, report = ingest("amazon-baby-5core", settings)
    assert (catalog.num_users, catalog.num_items, len(catalog.interactions)) == (19_445, 7_050, 160_792)
    split = Split.load(catalog.splits_dir / "given.parquet")
    assert split.counts() == {"train": 119_674, "valid": 20_559, "test": 20_559}
    root = datasets_root / "amazon-baby-5core"
    item2id = json.loads((root / "item2id.json").read_text())
    assert (catalog.items["item_id"].map(item2id) == catalog.items["item_idx"]).all()
    # the given split names the same (user, item) pairs as test.json
    user2id = json.loads((root / "user2id.json").read_text())
    test = json.loads((root / "test.json").read_text())
    uid_of = dict(zip(catalog.interactions["user_id"], catalog.interactions["user_idx"]))
    by_given = {v: k for k, v in user2id.items()}
    expected = sorted((uid_of[by_given[int(u)]], i) for u, items in test.items() for i in items)
    assert sorted(map(tuple, split.part(2)[["user_idx", "item_idx"]].to_numpy().tolist())) == expected
    assert catalog.items["text_hash"].isna().all() and catalog.items["image_hash"].isna().all()


# -- MMRec ----------------------------------------------------------------------------


def write_mmrec(folder, n_users=6, n_items=9, dv=5, dt=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for k, i in enumerate(rng.choice(n_items, size=4, replace=False)):
            rows.append((u, int(i), float(rng.integers(1, 6)), 1_600_000_000 + 10 * len(rows), [0, 0, 1, 2][k]))
    frame = pd.DataFrame(rows, columns=["userID", "itemID", "rating", "timestamp", "x_label"])
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "toy.inter", sep="\t", index=False)
    image = rng.normal(size=(n_items, dv)).astype(np.float32)
    text = rng.normal(size=(n_items, dt)).astype(np.float32)
    np.save(folder / "image_feat.npy", image)
    np.save(folder / "text_feat.npy", text)
    return frame, image, text


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["userID", "itemID"]).reset_index(drop=True)


def test_mmrec_import_export_round_trip(tmp_path):
    frame, image, text = write_mmrec(tmp_path / "in")
    settings = get_settings(datasets_root=tmp_path, home=tmp_path / "home", feature_store=str(tmp_path / "fs"))
    catalog, report = ingest("mmrec", settings, folder=tmp_path / "in")
    assert catalog.name == "toy" and catalog.num_items == 9 and catalog.num_users == 6
    assert (catalog.interactions["user_idx"] == frame["userID"]).all()
    assert (catalog.interactions["item_idx"] == frame["itemID"]).all()
    assert catalog.items["image_hash"].tolist() == row_hashes(image)

    # features went to the store under the documented fingerprint, with encoder info
    store = FeatureStore(settings.feature_store)
    fp = catalog.meta["features"]["image"]["fingerprint"]
    assert fp == "mmrec-npy-image-" + hashlib.sha256((tmp_path / "in" / "image_feat.npy").read_bytes()).hexdigest()[:12]
    info = store.encoder_info(fp)
    assert info["source"] == "mmrec .npy import" and info["random_init"] is False and info["dim"] == 5
    got, mask = features_from_store(store, catalog, fp, "image")
    assert mask.all() and np.array_equal(got, image)

    split = Split.load(Catalog.load(settings.catalog_dir("toy")).splits_dir / "given.parquet")
    assert split.counts() == {"train": 12, "valid": 6, "test": 6}

    text_fp = catalog.meta["features"]["text"]["fingerprint"]
    out = export_mmrec(
        catalog,
        split,
        tmp_path / "out",
        features={"image": got, "text": features_from_store(store, catalog, text_fp, "text")[0]},
    )
    assert out.name == "toy.inter"
    back = pd.read_csv(out, sep="\t")
    assert list(back.columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    pd.testing.assert_frame_equal(_sorted(back), _sorted(frame), check_dtype=False)
    assert np.array_equal(np.load(tmp_path / "out" / "image_feat.npy"), image)
    assert np.array_equal(np.load(tmp_path / "out" / "text_feat.npy"), text)


def test_catalog_export_import_round_trip(tmp_path, ml_ingested):
    """A MovieLens catalog + a random split + features -> MMRec files -> back: same data."""
    catalog = ml_ingested[1]
    split = split_random(catalog, seed=7)
    feats = np.random.default_rng(1).normal(size=(catalog.num_items, 4)).astype(np.float32)
    export_mmrec(catalog, split, tmp_path / "ml", features={"text": feats}, name="ml")
    back = IMPORTERS["mmrec"](folder=tmp_path / "ml")
    assert back.catalog.num_items == catalog.num_items
    assert back.catalog.num_users == catalog.num_users
    # items without an interaction were moved to the front (pipeline.data.mmrec_files); item_map.tsv says how
    exported = pd.read_csv(tmp_path / "ml" / "item_map.tsv", sep="\t", dtype={"item_id": str})["itemID"].to_numpy()
    assert np.array_equal(back.features["text"].matrix[exported], feats)
    assert "image" not in back.features
    given = Split.from_labels("given", back.given_splits["given"]).frame
    inverse = np.argsort(exported)
    given = given.assign(item_idx=inverse[given["item_idx"].to_numpy()])
    pd.testing.assert_frame_equal(given, split.frame)
    merged = back.catalog.interactions.assign(item_idx=inverse[back.catalog.interactions["item_idx"].to_numpy()]).merge(
        catalog.interactions, on=["user_idx", "item_idx"], suffixes=("_back", "")
    )
    assert len(merged) == len(split.frame)
    assert (merged["rating_back"] == merged["rating"]).all() and (merged["timestamp_back"] == merged["timestamp"]).all()


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda f: f.assign(x_label=f["x_label"].where(f.index != 2, 3)),
            r"toy\.inter, data row 3 \(line 4\): x_label '3' must be 0",
        ),
        (
            lambda f: f.assign(itemID=f["itemID"].where(f.index != 4, 99)),
            r"toy\.inter, data row 5 \(line 6\): itemID 99 has no feature row",
        ),
        (
            lambda f: f.assign(userID=f["userID"].astype(str).where(f.index != 1, "bob")),
            r"toy\.inter, data row 2 \(line 3\): userID 'bob' is not a number",
        ),
        (
            lambda f: f.assign(rating=f["rating"].astype(str).where(f.index != 0, "x")),
            r"toy\.inter, data row 1 \(line 2\): rating 'x' is not a number",
        ),
    ],
)
def test_mmrec_bad_inter(tmp_path, edit, message):
    frame, _, _ = write_mmrec(tmp_path)
    edit(frame).to_csv(tmp_path / "toy.inter", sep="\t", index=False)
    with pytest.raises(CatalogError, match=message):
        IMPORTERS["mmrec"](folder=tmp_path)


def test_mmrec_bad_features(tmp_path):
    _, image, _ = write_mmrec(tmp_path)
    image[3, 1] = np.nan
    np.save(tmp_path / "image_feat.npy", image)
    with pytest.raises(CatalogError, match=r"image_feat\.npy, row 4: item 3 has a non-finite"):
        IMPORTERS["mmrec"](folder=tmp_path)
    np.save(tmp_path / "image_feat.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(CatalogError, match=r"disagree on the number of items"):
        IMPORTERS["mmrec"](folder=tmp_path)
    (tmp_path / "image_feat.npy").write_bytes(b"garbage")
    with pytest.raises(CatalogError, match=r"image_feat\.npy: not a readable \.npy array"):
        IMPORTERS["mmrec"](folder=tmp_path)


def test_registry_is_explicit():
    assert sorted(IMPORTERS) == ["amazon-baby-5core", "generic", "mmrec", "movielens-100k-posters"]
    assert all(IMPORTERS[k].name == k for k in IMPORTERS)
