"""What keys the feature store: the modalities and the content hashes of item content.

An item's image is keyed by the sha256 of its bytes and its text by the sha256 of its
UTF-8 encoding, so the same content always has the same key, whatever catalog it is in.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MODALITIES = ("image", "text")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def text_hash(text: str | None) -> str | None:
    return sha256_bytes(text.encode("utf-8")) if text else None
