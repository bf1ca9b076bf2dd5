"""The ONNX Runtime backend on real MovieLens posters and texts, offline: the same features as
torch, the backend recorded in the store, the ``auto`` rule measured once and reused, and a
missing onnxruntime falling back to torch with one line."""

from __future__ import annotations

import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from encoders import create_encoder
from encoders.onnx_backend import onnx_path, torch_label
from pipeline.data.catalog import build_catalog
from pipeline.features.backend import AUTO_MIN_ITEMS, MIN_COSINE, SPEEDUP, BackendTrial, Embedder
from pipeline.features.extract import extract_features
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey, sha256_file
from storage.parts import BACKEND_METADATA_KEY

N = 6


@pytest.fixture(scope="module")
def lite0():
    return create_encoder("effnet:lite0")


@pytest.fixture(scope="module")
def minilm():
    return create_encoder("minilm")


@pytest.fixture(scope="module")
def catalog(datasets_root):
    """``N`` real MovieLens films: poster and title + overview text."""
    src = datasets_root / "movielens-100k-posters"
    meta = pd.read_csv(src / "items.csv").drop_duplicates("movie_id")
    meta = meta[[(src / "posters" / f"{m}.jpg").exists() for m in meta.movie_id]].head(N)
    items = pd.DataFrame(
        {
            "item_id": [str(m) for m in meta.movie_id],
            "title": meta.title.tolist(),
            "text": [f"{t}. {o if isinstance(o, str) else ''}" for t, o in zip(meta.title, meta.overview)],
            "image": [str(src / "posters" / f"{m}.jpg") for m in meta.movie_id],
        }
    )
    items["image_hash"] = [sha256_file(p) for p in items["image"]]
    inter = pd.DataFrame({"user_id": ["1"], "item_id": [items.item_id[0]], "rating": [5.0], "timestamp": [1]})
    return build_catalog("backend-test", items, inter)


def _extract(catalog, encoder, root, backend, onnx_dir=None, **kw):
    store = FeatureStore(root)
    summary = extract_features(
        catalog, encoder, store, backend=backend, onnx_dir=onnx_dir, progress=False, num_workers=1, **kw
    )
    (modality,) = summary.modalities
    key = FeatureSetKey(catalog.name, encoder.fingerprint, modality)
    x, mask = store.read(key, catalog.items["item_id"].tolist())
    assert mask.all()
    return summary.modalities[modality], store, key, torch.from_numpy(x.copy())


def test_onnx_gives_torch_features_on_real_posters_and_the_store_records_the_backend(catalog, lite0, tmp_path):
    onnx_dir = tmp_path / "onnx"
    t_sum, t_store, t_key, want = _extract(catalog, lite0, tmp_path / "a", "torch")
    o_sum, o_store, o_key, got = _extract(catalog, lite0, tmp_path / "b", "onnx", onnx_dir)
    assert o_sum.backend.startswith("onnxruntime ") and t_sum.backend == torch_label()
    assert F.cosine_similarity(want, got, dim=-1).min().item() >= MIN_COSINE  # per item
    assert o_key == t_key  # the same fingerprint: the same function to the tolerance
    # the store records which backend made the feature set: per part, counted in each snapshot
    assert o_store.current_snapshot(o_key).backends == {o_sum.backend: N}
    assert t_store.current_snapshot(t_key).backends == {torch_label(): N}
    (part,) = (tmp_path / "b").rglob("part-*.parquet")
    assert pq.read_schema(part).metadata[BACKEND_METADATA_KEY].decode() == o_sum.backend
    assert o_sum.features().backend == o_sum.backend and "min cosine" in o_sum.backend_reason
    # exported once, keyed by the fingerprint, and reused
    exported = onnx_path(onnx_dir, lite0.fingerprint, "image")
    stamp = exported.stat().st_mtime_ns
    _extract(catalog, lite0, tmp_path / "c", "onnx", onnx_dir)
    assert exported.stat().st_mtime_ns == stamp
    assert not list(onnx_dir.rglob(".tmp-*"))  # written under a temporary name, then renamed


def test_minilm_on_onnx_gives_torch_features_on_real_texts(catalog, minilm, tmp_path):
    _, _, _, want = _extract(catalog, minilm, tmp_path / "a", "torch")
    summary, _, _, got = _extract(catalog, minilm, tmp_path / "b", "onnx", tmp_path / "onnx")
    assert summary.backend.startswith("onnxruntime ")
    assert F.cosine_similarity(want, got, dim=-1).min().item() >= MIN_COSINE


def test_a_missing_onnxruntime_falls_back_to_torch_with_one_line(catalog, lite0, minilm, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    lines: list[str] = []
    store = FeatureStore(tmp_path / "a")
    summary = extract_features(
        catalog,
        {"image": lite0, "text": minilm},
        store,
        backend="onnx",
        onnx_dir=tmp_path / "onnx",
        progress=False,
        log=lines.append,
    )
    said = [line for line in lines if "onnxruntime" in line]
    assert len(said) == 1, said  # one line, though both modalities fell back
    assert said[0].startswith("onnxruntime is not installed (pip install onnxruntime==1.31.0")
    assert said[0].endswith(f"; encoding with {torch_label()}")
    for modality, encoder in (("image", lite0), ("text", minilm)):
        assert summary.modalities[modality].backend == torch_label()
        key = FeatureSetKey(catalog.name, encoder.fingerprint, modality)
        assert store.current_snapshot(key).backends == {torch_label(): N}
    assert not (tmp_path / "onnx").exists()  # nothing exported


def test_an_encoder_without_an_onnx_export_runs_on_torch_and_says_so(catalog, tmp_path):
    tiny = create_encoder("imagebind:tiny@random")
    lines: list[str] = []
    summary, _, _, _ = _extract(
        catalog, tiny, tmp_path / "a", "onnx", tmp_path / "onnx", modalities=["image"], log=lines.append
    )
    assert summary.backend == torch_label()
    assert [line for line in lines if "no ONNX export" in line] == [
        f"image: {summary.backend_reason}; encoding with {torch_label()}"
    ]


def _pixels(encoder, catalog) -> torch.Tensor:
    return torch.stack([encoder.image_transform(Image.open(p).convert("RGB")) for p in catalog.items["image"]])


def _embedder(encoder, onnx_dir, items, note=lambda line: None) -> Embedder:
    return Embedder(
        encoder, "image", "auto", device=torch.device("cpu"), onnx_dir=onnx_dir, threads=1, items=items, note=note
    )


def test_auto_measures_once_records_the_verdict_and_reuses_it(catalog, lite0, tmp_path):
    pixels = _pixels(lite0, catalog)
    onnx_dir = tmp_path / "onnx"
    # too few items and nothing measured yet: torch, nothing exported
    small = _embedder(lite0, onnx_dir, items=N)
    small(pixels)
    assert small.label == torch_label() and "no measurement here yet" in small.choice.reason
    assert not onnx_dir.exists() and N < AUTO_MIN_ITEMS
    # enough items: the first batch runs on both, the verdict follows the rule and is recorded
    said: list[str] = []
    first = _embedder(lite0, onnx_dir, items=10**6, note=said.append)
    out = first(pixels)
    (record,) = onnx_dir.rglob("image-choice-*.json")
    trial = BackendTrial.model_validate_json(record.read_text())
    assert trial.chosen == ("onnx" if trial.speedup >= SPEEDUP and trial.min_cosine >= MIN_COSINE else "torch")
    assert trial.min_cosine >= MIN_COSINE and trial.batch == N and trial.fingerprint == lite0.fingerprint
    assert len(said) == 1 and f"-> {trial.chosen}" in said[0] and "measured" in first.choice.reason
    assert onnx_path(onnx_dir, lite0.fingerprint, "image").is_file() == (trial.chosen == "onnx")
    torch.testing.assert_close(out, lite0.embed_pixels(pixels), atol=2e-4, rtol=0)
    # a later run here reuses the verdict, whatever its size, without measuring again
    stamp = record.stat().st_mtime_ns
    later = _embedder(lite0, onnx_dir, items=1)
    later(pixels)
    assert "recorded" in later.choice.reason and later.label.startswith(
        "onnxruntime" if trial.chosen == "onnx" else "torch"
    )
    assert record.stat().st_mtime_ns == stamp
