"""What keys the feature store: feature-set keys, the modalities and the content hashes.

A *feature set* is one (dataset, encoder fingerprint, modality), named by a
:class:`FeatureSetKey`; every feature store method that touches vectors takes one
(as PyG's ``FeatureStore`` takes a ``TensorAttr``). Inside a feature set a vector is
keyed by (item_id, content_hash). An item's image is keyed by the sha256 of its
bytes and its text by the sha256 of its UTF-8 encoding, so the same content always
has the same key, whatever catalog it is in. A feature imported as a matrix (MMRec
``<name>_feat.npy``, any modality name) is keyed by the sha256 of its row.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The modalities an encoder embeds from raw content (the catalog's ``image`` and ``text``
# columns): encoder specs and extraction take these. A feature set imported as a matrix
# (MMRec ``<name>_feat.npy``: audio, video, ...) may have any name that
# :func:`check_modality` accepts; training, the store and the reports take any such name.
ENCODED_MODALITIES = ("image", "text")
MODALITIES = ENCODED_MODALITIES  # the former name: it means the encodable modalities, not every one

MODALITY_PATTERN = r"[a-z][a-z0-9_]{0,63}"
_MODALITY_RE = re.compile(rf"^{MODALITY_PATTERN}$")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}$")


def check_name(kind: str, value: Any) -> str:
    """Validate a dataset name, encoder fingerprint or modality as one safe path segment."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or ".." in value:
        raise ValueError(
            f"{kind} {value!r} is not path-safe: use 1-200 letters, digits and . _ + = -, "
            "starting with a letter or digit, without '..'"
        )
    return value


def is_modality(value: Any) -> bool:
    """True when ``value`` is a valid modality name (``image``, ``audio``, ``video_v2``)."""
    return isinstance(value, str) and bool(_MODALITY_RE.match(value))


def check_modality(value: Any, where: str | None = None) -> str:
    """A modality name, checked: a lowercase letter, then up to 63 lowercase letters, digits
    or ``_`` (it names a catalog column ``<name>_hash``, a store folder and a file
    ``<name>_feat.npy``). ``where`` (a file, a parameter) starts the message."""
    if not is_modality(value):
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}modality {value!r} is not a valid name: use a lowercase letter, then up to 63 lowercase "
            "letters, digits or '_' (e.g. image, text, audio, video)"
        )
    return value


def modality_order(modalities: Iterable[str]) -> list[str]:
    """``modalities`` in the order summaries show them: image, text, then the others by name."""
    mods = set(modalities)
    return [m for m in ENCODED_MODALITIES if m in mods] + sorted(mods - set(ENCODED_MODALITIES))


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
