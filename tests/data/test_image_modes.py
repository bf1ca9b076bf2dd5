"""Every image mode PIL opens becomes the picture a person sees (``pipeline.data.image_modes``).

A real poster is saved in each mode and format, read back from the bytes, converted with
``to_rgb`` and embedded with EfficientNet-Lite0 (ImageNet weights, offline); the
embedding must match the 8-bit reference of the same picture (the cosine close to 1).
The reference is the poster itself for colour modes, its grayscale for gray modes, and
the poster composited over white for modes with transparency.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image

from encoders import create_encoder
from pipeline.data.image_modes import to_rgb
from pipeline.features.images import ImageItems

REPO = Path(__file__).resolve().parents[2]
POSTER = 50  # Star Wars


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    root = Path(os.environ.get("BEFA_DATASETS_ROOT") or REPO.parent / "shared" / "datasets")
    path = root / "movielens-100k-posters" / "posters" / f"{POSTER}.jpg"
    if not path.exists():
        pytest.skip(f"poster absent: {path}")
    with Image.open(path) as im:
        return im.convert("RGB").resize((160, 240))


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("effnet:lite0")


def _reopen(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


def _png16(arr: np.ndarray) -> Image.Image:
    """A 16-bit-per-channel PNG (colour type 2 for RGB, 6 for RGBA), written by hand: PIL cannot save one."""
    h, w, c = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return Image.open(io.BytesIO(png))


def _alpha(picture: Image.Image) -> np.ndarray:
    """An alpha mask: opaque in the middle, transparent at the borders, a soft ramp between."""
    h, w = picture.height, picture.width
    y, x = np.mgrid[0:h, 0:w]
    edge = np.minimum.reduce([x, y, w - 1 - x, h - 1 - y]).astype(np.float64)
    return np.clip(edge * 12, 0, 255).astype(np.uint8)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> Image.Image:
    a = alpha[..., None] / 255.0
    return Image.fromarray(np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8), "RGB")


def _cases(picture: Image.Image) -> dict[str, tuple[Image.Image, Image.Image, float]]:
    """name -> (image as read back, 8-bit reference, minimum cosine)."""
    rgb = np.asarray(picture)
    gray = picture.convert("L")
    g = np.asarray(gray).astype(np.uint16)
    alpha = _alpha(picture)
    # the transparent pixels hold black, as many exporters leave them
    hidden = (rgb * (alpha[..., None] > 0)).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([hidden, alpha]), "RGBA")
    la = Image.fromarray(np.dstack([(np.asarray(gray) * (alpha > 0)).astype(np.uint8), alpha]), "LA")
    palette = picture.quantize(256)
    palette_t = palette.copy()
    palette_t.info["transparency"] = int(np.asarray(palette)[0, 0])  # the corner's colour is see-through
    corner = np.asarray(palette) == palette_t.info["transparency"]
    return {
        "L png": (_reopen(gray, "PNG"), gray.convert("RGB"), 0.995),
        "I;16 png (16-bit gray)": (_reopen(Image.fromarray(g * 257), "PNG"), gray.convert("RGB"), 0.995),
        "I tiff (32-bit int, 16-bit data)": (
            _reopen(Image.fromarray((g * 257).astype(np.int32)), "TIFF"),
            gray.convert("RGB"),
            0.995,
        ),
        "F tiff (float 0..1)": (
            _reopen(Image.fromarray((g / 255.0).astype(np.float32)), "TIFF"),
            gray.convert("RGB"),
            0.995,
        ),
        "1 png (bilevel)": (_reopen(gray.convert("1"), "PNG"), gray.convert("1").convert("RGB"), 0.995),
        "RGB 48-bit png": (_png16(rgb.astype(np.uint16) * 257), picture, 0.995),
        "RGBA 64-bit png": (_png16(np.dstack([hidden, alpha]).astype(np.uint16) * 257), _over_white(rgb, alpha), 0.995),
        "RGBA png": (_reopen(rgba, "PNG"), _over_white(rgb, alpha), 0.995),
        "LA png": (_reopen(la, "PNG"), _over_white(np.dstack([np.asarray(gray)] * 3), alpha), 0.995),
        "P png (palette)": (_reopen(palette, "PNG"), palette.convert("RGB"), 0.995),
        "P png with a transparent colour": (
            _reopen(palette_t, "PNG", transparency=palette_t.info["transparency"]),
            _over_white(np.asarray(palette.convert("RGB")), np.where(corner, 0, 255).astype(np.uint8)),
            0.995,
        ),
        "CMYK jpeg": (_reopen(picture.convert("CMYK"), "JPEG", quality=95), picture, 0.99),
        "CMYK tiff": (_reopen(picture.convert("CMYK"), "TIFF"), picture, 0.995),
        "YCbCr tiff": (_reopen(picture.convert("YCbCr"), "TIFF"), picture, 0.99),
        "LAB tiff": (_reopen(picture.convert("LAB"), "TIFF"), picture, 0.99),
        "RGB jpeg": (_reopen(picture, "JPEG", quality=95), picture, 0.99),
    }


def test_every_mode_embeds_like_its_8bit_reference(picture, encoder):
    cases = _cases(picture)
    modes = {name: img.mode for name, (img, _, _) in cases.items()}
    assert {"I;16", "I", "F", "1", "RGBA", "LA", "P", "CMYK", "YCbCr", "LAB", "L", "RGB"} <= set(modes.values())
    got = encoder.encode_images([to_rgb(img) for img, _, _ in cases.values()])
    want = encoder.encode_images([ref for _, ref, _ in cases.values()])
    cosines = F.cosine_similarity(got, want)
    for (name, (_, _, floor)), cos in zip(cases.items(), cosines.tolist()):
        assert cos >= floor, f"{name} ({modes[name]}): cosine {cos:.4f} to its 8-bit reference"


def test_plain_convert_was_wrong_for_16_bit_and_alpha(picture, encoder):
    """The bug this fixes: convert('RGB') turns a 16-bit picture (nearly) white and shows hidden pixels."""
    cases = _cases(picture)
    sixteen, ref16, _ = cases["I;16 png (16-bit gray)"]
    assert np.asarray(sixteen.convert("RGB")).mean() > 250  # almost solid white
    assert abs(np.asarray(to_rgb(sixteen)).astype(float) - np.asarray(ref16)).max() <= 1
    rgba, ref_rgba, _ = cases["RGBA png"]
    assert np.asarray(rgba.convert("RGB"))[0, 0].tolist() == [0, 0, 0]  # the hidden colour
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]
    naive, fixed, want = encoder.encode_images([sixteen.convert("RGB"), to_rgb(sixteen), ref16])
    assert (
        F.cosine_similarity(naive[None], want[None]).item() < 0.9 < F.cosine_similarity(fixed[None], want[None]).item()
    )


def test_extraction_reads_through_to_rgb(picture, tmp_path):
    g = np.asarray(picture.convert("L")).astype(np.uint16) * 257
    path = tmp_path / "gray16.png"
    Image.fromarray(g).save(path)
    items = ImageItems(
        [str(path)], [hashlib.sha256(path.read_bytes()).hexdigest()], transform=lambda im: np.asarray(im)
    )
    _, pixels, problem = items[0]
    assert problem is None
    assert abs(pixels.astype(float) - np.asarray(picture.convert("L").convert("RGB"))).max() <= 1
