"""Image references: resolve, read, hash and decode-check.

An image reference is a file name relative to an image folder, an absolute path, or a
URI (``file://``, or any fsspec protocol such as ``s3://``/``https://`` when the matching
fsspec backend is installed). Each referenced image is read once: ``image_hash`` is the
sha256 of the file bytes, and the same bytes are fully decoded with PIL
(``Image.open(...).convert("RGB")``), so a truncated or garbage file is caught here and not
in the middle of an encoding run. :func:`read_image_bytes` is the one reader of image
references: feature extraction and the study's thumbnails read through it too. An image that is missing, unreadable or does not decode
is *rejected*: the item keeps its other modalities, ``image`` and ``image_hash`` become
null, and a row goes to the rejects list (``rejects.parquet`` next to the catalog) and
to the ingest report.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import fsspec
from PIL import Image

from storage.keys import sha256_bytes


@dataclass
class ImageCheck:
    image: str | None  # resolved local path or URI; None when rejected / absent
    image_hash: str | None
    problem: str | None  # why it was rejected (None when fine or when no image was given)
    source: str | None  # the reference as resolved, for the rejects list


def is_uri(ref: str) -> bool:
    return "://" in ref


def _file_uri_path(ref: str) -> str:
    """The local path of a ``file://`` URI."""
    return str(Path(unquote(urlparse(ref).path)))


def resolve(ref: str, base_dir: str | Path | None) -> str:
    """Absolute path for local references, the URI itself otherwise."""
    if ref.startswith("file://"):
        return _file_uri_path(ref)
    if is_uri(ref):
        return ref
    # abspath, not Path.resolve(): no symlink walk (a third of the check time otherwise)
    return os.path.abspath(os.path.join(os.fspath(base_dir or "."), os.path.expanduser(ref)))


def read_image_bytes(ref: str) -> bytes:
    """Bytes of an image reference as the catalog stores it: a local path, a ``file://``
    URI or any fsspec URI (``s3://``, ``https://``, ...)."""
    if ref.startswith("file://"):
        ref = _file_uri_path(ref)
    if is_uri(ref):
        with fsspec.open(ref, "rb") as fh:
            return fh.read()
    with open(ref, "rb") as fh:
        return fh.read()


def decode_problem(data: bytes) -> str | None:
    """None if the bytes decode to an RGB image, else a short reason."""
    if not data:
        return "image file is empty"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.convert("RGB")
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        return f"image does not decode ({type(exc).__name__}: {exc})"
    return None


def check_one(ref: str | None, base_dir: str | Path | None) -> ImageCheck:
    if ref is None or (isinstance(ref, float)) or not str(ref).strip():
        return ImageCheck(None, None, None, None)
    resolved = resolve(str(ref).strip(), base_dir)
    try:
        data = read_image_bytes(resolved)
    except FileNotFoundError:
        return ImageCheck(None, None, "image file missing", resolved)
    except IsADirectoryError:
        return ImageCheck(None, None, "image path is a directory", resolved)
    except Exception as exc:  # permission, network, unknown fsspec protocol
        return ImageCheck(None, None, f"image unreadable ({type(exc).__name__}: {exc})", resolved)
    problem = decode_problem(data)
    if problem:
        return ImageCheck(None, None, problem, resolved)
    return ImageCheck(resolved, sha256_bytes(data), None, resolved)


def check_images(refs: list[str | None], base_dir: str | Path | None = None, workers: int | None = None) -> list[ImageCheck]:
    """Check every reference, in order. Threads, one chunk of references each (a future
    per image costs more than decoding a thumbnail): file reads, sha256 and JPEG decoding
    release the GIL, and remote URIs are I/O bound."""
    workers = workers or min(8, os.cpu_count() or 1)
    if len(refs) < 64 or workers <= 1:
        return [check_one(r, base_dir) for r in refs]
    size = -(-len(refs) // workers)
    chunks = [refs[i : i + size] for i in range(0, len(refs), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(lambda chunk: [check_one(r, base_dir) for r in chunk], chunks)
        return [c for chunk in done for c in chunk]


def attach_images(
    items,
    refs: list[str | None],
    base_dir: str | Path | None,
    report,
    file: str | Path,
    rows=None,
    workers: int | None = None,
) -> list[dict]:
    """Fill ``items['image']``/``items['image_hash']`` in place from ``refs`` (aligned with
    ``items``); report every item without a usable image; return the reject rows."""
    checks = check_images(list(refs), base_dir, workers)
    items["image"] = [c.image for c in checks]
    items["image_hash"] = [c.image_hash for c in checks]
    rejects: list[dict] = []
    ids = items["item_id"].astype(str).tolist()
    for i, c in enumerate(checks):
        row = int(rows[i]) if rows is not None else i + 1
        if c.problem:
            report.add(c.problem, "item kept without image", file=file, row=row, item_id=ids[i], image=c.source)
            rejects.append(
                {"item_id": ids[i], "modality": "image", "file": str(file), "row": row, "source": c.source, "problem": c.problem}
            )
        elif c.image is None:
            report.add("no image given", "item kept without image", file=file, row=row, item_id=ids[i])
    return rejects
