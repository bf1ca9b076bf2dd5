"""Batch extraction into the feature store: incremental, resumable, failures listed, read back with masks.

Runs the real DataLoader (worker processes) with the tiny ImageBind built from the
package's classes at random init, on real MovieLens posters and texts.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from PIL import Image

from encoders import create_encoder
from pipeline.data.catalog import Catalog, build_catalog
from pipeline.features.extract import extract_command, extract_features
from pipeline.features.load import load_features
from pipeline.reporting.console import summary_table
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey, sha256_file

N_POSTERS = 20
NO_POSTER_ID = "999001"  # an item without image: rejected at ingest
BROKEN_ID = "999002"  # an item whose image file does not decode


class Interrupted(RuntimeError):
    pass


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("imagebind:tiny@random")


@pytest.fixture()
def make_catalog(datasets_root, tmp_path):
    """Build catalogs over copies of real posters in tmp_path (so a test may change one)."""
    src = datasets_root / "movielens-100k-posters"
    meta = pd.read_csv(src / "items.csv").drop_duplicates("movie_id")
    meta = meta[[(src / "posters" / f"{m}.jpg").exists() for m in meta.movie_id]].head(N_POSTERS)
    folder = tmp_path / "posters"
    folder.mkdir()
    for m in meta.movie_id:
        shutil.copy(src / "posters" / f"{m}.jpg", folder / f"{m}.jpg")
    (folder / f"{BROKEN_ID}.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")

    def make() -> "Catalog":
        rows = [
            {
                "item_id": str(m),
                "title": t,
                "text": f"{t}. {o if isinstance(o, str) else ''}",
                "image": str(folder / f"{m}.jpg"),
            }
            for m, t, o in zip(meta.movie_id, meta.title, meta.overview)
        ]
        rows.append({"item_id": NO_POSTER_ID, "title": "No poster", "text": "A film without a poster.", "image": None})
        rows.append(
            {
                "item_id": BROKEN_ID,
                "title": "Broken poster",
                "text": "A film with a broken poster.",
                "image": str(folder / f"{BROKEN_ID}.jpg"),
            }
        )
        items = pd.DataFrame(rows)
        items["image_hash"] = [sha256_file(p) if isinstance(p, str) else None for p in items["image"]]
        inter = pd.DataFrame(
            {
                "user_id": ["1", "2"],
                "item_id": [rows[0]["item_id"], rows[1]["item_id"]],
                "rating": [5.0, 4.0],
                "timestamp": [1, 2],
            }
        )
        return build_catalog("posters-test", items, inter)

    make.folder = folder
    make.ids = [str(m) for m in meta.movie_id]
    return make


def run(catalog, encoder, store, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_workers", 1)
    kw.setdefault("progress", False)
    return extract_features(catalog, encoder, store, **kw)


def test_first_run_then_nothing_then_exactly_the_changed_poster(make_catalog, encoder, tmp_path):
    store = FeatureStore(tmp_path / "store")
    catalog = make_catalog()
    first = run(catalog, encoder, store)
    img, txt = first.modalities["image"], first.modalities["text"]
    assert (img.encoded, img.skipped, img.failed, img.no_content) == (N_POSTERS, 0, 1, 1)
    assert (txt.encoded, txt.skipped, txt.failed) == (N_POSTERS + 2, 0, 0)
    assert img.snapshot_rows == N_POSTERS and txt.snapshot_rows == N_POSTERS + 2
    # failures are listed with the reason, not dropped silently
    (failed,) = img.failed_items
    assert failed["item_id"] == BROKEN_ID and "does not decode" in failed["reason"]
    assert {m["item_id"] for m in img.missing_items if m["kind"] == "no_content"} == {NO_POSTER_ID}
    assert first.failed_items[0]["modality"] == "image"
    # the encoder is registered in the store, random init labelled
    info = store.encoder_info(encoder.fingerprint)
    assert info["random_init"] is True and info["dim"] == 16 and info["spec"] == "imagebind:tiny@random:0"
    assert "weights: random init" in str(first)

    second = run(catalog, encoder, store)
    assert second.encoded == 0
    assert second.modalities["image"].skipped == N_POSTERS and second.modalities["text"].skipped == N_POSTERS + 2
    assert second.snapshot_ids == first.snapshot_ids  # nothing changed, same snapshot

    # replace one poster by another image: only that item is re-encoded
    changed = make_catalog.ids[3]
    shutil.copy(make_catalog.folder / f"{make_catalog.ids[0]}.jpg", make_catalog.folder / f"{changed}.jpg")
    catalog2 = make_catalog()
    third = run(catalog2, encoder, store)
    assert third.modalities["image"].encoded == 1 and third.modalities["image"].skipped == N_POSTERS - 1
    assert third.modalities["text"].encoded == 0
    assert third.modalities["image"].snapshot_id != first.modalities["image"].snapshot_id
    bundle = load_features(catalog2, store, third.fingerprints)
    feats, snaps = bundle.features, bundle.snapshots
    idx = int(catalog2.items.index[catalog2.items.item_id == changed][0])
    torch.testing.assert_close(feats["image"][idx], feats["image"][0])  # same picture, same vector
    assert snaps == third.snapshot_ids


def test_stale_image_on_disk_is_not_stored_under_the_old_hash(make_catalog, encoder, tmp_path):
    store = FeatureStore(tmp_path / "store")
    catalog = make_catalog()  # hashes taken now
    victim = make_catalog.ids[2]
    shutil.copy(make_catalog.folder / f"{make_catalog.ids[0]}.jpg", make_catalog.folder / f"{victim}.jpg")
    out = run(catalog, encoder, store, modalities=["image"])
    assert out.modalities["image"].encoded == N_POSTERS - 1
    reasons = {m["item_id"]: m["reason"] for m in out.failed_items}
    assert "changed since ingest" in reasons[victim]


def test_interrupted_run_resumes_without_duplicates(make_catalog, encoder, tmp_path):
    store = FeatureStore(tmp_path / "store")
    catalog = make_catalog()

    def stop_after_second_part(modality, n_parts, name):
        if n_parts == 2:
            raise Interrupted(f"stopped after {name}")

    with pytest.raises(Interrupted):
        run(catalog, encoder, store, modalities=["image"], part_size=4, on_part=stop_after_second_part)
    fp = encoder.fingerprint
    key = FeatureSetKey(catalog.name, fp, "image")
    assert len(store.existing_keys(key)) == 8  # two pending parts of 4
    assert store.current_snapshot(key) is None  # nothing committed

    resumed = run(catalog, encoder, store, modalities=["image"], part_size=4)
    img = resumed.modalities["image"]
    assert (img.encoded, img.skipped, img.failed) == (N_POSTERS - 8, 8, 1)
    table = store.read_table(key)
    ids = table["item_id"].to_pylist()
    assert len(ids) == len(set(ids)) == N_POSTERS
    assert set(ids) == set(make_catalog.ids)

    # the resumed store holds the same vectors as one uninterrupted run
    fresh = FeatureStore(tmp_path / "fresh")
    run(catalog, encoder, fresh, modalities=["image"], num_workers=0)
    first, second = load_features(catalog, store, {"image": fp}), load_features(catalog, fresh, {"image": fp})
    a, ma, b, mb = first.features, first.masks, second.features, second.masks
    assert torch.equal(ma["image"], mb["image"])
    torch.testing.assert_close(a["image"], b["image"])


def test_load_features_masks_and_fill_rules(make_catalog, encoder, tmp_path):
    store = FeatureStore(tmp_path / "store")
    catalog = make_catalog()
    out = run(catalog, encoder, store)
    mean_fill, zero_fill = (
        load_features(catalog, store, out.fingerprints, fill="mean"),
        load_features(catalog, store, out.fingerprints, fill="zero"),
    )
    feats, masks, snaps = mean_fill.features, mean_fill.masks, mean_fill.snapshots
    zero = zero_fill.features
    n = catalog.num_items
    assert feats["image"].shape == (n, 16) and feats["image"].dtype == torch.float32
    assert snaps == out.snapshot_ids
    mask = masks["image"]
    missing = catalog.items.item_id[~mask.numpy()].tolist()
    assert sorted(missing) == sorted([NO_POSTER_ID, BROKEN_ID])
    assert masks["text"].all()
    present_mean = feats["image"][mask].mean(dim=0)
    for row in torch.nonzero(~mask).flatten():
        torch.testing.assert_close(feats["image"][row], present_mean)
        assert torch.count_nonzero(zero["image"][row]) == 0
    assert torch.equal(zero["image"][mask], feats["image"][mask])
    # the DataLoader path gives the same vectors as the encoder called directly
    first = catalog.items.iloc[0]
    direct = encoder.encode_images([Image.open(first["image"])])[0]
    torch.testing.assert_close(feats["image"][0], direct, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="fill must be"):
        load_features(catalog, store, out.fingerprints, fill="median")
    with pytest.raises(Exception, match="run `befa extract"):
        load_features(catalog, store, {"image": "clip-nothing-here-000000000000"})


def test_per_modality_spec_and_cli_helpers(make_catalog, tmp_path, monkeypatch):
    from rich.console import Console

    from pipeline.settings import get_settings

    settings = get_settings(home=tmp_path / "home", feature_store=str(tmp_path / "features"))
    catalog = make_catalog()
    catalog.save(settings.catalog_dir(catalog.name))
    spec = "image=imagebind:tiny@random,text=imagebind:tiny@random:1"
    summary = extract_command(catalog.name, spec, settings=settings, num_workers=0, device="cpu", progress=False)
    fps = summary.fingerprints
    assert fps["image"] != fps["text"]  # two encoders, one per modality
    assert summary.modalities["image"].encoded == N_POSTERS
    assert summary.modalities["text"].encoded == N_POSTERS + 2
    console = Console(record=True, width=200)
    console.print(summary_table(summary))
    text = console.export_text()
    assert fps["image"] in text and "weights: random init" in text and BROKEN_ID in text
    again = extract_command(catalog.name, spec, settings=settings, num_workers=0, device="cpu", progress=False)
    assert again.encoded == 0 and again.snapshot_ids == summary.snapshot_ids
    d = again.to_dict()
    assert d["modalities"]["image"]["skipped"] == N_POSTERS


def test_same_weights_from_another_path_share_the_fingerprint(encoder, make_catalog, tmp_path):
    """A checkpoint moved elsewhere is the same encoder: same fingerprint, store reused, no conflict."""
    state = {k: v.contiguous() for k, v in encoder.model.state_dict().items()}
    a, b = tmp_path / "a" / "ib.pt", tmp_path / "b" / "ib_copy.pt"
    a.parent.mkdir()
    b.parent.mkdir()
    torch.save(state, a)
    shutil.copy(a, b)
    enc_a, enc_b = create_encoder(f"imagebind:tiny@{a}"), create_encoder(f"imagebind:tiny@{b}")
    assert enc_a.fingerprint == enc_b.fingerprint != encoder.fingerprint
    store = FeatureStore(tmp_path / "store")
    catalog = make_catalog()
    run(catalog, enc_a, store, modalities=["text"])
    again = run(catalog, enc_b, store, modalities=["text"])
    assert again.encoded == 0
    assert store.encoder_info(enc_a.fingerprint)["spec"] == f"imagebind:tiny@{a}"  # first registration kept
