"""Encoder records: ``<root>/_encoders/<fingerprint>.json``, what produced a fingerprint.

A record holds the encoder's spec, weights identity, dim and preprocessing, and the
required ``random_init`` flag (so reports can label features of randomly initialised
encoders). A fingerprint must always name the same encoder: registering again merges
new keys in, but changing a recorded value raises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from storage.errors import DamagedFile
from storage.filesystem import StoreFS
from storage.keys import check_name

ENCODERS_DIR = "_encoders"


def _payload(fingerprint: str, info: Mapping[str, Any]) -> dict[str, Any]:
    """The validated, JSON-normalised record to store for ``fingerprint``."""
    if not isinstance(info, Mapping):
        raise TypeError(f"encoder info for {fingerprint!r} must be a mapping, got {type(info).__name__}")
    if not isinstance(info.get("random_init"), bool):
        raise ValueError(f"encoder info for {fingerprint!r} needs 'random_init': true/false")
    dim = info.get("dim")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ValueError(f"encoder info for {fingerprint!r}: 'dim' must be a positive int, got {dim!r}")
    try:
        payload = json.loads(json.dumps(dict(info), sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"encoder info for {fingerprint!r} is not JSON-serialisable: {exc}") from None
    payload.setdefault("fingerprint", fingerprint)
    return payload


class EncoderRecords:
    """The encoder records under one store root."""

    def __init__(self, fs: StoreFS):
        self.fs = fs

    @property
    def folder(self) -> str:
        return self.fs.join(ENCODERS_DIR)

    def path(self, fingerprint: str) -> str:
        return self.fs.join(ENCODERS_DIR, f"{check_name('fingerprint', fingerprint)}.json")

    def register(self, fingerprint: str, info: Mapping[str, Any]) -> None:
        """Write (or merge into) the record of ``fingerprint``; a no-op when nothing is new."""
        path = self.path(fingerprint)
        payload = _payload(fingerprint, info)
        existing = self.get(fingerprint)
        if existing is not None:
            changed = sorted(k for k in existing.keys() & payload.keys() if existing[k] != payload[k])
            if changed:
                raise ValueError(
                    f"encoder {fingerprint!r} is already registered in {path} with different "
                    f"{', '.join(changed)}: a fingerprint must identify one encoder"
                )
            payload = {**existing, **payload}
            if payload == existing:
                return
        self.fs.write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    def get(self, fingerprint: str) -> dict | None:
        """The record of ``fingerprint``, or None."""
        path = self.path(fingerprint)
        data = self.fs.read_bytes(path)
        if data is None:
            return None
        try:
            return json.loads(data)
        except json.JSONDecodeError as exc:
            raise DamagedFile(path, f"corrupt encoder record: {exc}") from None
