"""Images decoded in threads ahead of the forward pass give the serial path's batches and features;
texts are encoded in length order and stored in catalog order."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from encoders import create_encoder
from pipeline.data.catalog import build_catalog
from pipeline.features.batches import ExtractTuning, text_windows
from pipeline.features.extract import extract_features
from pipeline.features.images import ImageItems
from pipeline.features.prefetch import prefetched_batches
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey, sha256_file

N = 8


@pytest.fixture(scope="module")
def lite0():
    return create_encoder("effnet:lite0")


@pytest.fixture()
def posters(datasets_root, tmp_path):
    """``N`` real posters and one file that does not decode."""
    folder = datasets_root / "movielens-100k-posters" / "posters"
    paths = sorted(folder.glob("*.jpg"))[:N]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    return [str(p) for p in paths[:3]] + [str(broken)] + [str(p) for p in paths[3:]]


def test_prefetched_batches_are_the_serial_batches(posters, lite0):
    items = ImageItems(posters, [sha256_file(p) for p in posters], lite0.image_transform)
    serial = list(prefetched_batches(items, batch_size=3, threads=0))
    threaded = list(prefetched_batches(items, batch_size=3, threads=2))
    assert len(serial) == len(threaded) == 3
    for (p0, x0, bad0), (p1, x1, bad1) in zip(serial, threaded):
        assert p0 == p1 and bad0 == bad1 and torch.equal(x0, x1)
    assert [p for p, _ in serial[1][2]] == [3] and "does not decode" in serial[1][2][0][1]
    # a consumer that stops early leaves no decoding behind (the pool is shut down)
    stream = prefetched_batches(items, batch_size=2, threads=2)
    next(stream)
    stream.close()


def test_prefetch_extraction_gives_the_features_of_the_serial_and_dataloader_paths(posters, lite0, tmp_path):
    ok = [p for p in posters if not p.endswith("broken.jpg")]
    items = pd.DataFrame(
        {"item_id": [str(i) for i in range(len(ok))], "title": "a film", "text": "a film", "image": ok}
    )
    items["image_hash"] = [sha256_file(p) for p in ok]
    inter = pd.DataFrame({"user_id": ["1"], "item_id": ["0"], "rating": [5.0], "timestamp": [1]})
    catalog = build_catalog("prefetch-test", items, inter)
    key = FeatureSetKey(catalog.name, lite0.fingerprint, "image")
    out = {}
    for name, workers, tuning in (
        ("threads", 2, ExtractTuning()),
        ("serial", 0, ExtractTuning()),
        ("dataloader", 1, ExtractTuning(decode_threads=False)),
    ):
        store = FeatureStore(tmp_path / name)
        extract_features(
            catalog,
            lite0,
            store,
            modalities=["image"],
            batch_size=3,
            num_workers=workers,
            tuning=tuning,
            progress=False,
        )
        out[name] = torch.from_numpy(store.read(key, items["item_id"].tolist())[0].copy())
    for name in ("serial", "dataloader"):
        assert F.cosine_similarity(out["threads"], out[name], dim=-1).min().item() >= 0.9999
    torch.testing.assert_close(out["threads"], out["serial"])


def test_texts_go_in_length_order_within_windows_and_parts_keep_catalog_order(tmp_path):
    texts = ["a much longer text than the others", "short", "mid length", "tiny", "x" * 50, "yy"]
    assert text_windows(texts, window=3, by_length=True) == [[1, 2, 0], [5, 3, 4]]
    assert text_windows(texts, window=3, by_length=False) == [[0, 1, 2], [3, 4, 5]]
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(6)], "title": texts, "text": texts, "image": None})
    inter = pd.DataFrame({"user_id": ["1"], "item_id": ["i0"], "rating": [5.0], "timestamp": [1]})
    catalog = build_catalog("order-test", items, inter)
    tiny = create_encoder("imagebind:tiny@random")
    store = FeatureStore(tmp_path / "store")
    extract_features(catalog, tiny, store, modalities=["text"], batch_size=2, part_size=3, progress=False)
    parts = sorted((tmp_path / "store").rglob("part-*.parquet"))
    assert [pq.read_table(p)["item_id"].to_pylist() for p in parts] == [["i0", "i1", "i2"], ["i3", "i4", "i5"]]
    key = FeatureSetKey(catalog.name, tiny.fingerprint, "text")
    got, _ = store.read(key, items["item_id"].tolist())
    want = tiny.encode_texts(texts).numpy()
    assert F.cosine_similarity(torch.from_numpy(got.copy()), torch.from_numpy(want), dim=-1).min().item() >= 0.9999
