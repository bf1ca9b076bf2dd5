"""A ranked-list Parquet file and its manifest, written and read as one pair.

``<name>.parquet`` and its manifest ``<name>.json`` are two files, so no single rename can
switch both. They are written so that a reader never takes one for the other's partner:

1. the Parquet is streamed to a temporary file, and its sha256 and size are taken;
2. the old manifest is removed, then the temporary renamed over the old Parquet;
3. the manifest is written last (temporary, then renamed), naming the Parquet and carrying
   its sha256 (``parquet_sha256``) and size.

A write killed at any point leaves the old pair, the new pair, or a Parquet with no manifest
beside it; never a manifest describing another Parquet. The temporary is synced before the
old manifest goes, so a full disk while writing the Parquet keeps the old pair; one later (at
the rename or the manifest) says that the pair is refused until written again. :func:`read_manifest` (every befa
reader of these files goes through it) refuses, naming both files, a Parquet without a
manifest and one whose sha256 is not the manifest's (a pair from two writes: files copied or
replaced by hand). A manifest written before manifests carried the sha256 is read unchecked.
Readers outside befa (DuckDB, ...) can do the same check: ``sha256sum`` of the Parquet
against the manifest's ``parquet_sha256``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.serving.servable import ServingError
from storage.atomic import atomic_path, write_json
from storage.errors import DiskFull
from storage.keys import sha256_file

SHA_FIELD = "parquet_sha256"
REWRITE = {"recommendations": "`befa recommend` (or the pipeline)", "similar-items": "`befa similar`"}


class PairMismatch(ServingError):
    """A ranked-list Parquet whose manifest is missing or describes another file."""


def manifest_path(path: str | Path) -> Path:
    """The manifest beside a ranked-list Parquet: same name, ``.json``."""
    return Path(path).with_suffix(".json")


def write_pair(
    out: str | Path, schema: pa.Schema, frames: Iterator[pd.DataFrame], manifest: Callable[[int], dict[str, Any]]
) -> tuple[int, Path, dict[str, Any]]:
    """Stream ``frames`` into ``out`` and write its manifest, ``manifest(rows)`` plus the
    Parquet's name, sha256 and size (see the module docstring for the order);
    return (rows, manifest path, manifest)."""
    out, beside = Path(out), manifest_path(out)
    rows, removed = 0, False
    try:
        with atomic_path(out) as tmp:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for frame in frames:
                    writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
                    rows += len(frame)
            digest, size = sha256_file(tmp), tmp.stat().st_size
            with open(tmp, "rb") as fh:  # a full disk shows here, while the old pair still stands
                os.fsync(fh.fileno())
            had = beside.exists()
            beside.unlink(missing_ok=True)  # from here until the new manifest, the Parquet has none
            removed = True
        info = {**manifest(rows), "parquet": out.name, SHA_FIELD: digest, "parquet_bytes": size}
        return rows, write_json(beside, info), info
    except DiskFull as exc:
        if not removed:
            raise  # the old pair stands, as the error says
        why = f"its old manifest {beside.name} was removed first" if had else f"it has no manifest {beside.name}"
        raise exc.with_kept(f"readers refuse {out.name} until the pair is written again ({why})") from exc


def _rewrite_hint(info: dict[str, Any] | None) -> str:
    how = REWRITE.get((info or {}).get("kind"), "the command that wrote them")
    return f"write the pair again with {how}"


def read_manifest(path: str | Path, digest: str | None = None) -> dict[str, Any]:
    """The manifest of the ranked-list Parquet ``path``, after checking that it describes this
    very file (``digest``: its sha256, when the caller has the bytes already); ``PairMismatch``
    (naming both files) when it is missing or describes another."""
    path = Path(path)
    beside = manifest_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such ranked-list file")
    if not beside.exists():
        raise PairMismatch(
            f"{path} has no manifest {beside.name} beside it: its write was interrupted (or the manifest "
            f"removed), so nothing says which run it holds; {_rewrite_hint(None)}"
        )
    try:
        info = json.loads(beside.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PairMismatch(
            f"{beside}: the manifest of {path.name} is not JSON ({exc}); {_rewrite_hint(None)}"
        ) from None
    expected = info.get(SHA_FIELD)
    if expected is None:  # written before manifests carried the Parquet's sha256: nothing to check against
        return info
    actual = digest or sha256_file(path)
    if actual != expected:
        raise PairMismatch(
            f"{path} does not match its manifest {beside.name} (sha256 {actual[:12]}..., the manifest says "
            f"{expected[:12]}...): the two files come from different writes (one interrupted, or a file "
            f"replaced); {_rewrite_hint(info)}"
        )
    return info


def read_ranked(path: str | Path) -> tuple[pa.Table, dict[str, Any]]:
    """A ranked-list Parquet and its manifest, checked to belong together (:func:`read_manifest`)."""
    data = Path(path).read_bytes()  # hashed and parsed from the same bytes: no window for a writer between
    info = read_manifest(path, digest=hashlib.sha256(data).hexdigest())
    return pq.read_table(pa.BufferReader(data)), info
