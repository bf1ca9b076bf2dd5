"""What keys the feature store: feature-set keys, the modalities and the content hashes.

A *feature set* is one (dataset, encoder fingerprint, modality), named by a
:class:`FeatureSetKey`; every feature store method that touches vectors takes one
(as PyG's ``FeatureStore`` takes a ``TensorAttr``). Inside a feature set a vector is
keyed by (item_id, content_hash). An item's image is keyed by the sha256 of its
bytes and its text by the sha256 of its UTF-8 encoding, so the same content always
has the same key, whatever catalog it is in.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODALITIES = ("image", "text")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}$")


def check_name(kind: str, value: Any) -> str:
    """Validate a dataset name, encoder fingerprint or modality as one safe path segment."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or ".." in value:
        raise ValueError(
            f"{kind} {value!r} is not path-safe: use 1-200 letters, digits and . _ + = -, "
            "starting with a letter or digit, without '..'"
        )
    return value


@dataclass(frozen=True)
class FeatureSetKey:
    """One feature set of the store: ``FeatureSetKey("ml-100k", encoder.fingerprint, "image")``.

    Each part is checked on construction to be one safe path segment (it names a
    folder ``<root>/<dataset>/<fingerprint>/<modality>``), so a bad name fails here,
    before any file is touched.
    """

    dataset: str
    fingerprint: str
    modality: str

    def __post_init__(self) -> None:
        check_name("dataset", self.dataset)
        check_name("fingerprint", self.fingerprint)
        check_name("modality", self.modality)

    @property
    def segments(self) -> tuple[str, str, str]:
        """The folder names, outermost first."""
        return (self.dataset, self.fingerprint, self.modality)

    def __str__(self) -> str:
        return "/".join(self.segments)


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
