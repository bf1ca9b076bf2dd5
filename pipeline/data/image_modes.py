"""Any image PIL opens, as the 8-bit RGB picture a person would see.

First the EXIF orientation is applied (``encoders.base.upright``): a phone photo stored
sideways with Orientation=6 becomes upright, as every viewer shows it. Encoders that embed
images record this step in their fingerprint (``encoders.base.IMAGE_DECODING``).

``Image.convert("RGB")`` alone is wrong for several modes PIL opens:

- 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``; 16-bit PNGs and TIFFs) and 32-bit
  integer ``I`` are clipped at 255, so most pictures become solid white; they are scaled
  from their range (0..65535 for 16-bit data) to 0..255 instead. Float ``F`` is read as
  0..1 when its values lie there, else as 0..255 (clipped).
- Alpha (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, and palette images with a
  transparent colour) is dropped by ``convert``, which shows whatever colour the
  transparent pixels happen to hold (often black); the picture is composited over white,
  as a shop shows a product photo with a transparent background.
- CMYK, palette, bilevel, L, YCbCr, LAB and HSV convert correctly (PIL undoes the
  inverted Adobe CMYK JPEGs on load); 48- and 64-bit RGB(A) PNGs open as 8-bit already.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from encoders.base import upright

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def _gray_to_8bit(img: Image.Image) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64)
    top = float(arr.max()) if arr.size else 0.0
    if img.mode in SIXTEEN_BIT or (img.mode == "I" and 255 < top <= 65535):
        arr = arr / 257.0
    elif img.mode == "I" and top > 65535:
        arr = arr * (255.0 / top)
    elif img.mode == "F" and top <= 1.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def _over_white(img: Image.Image) -> Image.Image:
    if img.mode == "La":
        img = img.convert("LA")  # premultiplied L + alpha has no direct route to RGBA
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of ``img``, orientation applied (see the module docstring); an upright RGB image is
    returned as it is."""
    img = upright(img)
    if img.mode == "RGB":
        return img
    if img.mode in SIXTEEN_BIT or img.mode in ("I", "F"):
        return _gray_to_8bit(img).convert("RGB")
    if img.mode in ALPHA or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        return _over_white(img)
    return img.convert("RGB")
