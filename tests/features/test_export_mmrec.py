"""``befa export-mmrec`` writes what befa trains on, in a form the reference toolbox reads as is.

MMRec's reading rules, restated here (not its code): users and items are counted as
max id + 1 over the ``.inter`` file; ``image_feat.npy``/``text_feat.npy`` row i is item i;
its kNN graphs take the cosine of the rows, so a zero row makes a modality's graph NaN.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.data.ingest import ingest
from pipeline.data.mmrec_files import exported_item_ids
from pipeline.data.splits import split_random
from pipeline.features.export_mmrec import export_command
from pipeline.features.load import load_features
from pipeline.settings import get_settings
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey

FP = "toy-image-enc"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, datasets_root):
    home = tmp_path_factory.mktemp("home")
    settings = get_settings(datasets_root=datasets_root, home=home, feature_store=str(home / "features"))
    catalog, _ = ingest("movielens-100k-posters", settings)
    store = FeatureStore(settings.feature_store)
    store.register_encoder(FP, {"random_init": True, "weights": "none", "dim": 3, "source": "test"})
    keys = catalog.content_keys("image")
    emb = np.random.default_rng(0).normal(size=(len(keys), 3)).astype(np.float32)
    store.upsert(FeatureSetKey(catalog.name, FP, "image"), keys["item_id"].tolist(), keys["content_hash"].tolist(), emb)
    split = split_random(catalog, seed=3)
    split.save(catalog.splits_dir)
    dest = tmp_path_factory.mktemp("mmrec")
    out = export_command(catalog.name, split.name, dest, settings, {"image": FP})
    return settings, catalog, split, store, dest, out


def _read_like_mmrec(dest, name):
    inter = pd.read_csv(dest / f"{name}.inter", sep="\t")
    image = np.load(dest / "image_feat.npy")
    return inter, image, int(inter["userID"].max()) + 1, int(inter["itemID"].max()) + 1


def test_mmrec_counts_every_item_and_the_shapes_match(exported):
    _, catalog, split, _, dest, out = exported
    inter, image, users, items = _read_like_mmrec(dest, catalog.name)
    assert split.frame["item_idx"].max() < catalog.num_items - 1  # movielens: the last items have no interaction
    assert out["items_without_interactions"] == catalog.num_items - split.frame["item_idx"].nunique() > 0
    assert items == catalog.num_items == image.shape[0] == 1682
    assert users == catalog.num_users
    assert len(inter) == out["rows"] == len(split.frame)


def test_features_are_the_training_fill_and_finite_under_cosine(exported):
    _, catalog, _, store, dest, out = exported
    _, image, _, _ = _read_like_mmrec(dest, catalog.name)
    trained = load_features(catalog, store, {"image": FP})  # what `befa train` reads
    mapping = pd.read_csv(dest / "item_map.tsv", sep="\t", dtype={"item_id": str})
    assert mapping["item_idx"].tolist() == list(range(catalog.num_items))
    assert np.array_equal(image[mapping["itemID"].to_numpy()], trained.features["image"].numpy())
    missing = int((~trained.masks["image"]).sum())
    assert out["mean_filled_rows"] == {"image": missing} and missing > 0  # posters missing in the catalog
    norms = np.linalg.norm(image, axis=1)
    assert np.isfinite(image).all() and (norms > 0).all()
    unit = image / norms[:, None]
    assert np.isfinite(unit @ unit.T).all()


def test_ids_stay_befas_when_the_last_item_has_an_interaction():
    assert exported_item_ids(4, np.array([0, 3, 3])).tolist() == [0, 1, 2, 3]
    # items 2 and 3 have none: they come first, the others keep their order
    assert exported_item_ids(4, np.array([1, 0, 1])).tolist() == [2, 3, 0, 1]
    assert exported_item_ids(5, np.array([0, 2])).tolist() == [3, 0, 4, 1, 2]


def test_cli_export_mmrec_and_its_errors(exported, tmp_path):
    settings, catalog, split, _, _, _ = exported
    runner = CliRunner()
    env = {"BEFA_HOME": str(settings.home), "BEFA_FEATURE_STORE": settings.feature_store}
    res = runner.invoke(
        app, ["export-mmrec", catalog.name, "--split", split.name, "--dest", str(tmp_path), "--image-fp", FP], env=env
    )
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert (
        f"exported {len(split.frame)} interactions of 1682 items" in said
        and "MMRec (items = max itemID + 1) sees every item" in said
    )
    bad = runner.invoke(app, ["export-mmrec", catalog.name, "--split", "nosuch", "--dest", str(tmp_path)], env=env)
    assert bad.exit_code == 2 and "no such split" in bad.output and "Traceback" not in bad.output
