"""The Parquet feature store: frozen-encoder features, versioned, incremental and crash-safe.

Features are keyed by (dataset, encoder fingerprint, modality, item_id, content_hash).
One (dataset, fingerprint, modality) is a *feature set*, named by a
:class:`~storage.keys.FeatureSetKey`; every method that touches vectors takes one::

    key = FeatureSetKey("ml-100k", encoder.fingerprint, "image")
    store.upsert(key, item_ids, content_hashes, embeddings)
    x, mask = store.read(key, item_ids)          # numpy (I, D) float32, (I,) bool

A feature set's files are::

    <root>/_encoders/<fingerprint>.json                       encoder metadata
    <root>/<dataset>/<fingerprint>/<modality>/
        parts/part-<time_ns>-<uuid8>.parquet                  immutable vector parts
        snapshots/<snapshot id>.parquet                       snapshot indexes
        CURRENT                                               id of the current snapshot

A part holds ``item_id: string, content_hash: string,
embedding: fixed_size_list<float32>[D]`` in one row group (see :mod:`storage.parts`).
A snapshot is an index (item_id, content_hash, part, row) over parts, see
:mod:`storage.snapshots` and :mod:`storage.index`. Everything is plain Parquet that
pyarrow, DuckDB or Polars read directly; :func:`duckdb_snapshot_query` gives the SQL
for one snapshot's rows. Globs over parts must say ``part-*.parquet``: DuckDB's ``*``
also matches ``.tmp-*`` files.

Life of a write:

1. ``write_part`` writes new vectors as a new part (temporary file, then rename).
   A part that no snapshot references yet is *pending*: ``existing_keys`` already
   sees it, so an interrupted extraction resumes where it stopped.
2. ``commit(key, keep)`` makes a new snapshot from the newest row of every kept key
   found in any part on disk; items not in ``keep`` drop out. The snapshot file is
   written atomically, then ``CURRENT`` is atomically replaced: a reader sees the
   old snapshot or the new one, never a mix. Older snapshots stay readable by id.
3. ``gc`` deletes snapshots beyond the newest ``keep_last`` (never the current
   one), parts no retained snapshot references (pending parts newer than the
   latest snapshot are kept) and temporaries left by killed writers
   (:mod:`storage.maintenance`).

Failures name their file: a part or snapshot that does not read back raises
:class:`~storage.errors.DamagedFile` (``befa store check --repair`` moves it aside, see
:mod:`storage.check`); a write that finds the disk full raises
:class:`~storage.errors.DiskFull`, saying that the feature set's current snapshot stays.

Reads return numpy (this floor does not import torch); ``pipeline.features.load``
turns them into torch tensors. Writers: one writer per feature set at a time
(commits are last-writer-wins on ``CURRENT``); any number of readers.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage import maintenance
from storage.columns import joined_keys, keep_keys, part_columns, string_array
from storage.encoder_records import EncoderRecords
from storage.errors import DiskFull
from storage.filesystem import StoreFS
from storage.index import SNAPSHOTS_DIR, SnapshotFiles, index_rows
from storage.keys import FeatureSetKey
from storage.locks import DEFAULT_TIMEOUT_S, file_lock
from storage.parts import PARTS_DIR, Available, PartFiles, check_part_rows
from storage.reads import read_aligned, snapshot_table
from storage.snapshots import Snapshot, UpsertResult

__all__ = ["FeatureSetKey", "FeatureStore", "Snapshot", "UpsertResult", "duckdb_snapshot_query"]


def duckdb_snapshot_query(store_root: str, key: FeatureSetKey, snapshot: str) -> str:
    """The one-line DuckDB query returning (item_id, content_hash, embedding) of a snapshot.

    It joins the snapshot index with the parts on (file name, row number), so it
    shows exactly the rows ``FeatureStore.read(key, ..., snapshot=...)`` returns.
    ``store_root`` must be a path (or URL) DuckDB can open.
    """
    base = posixpath.join(str(store_root).rstrip("/"), *key.segments)
    return (
        "SELECT s.item_id, s.content_hash, p.embedding "
        f"FROM read_parquet('{base}/{SNAPSHOTS_DIR}/{snapshot}.parquet') s "
        f"JOIN read_parquet('{base}/{PARTS_DIR}/part-*.parquet', filename=true, file_row_number=true) p "
        "ON parse_filename(p.filename) = s.part AND p.file_row_number = s.row"
    )


class FeatureStore:
    """Versioned Parquet store of item features under a local folder or fsspec URI.

    Args:
        root: a local path (default use) or any fsspec URI such as
            ``file:///data/features``, ``memory://features`` or ``s3://bucket/features``.
        compression: Parquet codec of new parts (``zstd`` default; ``none`` trades
            about 10% more disk for faster writes and reads of float vectors).
    """

    def __init__(self, root: str | os.PathLike, *, compression: str = "zstd"):
        self.fs = StoreFS(root)
        self.compression = compression
        self._encoders = EncoderRecords(self.fs)
        self._parts = PartFiles(self.fs, compression)
        self._snapshots = SnapshotFiles(self.fs)

    def __repr__(self) -> str:
        return f"FeatureStore({self.fs.uri!r})"

    @property
    def root(self) -> str:
        """The root as given (path or URI)."""
        return self.fs.uri

    def feature_set_path(self, key: FeatureSetKey) -> str:
        """Folder of one feature set, as a path on the store's filesystem."""
        if not isinstance(key, FeatureSetKey):
            raise TypeError(
                f"feature store methods take a FeatureSetKey(dataset, fingerprint, modality), got {type(key).__name__}"
            )
        return self.fs.join(*key.segments)

    @contextlib.contextmanager
    def lock(
        self, key: FeatureSetKey, timeout_s: float = DEFAULT_TIMEOUT_S, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[None]:
        """One writer at a time per feature set (an OS lock on ``<feature set>.lock``), so two
        extractions of the same catalog and encoder do not both encode: the second waits,
        then finds the work done. On a non-local store (``s3://``, ``memory://``) there is no
        cross-process lock; commits stay atomic, so two writers there can only duplicate work."""
        if not self.fs.is_local:
            yield
            return
        with file_lock(
            self.feature_set_path(key).rstrip("/") + ".lock",
            f"feature set {key.dataset}/{key.fingerprint}/{key.modality}",
            timeout_s,
            on_wait,
            holder="another extraction",
        ):
            yield

    @contextlib.contextmanager
    def _writing(self, key: FeatureSetKey) -> Iterator[None]:
        """A full disk while writing ``key``'s files says what stays: its current snapshot."""
        try:
            yield
        except DiskFull as exc:
            try:
                current = self.current_snapshot(key)
                stays = f"snapshot {current.id}" if current is not None else "no snapshot (none was committed yet)"
            except Exception:  # the failure to report is the full disk, not this
                stays = "its previous snapshot"
            where = f"{key.dataset}/{key.fingerprint}/{key.modality}"
            raise exc.with_kept(
                f"feature set {where} keeps {stays} as current; parts written before stay and are reused"
            ) from exc

    # ------------------------------------------------------------------ encoders

    def register_encoder(self, fingerprint: str, info: Mapping[str, Any]) -> None:
        """Record what produced a fingerprint (spec, weights identity, dim, preprocessing).

        ``info['random_init']`` (bool) is required so that reports can label features
        from randomly initialised encoders. Registering again with the same values is
        a no-op and new keys are merged in; changing a recorded value raises, since a
        fingerprint must always name the same encoder.
        """
        self._encoders.register(fingerprint, info)

    def encoder_info(self, fingerprint: str) -> dict | None:
        """The registered metadata of ``fingerprint``, or None."""
        return self._encoders.get(fingerprint)

    # ------------------------------------------------------------------ writing

    def _existing_dim(self, folder: str, key: FeatureSetKey) -> int | None:
        names = self._parts.names(folder)
        if names:
            return self._parts.dim(folder, names[-1])
        current = self._snapshots.current(folder)
        if current is not None and current.dim:
            return current.dim
        return (self.encoder_info(key.fingerprint) or {}).get("dim")

    def _write_part_table(
        self, folder: str, key: FeatureSetKey, keys: pa.Table, x: np.ndarray, backend: str | None = None
    ) -> str:
        # Checked here, on the rows actually written: skipped rows are never stored.
        check_part_rows(folder, keys, x)
        expected = self._existing_dim(folder, key)
        if expected is not None and expected != x.shape[1]:
            raise ValueError(
                f"{folder}: embeddings have dimension {x.shape[1]}, but this (dataset, encoder, modality) "
                f"holds dimension {expected}"
            )
        return self._parts.write(folder, keys, x, backend)

    def write_part(
        self,
        key: FeatureSetKey,
        item_ids: Sequence[str],
        content_hashes: Sequence[str],
        embeddings: Any,
        backend: str | None = None,
    ) -> str:
        """Write one immutable part atomically and return its file name.

        ``embeddings``: an (n, D) array (numpy, or anything ``np.asarray`` takes, such as
        a CPU tensor). The rows become readable through ``read`` only after ``commit``,
        but ``existing_keys`` sees them at once, so an interrupted extraction resumes.
        ``backend`` names the inference backend that computed them (``torch 2.14.1``,
        ``onnxruntime 1.31.0``): the part keeps it, and each snapshot counts its rows per
        backend (``Snapshot.backends``). It is no part of the fingerprint.
        """
        folder = self.feature_set_path(key)
        keys, x = part_columns(item_ids, content_hashes, embeddings)
        with self._writing(key):
            return self._write_part_table(folder, key, keys, x, backend)

    def existing_keys(self, key: FeatureSetKey) -> set[tuple[str, str]]:
        """Every (item_id, content_hash) with a row in a part on disk.

        That is the committed snapshots' rows plus pending parts (written, not yet
        committed): what an extraction need not compute again.
        """
        rows = self._parts.available(self.feature_set_path(key)).rows
        return set(zip(rows["item_id"].to_pylist(), rows["content_hash"].to_pylist()))

    def _commit_rows(self, folder: str, key: FeatureSetKey, index: pa.Table, missing: int) -> Snapshot:
        if index.num_rows:
            dim = self._parts.dim(folder, index["part"][0].as_py())
        else:
            current = self._snapshots.current(folder)
            dim = current.dim if current is not None else int(self._existing_dim(folder, key) or 0)
        backends = self._parts.backend_rows(folder, index["part"])
        return self._snapshots.commit(folder, key, index, dim, missing=missing, backends=backends)

    def commit(self, key: FeatureSetKey, keep: Iterable[tuple[str, str]]) -> Snapshot:
        """Make the current snapshot exactly the kept keys that have a row in the store.

        For each (item_id, content_hash) in ``keep`` with a row in any part on disk
        (committed or pending), the newest such row is used; items not in ``keep``
        drop out; kept keys without a row are counted in ``Snapshot.missing``. If
        the result equals the current snapshot, nothing is written and it is returned.
        """
        folder = self.feature_set_path(key)
        keys = keep_keys(keep)
        available = self._parts.available(folder)
        pos = pc.drop_null(pc.index_in(keys, value_set=available.rows["key"]))
        index = index_rows(available, pos)
        with self._writing(key):
            return self._commit_rows(folder, key, index, missing=len(keys) - index.num_rows)

    def _after_write(
        self, folder: str, available: Available, name: str, keys: pa.Array, pos: np.ndarray, fresh_rows: np.ndarray
    ) -> tuple[Available, np.ndarray]:
        """``available`` and the keys' positions in it once part ``name`` holds the fresh rows."""
        parts = tuple(self._parts.names(folder))
        if parts == available.parts + (name,):
            # The new keys are disjoint from the cached ones: extend the cache
            # directly, and the new rows sit at its end in written order.
            pos[fresh_rows] = available.rows.num_rows + np.arange(len(fresh_rows))
            return self._parts.with_new_part(folder, available, parts), pos
        # Another writer added parts meanwhile: look everything up again.
        available = self._parts.available(folder)
        return available, available.positions(keys)

    def upsert(
        self,
        key: FeatureSetKey,
        item_ids: Sequence[str],
        content_hashes: Sequence[str],
        embeddings: Any,
        keep: Iterable[tuple[str, str]] | None = None,
        backend: str | None = None,
    ) -> UpsertResult:
        """Write the rows whose key is not in the store yet, then commit.

        ``keep`` defaults to the given keys, so items absent from this call drop out
        of the new snapshot (they stay readable through older snapshot ids). ``backend``:
        as in :meth:`write_part`.
        """
        folder = self.feature_set_path(key)
        keys_table, x = part_columns(item_ids, content_hashes, embeddings)
        keys = joined_keys(keys_table["item_id"].combine_chunks(), keys_table["content_hash"].combine_chunks())
        available = self._parts.available(folder)
        pos = available.positions(keys)
        fresh_rows = np.flatnonzero(pos < 0)
        if len(fresh_rows):
            fresh = keys_table.take(pa.array(fresh_rows))
            with self._writing(key):
                name = self._write_part_table(folder, key, fresh, x[fresh_rows], backend)
            available, pos = self._after_write(folder, available, name, keys, pos, fresh_rows)
        if keep is None:
            index = index_rows(available, pa.array(pos[pos >= 0]))
            with self._writing(key):
                snap = self._commit_rows(folder, key, index, missing=int((pos < 0).sum()))
        else:
            snap = self.commit(key, keep)
        return UpsertResult(written=len(fresh_rows), skipped=len(keys) - len(fresh_rows), snapshot=snap)

    # ------------------------------------------------------------------ snapshots and reading

    def current_snapshot(self, key: FeatureSetKey) -> Snapshot | None:
        """The snapshot ``read`` uses by default, or None before the first commit."""
        return self._snapshots.current(self.feature_set_path(key))

    def snapshots(self, key: FeatureSetKey) -> list[Snapshot]:
        """All stored snapshots of a feature set, oldest first."""
        return self._snapshots.all(self.feature_set_path(key))

    def read(
        self,
        key: FeatureSetKey,
        item_ids: Sequence[str],
        content_hashes: Sequence[str] | None = None,
        snapshot: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features aligned to ``item_ids``: an (I, D) float32 array and an (I,) bool mask.

        Rows without a feature are zero and False in the mask. With ``content_hashes``
        a row counts only if its stored hash matches, so stale features never leak.
        When the rows are one part's single chunk in the requested order (see
        ``compact``) the array is a read-only view of the Arrow buffer (no copy;
        copy it before editing in place); otherwise it is a new array built by one
        gather. Before any commit the result is all zeros, shaped by the encoder's
        registered dim.
        """
        folder = self.feature_set_path(key)
        ids = string_array(item_ids, "item_ids")
        snap = self._snapshots.resolve(folder, snapshot)
        if snap is None:
            dim = (self.encoder_info(key.fingerprint) or {}).get("dim")
            if dim is None:
                raise LookupError(
                    f"no snapshot of {key} in {self.root}, and encoder "
                    f"{key.fingerprint!r} has no registered dim to shape an empty result"
                )
            return np.zeros((len(ids), int(dim)), dtype=np.float32), np.zeros(len(ids), dtype=bool)
        hashes = None if content_hashes is None else string_array(content_hashes, "content_hashes")
        index = self._snapshots.decoded(folder, snap)
        return read_aligned(self._parts, folder, index, snap.dim, ids, hashes)

    def read_table(self, key: FeatureSetKey, snapshot: str | None = None) -> pa.Table:
        """A snapshot's rows as an Arrow table (item_id, content_hash, embedding), sorted by item_id."""
        folder = self.feature_set_path(key)
        snap = self._snapshots.resolve(folder, snapshot)
        if snap is None:
            raise LookupError(f"no snapshot of {key} in {self.root}")
        return snapshot_table(self._parts, folder, self._snapshots.decoded(folder, snap), snap.dim)

    # ------------------------------------------------------------------ maintenance

    def compact(self, key: FeatureSetKey, order: Sequence[str] | None = None) -> Snapshot:
        """Rewrite the current snapshot as one part so that reads are zero-copy.

        ``order`` (e.g. the catalog's item ids by item index) sets the row order:
        its items come first in that order, the snapshot's other items follow in
        their previous storage order. Without ``order`` the storage order is kept.
        Older snapshots keep their parts until ``gc``.
        """
        return maintenance.compact(self._parts, self._snapshots, self.feature_set_path(key), key, order)

    def gc(self, key: FeatureSetKey, keep_last: int = 5, *, tmp_older_than_s: float = 3600.0) -> int:
        """Delete what no retained snapshot needs; return the number of files removed.

        Retained: the newest ``keep_last`` snapshots and the current one. Removed:
        other snapshot files, parts none of the retained snapshots reference (except
        pending parts written after the newest snapshot, i.e. an extraction in
        progress or interrupted), and ``.tmp-*`` files older than ``tmp_older_than_s``
        (left by killed writers; younger ones may belong to a live writer).
        """
        folder = self.feature_set_path(key)
        return maintenance.gc(
            self._parts, self._snapshots, folder, keep_last, tmp_older_than_s, also_clean=(self._encoders.folder,)
        )
