"""A phone photo stored sideways with EXIF Orientation=6 is embedded upright.

A real MovieLens poster is saved as a JPEG with its pixels turned a quarter
(counter-clockwise) plus EXIF Orientation=6, so that a viewer turns it back and shows it
upright. It goes through befa's real extraction (``extract_features``: the DataLoader,
``ImageItems``, ``to_rgb``) with EfficientNet-Lite0's packaged ImageNet weights into a
feature store, beside two upright references: the picture a viewer shows (the JPEG's
decoded pixels turned back by numpy, saved losslessly as PNG), which its feature must
equal (cosine > 0.999), and the poster saved upright as JPEG the same way (cosine > 0.99:
two JPEG encodings of the poster differ by their compression, 0.9955 here). The same
pixels embedded as stored (orientation ignored, what befa did before) are far off.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image

from encoders import create_encoder
from encoders.base import IMAGE_DECODING, upright
from pipeline.data.catalog import build_catalog
from pipeline.features.extract import extract_features
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey, sha256_file

REPO = Path(__file__).resolve().parents[2]
POSTER = 50  # Star Wars


@pytest.fixture(scope="module")
def poster() -> Image.Image:
    root = Path(os.environ.get("BEFA_DATASETS_ROOT") or REPO.parent / "shared" / "datasets")
    path = root / "movielens-100k-posters" / "posters" / f"{POSTER}.jpg"
    if not path.exists():
        pytest.skip(f"poster absent: {path}")
    with Image.open(path) as im:
        return im.convert("RGB").resize((192, 288))  # multiples of 16: JPEG blocks line up after the turn


def _save_images(poster: Image.Image, folder: Path) -> dict[str, Path]:
    paths = {name: folder / name for name in ("rotated.jpg", "shown.png", "original.jpg")}
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "turn 90 degrees clockwise to show"
    poster.transpose(Image.Transpose.ROTATE_90).save(paths["rotated.jpg"], quality=95, exif=exif.tobytes())
    with Image.open(paths["rotated.jpg"]) as stored:
        pixels = np.asarray(stored.convert("RGB"))  # as they lie in the file
    Image.fromarray(np.ascontiguousarray(np.rot90(pixels, k=-1))).save(paths["shown.png"])  # turned clockwise
    poster.save(paths["original.jpg"], quality=95)
    return paths


def test_a_rotated_phone_photo_is_embedded_upright(poster, tmp_path):
    paths = _save_images(poster, tmp_path)
    rotated_path = paths["rotated.jpg"]
    with Image.open(rotated_path) as stored:
        assert stored.size == (288, 192)  # the pixels are sideways on disk ...
        assert stored.getexif()[ExifTags.Base.Orientation] == 6
        shown = upright(stored)
        assert shown.size == (192, 288)  # ... and a viewer shows them upright
        assert ExifTags.Base.Orientation not in shown.getexif()
        assert upright(shown) is shown  # applied once, never twice

    ids = ["rotated", "shown", "original"]
    items = pd.DataFrame(
        {
            "item_id": ids,
            "title": ids,
            "text": ids,
            "image": [str(paths[n]) for n in ("rotated.jpg", "shown.png", "original.jpg")],
        }
    )
    items["image_hash"] = [sha256_file(p) for p in items["image"]]
    inter = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "item_id": ids, "rating": 5.0, "timestamp": 1})
    catalog = build_catalog("exif-test", items, inter)
    encoder = create_encoder("effnet:lite0")  # real ImageNet weights, from the installed package
    store = FeatureStore(tmp_path / "store")
    summary = extract_features(
        catalog, encoder, store, modalities=["image"], batch_size=2, num_workers=1, progress=False
    )
    assert summary.modalities["image"].encoded == 3
    x, mask = store.read(FeatureSetKey("exif-test", encoder.fingerprint, "image"), ids)
    assert mask.all()
    rotated, shown, original = torch.from_numpy(x.copy()).split(1)
    assert F.cosine_similarity(rotated, shown).item() > 0.999
    assert F.cosine_similarity(rotated, original).item() > 0.99

    # what befa stored before: the pixels as they lie in the file, orientation ignored
    with Image.open(io.BytesIO(rotated_path.read_bytes())) as raw:
        sideways = encoder.embed_pixels(encoder.image_transform(raw.convert("RGB"))[None]).cpu()
    assert F.cosine_similarity(sideways, shown).item() < 0.9

    # the encoder's own convenience path applies the orientation too
    with Image.open(rotated_path) as im:
        direct = encoder.encode_images([im])
    assert F.cosine_similarity(direct, shown).item() > 0.999


def test_the_image_decoding_is_part_of_the_fingerprint():
    """Stores keyed on the old definition re-extract images instead of mixing the two."""
    image = create_encoder("effnet:lite0@random")
    assert image.info()["image_decoding"] == IMAGE_DECODING == "exif-orientation-applied"
    text = create_encoder("minilm")
    assert "image_decoding" not in text.info()
