"""Image references: resolve, read, hash and decode-check.

An image reference is a file name relative to an image folder, an absolute path, an
``http(s)://`` URL, or a URI (``file://``, or an fsspec protocol such as ``s3://`` when the
matching fsspec backend is installed). An ``http(s)://`` URL is read from the local image
cache (:mod:`pipeline.data.image_cache`, filled by ``befa fetch-images`` or
``befa ingest --fetch-images``) and never fetched here: one that is not in the cache is
rejected as "image URL not downloaded". The cache is passed explicitly (its root comes
from the settings); without one, every URL is "not downloaded". Each referenced image
is read once: ``image_hash`` is the sha256 of the file bytes, and the same bytes are
fully decoded with PIL (``Image.open(...).convert("RGB")``), so a truncated or garbage
file is caught here and not in the middle of an encoding run. :func:`read_image_bytes`
is the one reader of image references: feature extraction and the study's thumbnails
read through it too. An image that is missing, unreadable or does not decode is
*rejected*: the item keeps its other modalities, ``image`` and ``image_hash`` become
null, and a row goes to the rejects list (``rejects.parquet`` next to the catalog) and
to the ingest report.
"""

from __future__ import annotations

import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import fsspec
from PIL import Image, UnidentifiedImageError

from pipeline.data.catalog import CatalogError, IngestReport
from pipeline.data.image_cache import ImageCache, ImageNotDownloaded, is_url
from storage.keys import sha256_bytes


@dataclass
class ImageCheck:
    image: str | None  # resolved local path or URI; None when rejected / absent
    image_hash: str | None
    problem: str | None  # why it was rejected (None when fine or when no image was given)
    source: str | None  # the reference as resolved, for the rejects list


def is_uri(ref: str) -> bool:
    return "://" in ref


# -- image templates ----------------------------------------------------------------
# `{item_id}` and `{item_id[a:b]}` only: a template comes from a command line or a
# deployment parameter, so it must not reach str.format (attribute and index access).
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_TEMPLATE_FIELD = re.compile(r"item_id(?:\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\])?")


def parse_image_template(template: str) -> list[str | slice]:
    """The template as literal strings and slices of the item id; ValueError if it uses
    anything but ``{item_id}``, ``{item_id[a:b]}``, ``{{`` and ``}}``."""
    parts: list[str | slice] = []
    pos, fields = 0, 0
    for m in _TEMPLATE_TOKEN.finditer(template):
        parts.append(template[pos : m.start()])
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
            continue
        field = _TEMPLATE_FIELD.fullmatch((m.group(1) or "").strip()) if m.group(1) is not None else None
        if field is None:
            raise ValueError(
                f"{template!r}: {token!r} is not a template field; use {{item_id}} or a slice such as "
                "{item_id[:3]} (write {{ and }} for literal braces)"
            )
        a, b = field.group(1), field.group(2)
        parts.append(slice(int(a) if a else None, int(b) if b else None))
        fields += 1
    parts.append(template[pos:])
    if not fields:
        raise ValueError(f"{template!r} has no {{item_id}} field: every item would get the same image")
    return [p for p in parts if p != ""]


def expand_image_template(template: str, item_ids: list[str]) -> list[str]:
    """One image reference per item id."""
    parts = parse_image_template(template)
    return ["".join(p if isinstance(p, str) else i[p] for p in parts) for i in item_ids]


# -- hints for images that are missing ------------------------------------------------
def _loose(name: str) -> str:
    """A file name with case and the leading zeros of every number ignored."""
    return re.sub(r"(?<!\d)0+(?=\d)", "", name.lower())


def check_missing_images(
    rejects: list[dict], given: int, report: IngestReport, items: Path, max_missing: float, allow: bool
) -> None:
    """Warn about the rejected images (``rejects``: one row each, of ``given``) with their kinds
    and a hint; fail when more than ``max_missing`` of them cannot be used, unless ``allow``."""
    kinds: dict[str, int] = {}
    for r in rejects:
        kind = r["problem"].split(" (")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    share = len(rejects) / max(given, 1)
    hint = near_miss_hint([r["source"] for r in rejects if r["problem"] == "image file missing" and r["source"]])
    what = (
        f"{len(rejects)} of {given} images ({share:.0%}) cannot be used ("
        + ", ".join(f"{n} {k}" for k, n in kinds.items())
        + f"; e.g. {rejects[0]['source']})"
    )
    hint = f" Hint: {hint}." if hint else ""
    if share <= max_missing:
        report.warnings.append(f"{what}; those items keep their text (see rejects.parquet).{hint}")
    elif allow:
        report.warnings.append(
            f"{what}: more than --max-missing-images {max_missing:.0%}, ingested anyway (--allow-missing-images).{hint}"
        )
    else:
        raise CatalogError(
            items,
            f"{what}: more than --max-missing-images {max_missing:.0%}.{hint} Check the image column, "
            "--images or --image-template; pass --allow-missing-images to ingest without those images.",
        )


def near_miss_hint(missing: list[str], limit: int = 3) -> str:
    """Why local image files are missing, when it can be seen: the folder does not exist,
    or a file exists whose name differs only in case, leading zeros or extension."""
    listings: dict[str, dict[str, list[str]] | None] = {}
    kinds: dict[str, list[str]] = {}
    for path in missing:
        if is_uri(path):
            continue
        folder, name = os.path.split(path)
        if folder not in listings:
            try:
                names = os.listdir(folder)
            except OSError:
                listings[folder] = None
            else:
                by_key: dict[str, list[str]] = {}
                for n in names:
                    by_key.setdefault(_loose(n), []).append(n)
                    by_key.setdefault(_loose(os.path.splitext(n)[0]), []).append(n)
                listings[folder] = by_key
        listing = listings[folder]
        if listing is None:
            kinds.setdefault("folder", []).append(folder)
            continue
        found = listing.get(_loose(name)) or listing.get(_loose(os.path.splitext(name)[0]))
        if not found:
            continue
        other = found[0]
        kind = (
            "case"
            if other.lower() == name.lower()
            else "extension"
            if _loose(other) != _loose(name)
            else "leading zeros"
        )
        kinds.setdefault(kind, []).append(f"{name!r} vs {other!r}")
    hints = []
    if "folder" in kinds:
        folders = sorted(set(kinds["folder"]))
        hints.append(f"{len(kinds['folder'])} image paths point into folders that do not exist (e.g. {folders[0]})")
    for kind in ("leading zeros", "case", "extension"):
        if kind in kinds:
            hints.append(
                f"{len(kinds[kind])} missing images have a file whose name differs only in {kind} "
                f"(e.g. {', '.join(kinds[kind][:limit])})"
            )
    return "; ".join(hints)


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


def read_image_bytes(ref: str, cache: ImageCache | None = None) -> bytes:
    """Bytes of an image reference as the catalog stores it: a local path, a ``file://``
    URI, an ``http(s)://`` URL (from ``cache`` only: :class:`ImageNotDownloaded` when it is
    not there) or another fsspec URI (``s3://``, ...)."""
    if ref.startswith("file://"):
        ref = _file_uri_path(ref)
    if is_url(ref):
        cached = cache.lookup(ref) if cache is not None else None
        if cached is None:
            raise ImageNotDownloaded(ref)
        ref = str(cached.path)
    elif is_uri(ref):
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
    except UnidentifiedImageError:
        # PIL's own message names the in-memory buffer (<_io.BytesIO object at 0x...>)
        return "not an image (PIL cannot identify it)"
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        return f"image does not decode ({type(exc).__name__}: {_BUFFER.sub('the file', str(exc))})"
    return None


_BUFFER = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def check_one(ref: str | None, base_dir: str | Path | None, cache: ImageCache | None = None) -> ImageCheck:
    if ref is None or (isinstance(ref, float)) or not str(ref).strip():
        return ImageCheck(None, None, None, None)
    resolved = resolve(str(ref).strip(), base_dir)
    try:
        data = read_image_bytes(resolved, cache)
    except ImageNotDownloaded as exc:
        return ImageCheck(None, None, str(exc), resolved)
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


def check_images(
    refs: list[str | None],
    base_dir: str | Path | None = None,
    workers: int | None = None,
    cache: ImageCache | None = None,
) -> list[ImageCheck]:
    """Check every reference, in order. Threads, one chunk of references each (a future
    per image costs more than decoding a thumbnail): file reads, sha256 and JPEG decoding
    release the GIL, and remote URIs are I/O bound."""
    workers = workers or min(8, os.cpu_count() or 1)
    if len(refs) < 64 or workers <= 1:
        return [check_one(r, base_dir, cache) for r in refs]
    size = -(-len(refs) // workers)
    chunks = [refs[i : i + size] for i in range(0, len(refs), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(lambda chunk: [check_one(r, base_dir, cache) for r in chunk], chunks)
        return [c for chunk in done for c in chunk]


def attach_images(
    items,
    refs: list[str | None],
    base_dir: str | Path | None,
    report,
    file: str | Path,
    rows=None,
    workers: int | None = None,
    cache: ImageCache | None = None,
) -> list[dict]:
    """Fill ``items['image']``/``items['image_hash']`` in place from ``refs`` (aligned with
    ``items``); report every item without a usable image; return the reject rows. Image
    URLs are read from ``cache`` (never fetched)."""
    checks = check_images(list(refs), base_dir, workers, cache)
    items["image"] = [c.image for c in checks]
    items["image_hash"] = [c.image_hash for c in checks]
    rejects: list[dict] = []
    ids = items["item_id"].astype(str).tolist()
    for i, c in enumerate(checks):
        row = int(rows[i]) if rows is not None else i + 1
        if c.problem:
            report.add(c.problem, "item kept without image", file=file, row=row, item_id=ids[i], image=c.source)
            rejects.append(
                {
                    "item_id": ids[i],
                    "modality": "image",
                    "file": str(file),
                    "row": row,
                    "source": c.source,
                    "problem": c.problem,
                }
            )
        elif c.image is None:
            report.add("no image given", "item kept without image", file=file, row=row, item_id=ids[i])
    return rejects


def outside_refs(refs: list[str | None], base_dir: str | Path, rows=None) -> list[tuple[int, str]]:
    """(row, reference) of the local references that resolve outside ``base_dir`` (``../``,
    absolute paths, ``file://``); URLs and other URIs are not files under a folder."""
    base = os.path.abspath(os.fspath(base_dir))
    out = []
    for i, ref in enumerate(refs):
        if ref is None or isinstance(ref, float) or not str(ref).strip():
            continue
        ref = str(ref).strip()
        if is_uri(ref) and not ref.startswith("file://"):
            continue
        path = resolve(ref, base)
        if os.path.commonpath([base, path]) != base:
            out.append((int(rows[i]) if rows is not None else i + 1, ref))
    return out
