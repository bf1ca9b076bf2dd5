"""Any named modality, end to end: an MMRec folder with ``image_feat.npy`` and
``audio_feat.npy`` (TikTok's layout: no text) is ingested as two modalities, its features
load for training, a content model trains on both, and it exports back as it came.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pipeline.data.catalog import Catalog, CatalogError
from pipeline.data.importers import IMPORTERS
from pipeline.data.importers.mmrec import row_hashes
from pipeline.data.ingest import ingest
from pipeline.data.mmrec_files import export_mmrec
from pipeline.data.splits import Split
from pipeline.features.load import load_features
from pipeline.settings import get_settings
from pipeline.training.api import train_model
from pipeline.training.record import RunRecord
from pipeline.training.universe import load_universe
from storage.feature_store import FeatureStore
from storage.keys import check_modality, modality_order

N_USERS, N_ITEMS = 12, 20


def write_folder(folder, seed=0):
    """``x.inter`` (5 rows per user: 3 train, 1 valid, 1 test) + image (I x 6) and audio (I x 4) features."""
    rng = np.random.default_rng(seed)
    rows = [
        (u, int(i), 1, 0, [0, 0, 0, 1, 2][k])
        for u in range(N_USERS)
        for k, i in enumerate(rng.choice(N_ITEMS, size=5, replace=False))
    ]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["userID", "itemID", "rating", "timestamp", "x_label"]).to_csv(
        folder / "x.inter", sep="\t", index=False
    )
    image = rng.normal(size=(N_ITEMS, 6)).astype(np.float32)
    audio = rng.normal(size=(N_ITEMS, 4)).astype(np.float32)
    np.save(folder / "image_feat.npy", image)
    np.save(folder / "audio_feat.npy", audio)
    return image, audio


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm")
    image, audio = write_folder(root / "in")
    settings = get_settings(datasets_root=root, home=root / "home", feature_store=str(root / "home" / "features"))
    catalog, report = ingest("mmrec", settings, folder=root / "in")
    return root, settings, catalog, report, {"image": image, "audio": audio}


def test_image_and_audio_are_two_modalities_with_counts_and_hashes(ingested):
    _, settings, catalog, report, given = ingested
    assert (catalog.name, catalog.num_users, catalog.num_items) == ("x", N_USERS, N_ITEMS)
    assert list(catalog.meta["features"]) == ["image", "audio"]  # image, text first, then the others by name
    assert catalog.modalities == ["image", "text", "audio"]
    assert report.counts_out["items_with_image"] == report.counts_out["items_with_audio"] == N_ITEMS
    assert report.counts_out["items_with_text"] == 0 and "no text_feat.npy: no ready-made text features" in report.notes
    assert catalog.items["image_hash"].tolist() == row_hashes(given["image"])
    assert catalog.items["audio_hash"].tolist() == row_hashes(given["audio"])
    # the stored version keeps the audio hashes, and they count in the catalog's fingerprint
    loaded = Catalog.load(settings.catalog_dir("x"))
    assert loaded.items["audio_hash"].tolist() == row_hashes(given["audio"])
    assert loaded.fingerprint() == catalog.fingerprint() == loaded.meta["fingerprint"]
    edited = Catalog(
        loaded.name, loaded.items.assign(audio_hash=loaded.items["audio_hash"].str[::-1]), loaded.interactions
    )
    assert edited.fingerprint() != loaded.fingerprint()
    assert len(loaded.content_keys("audio")) == N_ITEMS
    with pytest.raises(CatalogError, match="has no 'video' content"):
        loaded.content_keys("video")
    info = FeatureStore(settings.feature_store).encoder_info(catalog.meta["features"]["audio"]["fingerprint"])
    assert info["source"] == "mmrec .npy import" and info["modality"] == "audio" and info["dim"] == 4
    assert Split.load(loaded.splits_dir / "given.parquet").counts() == {
        "train": 3 * N_USERS,
        "valid": N_USERS,
        "test": N_USERS,
    }


def test_the_features_load_for_training(ingested):
    _, settings, _, _, given = ingested
    catalog = Catalog.load(settings.catalog_dir("x"))
    fps = {m: f["fingerprint"] for m, f in catalog.meta["features"].items()}
    bundle = load_features(catalog, FeatureStore(settings.feature_store), fps)
    assert bundle.modalities == ["audio", "image"]
    for m in ("image", "audio"):
        assert bundle.masks[m].all() and np.array_equal(bundle.features[m].numpy(), given[m])
        assert bundle.fingerprints[m] == fps[m] and bundle.random_init[m] is False
    with pytest.raises(ValueError, match="modality 'Audio' is not a valid name"):
        load_features(catalog, FeatureStore(settings.feature_store), {"Audio": fps["audio"]})


@pytest.mark.parametrize("model", ["freedom", "lattice"])
def test_a_content_model_trains_on_image_and_audio(ingested, model):
    root, settings, _, _, _ = ingested
    folder = settings.catalog_dir("x")
    catalog = Catalog.load(folder)
    fps = {m: f["fingerprint"] for m, f in catalog.meta["features"].items()}
    bundle = load_features(catalog, FeatureStore(settings.feature_store), fps)
    run_dir = root / "runs" / model
    result = train_model(
        folder,
        catalog.splits_dir / "given.parquet",
        bundle,
        model,
        overrides={"embedding_dim": 8, "knn_k": 3, "batch_size": 16, "adapter": "befa"},
        run_dir=run_dir,
        max_epochs=1,
        quiet=True,
        num_threads=1,
    )
    rec = RunRecord.load(run_dir)
    assert len(rec.epochs) == 1 and result.record.state == "max_epochs"
    assert sorted(rec.feature_sets) == ["audio", "image"]
    assert {m: s["fingerprint"] for m, s in rec.feature_sets.items()} == fps
    assert set(rec.feature_snapshots) == {"audio", "image"}
    assert "audio_hash" in load_universe(run_dir).items  # serving reads the audio rows by their hash


def test_every_modality_exports_and_comes_back(ingested, tmp_path):
    _, settings, catalog, _, given = ingested
    split = Split.load(Catalog.load(settings.catalog_dir("x")).splits_dir / "given.parquet")
    export_mmrec(catalog, split, tmp_path, features=dict(given), name="x")
    assert sorted(p.name for p in tmp_path.glob("*_feat.npy")) == ["audio_feat.npy", "image_feat.npy"]
    back = IMPORTERS["mmrec"](folder=tmp_path)
    assert list(back.features) == ["image", "audio"]
    assert np.array_equal(back.features["audio"].matrix, given["audio"])
    with pytest.raises(ValueError, match="modality 'Video' is not a valid name"):
        export_mmrec(catalog, split, tmp_path / "bad", features={"Video": given["audio"]})


@pytest.mark.parametrize("name", ["Audio_feat.npy", "audio-v2_feat.npy", "2d_feat.npy", "_feat.npy"])
def test_a_bad_modality_name_in_a_file_is_refused_naming_the_file(tmp_path, name):
    _, audio = write_folder(tmp_path)
    np.save(tmp_path / name, audio)
    with pytest.raises(CatalogError, match=re.escape(name) + ": modality '.*' is not a valid name") as err:
        IMPORTERS["mmrec"](folder=tmp_path)
    assert str(tmp_path / name) in str(err.value) and "<modality>_feat.npy" in str(err.value)


def test_modality_names_and_their_order():
    assert modality_order(["video", "audio", "text", "image"]) == ["image", "text", "audio", "video"]
    assert modality_order(iter(["audio"])) == ["audio"]
    assert check_modality("video_v2") == "video_v2"
    for bad in ["", "Image", "a b", "a.b", "x" * 65, None]:
        with pytest.raises(ValueError, match="is not a valid name"):
            check_modality(bad)
