"""One storage root on a local disk or any fsspec filesystem, with atomic writes.

The feature store talks only to :class:`StoreFS`, so the same code runs on a
local folder, ``file://`` URIs, ``memory://`` (tests) and object stores.

Atomicity: every file is written to a ``.tmp-*`` sibling and then renamed over
its final name. Locally that is ``os.replace`` through :mod:`storage.atomic`
(a POSIX atomic rename after fsync). On other filesystems it is ``fs.mv``:
atomic where the backend's rename is (memory, local, HDFS), and on object stores
the final key still appears only once fully uploaded. Readers ignore names
starting with ``.tmp-``; :meth:`StoreFS.remove_temporaries` cleans what killed
writers leave behind.

Failures name their file: a Parquet file that does not read back raises
:class:`storage.errors.DamagedFile`, a write that finds the disk full
:class:`storage.errors.DiskFull` (the file it would replace stays as it was).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import time
import uuid
from datetime import datetime
from typing import IO, Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from storage import atomic
from storage.errors import DamagedFile, DiskFull, is_disk_full

TMP_PREFIX = atomic.TMP_PREFIX


class StoreFS:
    """A root folder (local path or fsspec URI) and the few operations the store needs."""

    def __init__(self, root: str | os.PathLike):
        root_str = os.fspath(root)
        if not root_str:
            raise ValueError("feature store root must be a non-empty path or URI")
        fs, path = fsspec.core.url_to_fs(root_str)
        self.fs: fsspec.AbstractFileSystem = fs
        self.is_local = isinstance(fs, LocalFileSystem)
        if self.is_local:
            path = os.path.abspath(os.path.expanduser(path))
        self.root: str = path.rstrip("/") or "/"
        self.uri = root_str

    def __repr__(self) -> str:
        return f"StoreFS({self.uri!r})"

    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _atomic(self, path: str, mode: str = "wb") -> Iterator[IO[bytes]]:
        """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
        if self.is_local:
            with atomic.atomic_path(path) as tmp:
                with open(tmp, mode) as fh:
                    yield fh
            return
        parent = posixpath.dirname(path)
        self.fs.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{posixpath.basename(path)}")
        try:
            with self.fs.open(tmp, mode) as fh:
                yield fh
            self._rename(tmp, path)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(path, exc) from exc
            raise
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)

    def _rename(self, src: str, dst: str) -> None:
        # Indirection so tests can make the final rename fail like a crash would.
        self.fs.mv(src, dst)

    def write_bytes(self, path: str, data: bytes) -> None:
        with self._atomic(path) as fh:
            fh.write(data)

    def write_parquet(self, path: str, table: pa.Table, **kwargs: Any) -> None:
        if self.is_local:
            # A path (not a Python file object) lets Arrow write with its native file.
            atomic.write_parquet(path, table, **kwargs)
            return
        with self._atomic(path) as fh:
            pq.write_table(table, fh, **kwargs)

    # -- reading -------------------------------------------------------------------------

    def read_bytes(self, path: str) -> bytes | None:
        try:
            with self.fs.open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def parquet_file(self, path: str) -> Iterator[pq.ParquetFile]:
        """An open Parquet file; one that does not read back (truncated, corrupt pages) raises
        ``DamagedFile`` naming it, also when the damage shows while the caller reads it."""
        try:
            if self.is_local:
                # memory_map: the OS pages the file in, Arrow decodes straight from it.
                with pq.ParquetFile(path, memory_map=True) as pf:
                    yield pf
                return
            with self.fs.open(path, "rb") as fh, pq.ParquetFile(fh) as pf:
                yield pf
        except (FileNotFoundError, PermissionError, IsADirectoryError, DiskFull):
            raise
        except (pa.ArrowException, OSError) as exc:
            raise DamagedFile(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc

    def read_parquet(self, path: str, columns: list[str] | None = None) -> pa.Table:
        # ParquetFile.read keeps one chunk per row group (pq.read_table re-batches at
        # 128k rows), which is what lets a one-row-group part be read without copies.
        with self.parquet_file(path) as pf:
            return pf.read(columns=columns)

    def parquet_schema(self, path: str) -> pa.Schema:
        with self.parquet_file(path) as pf:
            return pf.schema_arrow

    # -- listing and deleting -----------------------------------------------------------

    def listdir(self, folder: str) -> list[str]:
        """Base names of the plain files directly in ``folder`` (empty if it does not exist)."""
        try:
            entries = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "file")

    def subfolders(self, folder: str) -> list[str]:
        """Base names of the folders directly in ``folder`` (empty if it does not exist)."""
        try:
            entries = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")

    def move(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` (atomic on a local disk: one ``os.replace`` on the same filesystem)."""
        if self.is_local:
            os.makedirs(posixpath.dirname(dst), exist_ok=True)
            os.replace(src, dst)
            return
        self.fs.makedirs(posixpath.dirname(dst), exist_ok=True)
        self._rename(src, dst)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path)

    def mtime(self, path: str) -> float:
        """Modification time (UNIX seconds); 0.0 when the backend does not say."""
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return 0.0
        for key in ("mtime", "LastModified", "created", "last_modified"):
            value = info.get(key)
            if value is None:
                continue
            if isinstance(value, datetime):
                return value.timestamp()
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
        return 0.0

    def remove_temporaries(self, folder: str, older_than_s: float) -> int:
        """Delete ``.tmp-*`` files directly in ``folder`` older than ``older_than_s`` seconds."""
        now = time.time()
        n = 0
        for name in self.listdir(folder):
            if name.startswith(TMP_PREFIX):
                path = posixpath.join(folder, name)
                if now - self.mtime(path) >= older_than_s:
                    self.remove(path)
                    n += 1
        return n
