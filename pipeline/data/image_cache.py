"""The local image cache for image URLs: content-addressed blobs plus a URL index.

Catalogs that give images only as ``http(s)://`` URLs (the Amazon review datasets among
them) are downloaded once, by an explicit step (``befa fetch-images``,
``pipeline.data.fetch``), into ``$BEFA_HOME/image-cache``::

    blobs/<sha256[:2]>/<sha256>     the image bytes, named by their content hash
    urls/<sha256(url)[:2]>/<sha256(url)>.json   {"url", "sha256", "bytes", "content_type", "fetched_at"}

Everything after it (ingest, extraction) reads only local files: a URL resolves to its
blob, and one that is not in the cache is reported as "not downloaded; run
``befa fetch-images``", never fetched. Two URLs with the same bytes share one blob. Every
file is written under a temporary name and renamed, so a killed download leaves no
half-written blob or index entry (and the blob is written before its index entry).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from storage.atomic import write_bytes, write_json

URL_SCHEMES = ("http://", "https://")


def is_url(ref: object) -> bool:
    return isinstance(ref, str) and ref.lower().startswith(URL_SCHEMES)


@dataclass(frozen=True)
class CachedImage:
    url: str
    sha256: str
    path: Path
    bytes: int
    content_type: str | None


class ImageCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _index_path(self, url: str) -> Path:
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()
        return self.root / "urls" / key[:2] / f"{key}.json"

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def lookup(self, url: str) -> CachedImage | None:
        """The cached image of ``url``, or None (never downloaded, or its blob is gone)."""
        index = self._index_path(url)
        if not index.exists():
            return None
        entry = json.loads(index.read_text())
        path = self.blob_path(entry["sha256"])
        if not path.exists():
            return None
        return CachedImage(url, entry["sha256"], path, int(entry["bytes"]), entry.get("content_type"))

    def put(self, url: str, data: bytes, content_type: str | None = None) -> CachedImage:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        if not path.exists():
            write_bytes(path, data)
        entry = {
            "url": url,
            "sha256": sha,
            "bytes": len(data),
            "content_type": content_type,
            "fetched_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(self._index_path(url), entry)
        return CachedImage(url, sha, path, len(data), content_type)


class ImageNotDownloaded(LookupError):
    """An image URL that is not in the cache (nothing is ever fetched on a read)."""

    def __init__(self, url: str):
        super().__init__(not_downloaded(url))
        self.url = url


def not_downloaded(url: str) -> str:
    """The one message for an image URL that is not in the cache."""
    return f"image URL not downloaded ({url}); run `befa fetch-images CATALOG` (or ingest with --fetch-images)"
