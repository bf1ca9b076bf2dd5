"""Keeping a feature set small and fast to read: ``compact`` and ``gc``.

``compact`` rewrites the current snapshot as one part in a chosen row order, so that
aligned reads are zero-copy views. ``gc`` deletes snapshots beyond the newest
``keep_last`` (never the current one), parts no retained snapshot references (pending
parts newer than the latest snapshot are kept: an extraction in progress or
interrupted) and temporaries left by killed writers.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.columns import first_duplicate, string_array
from storage.index import SNAPSHOTS_DIR, DecodedIndex, SnapshotFiles, iso_to_ns
from storage.keys import FeatureSetKey
from storage.parts import PARTS_DIR, PartFiles, part_time_ns
from storage.reads import gather
from storage.snapshots import Snapshot


def compaction_positions(index: DecodedIndex, order: Sequence[str] | None) -> np.ndarray:
    """Index positions in their new row order: ``order``'s items first, then the rest in storage order."""
    n = len(index.item_id)
    # Storage order: by part write time (names sort by it), then row.
    part_rank = np.argsort(np.argsort(np.array(index.parts, dtype=object)))
    storage = np.lexsort((index.row, part_rank[index.part_code])) if n else np.zeros(0, np.int64)
    if order is None:
        return storage
    wanted = string_array(order, "order")
    if first_duplicate(wanted) is not None:
        raise ValueError("order repeats an item id")
    first = pc.drop_null(pc.index_in(wanted, value_set=index.item_id)).to_numpy().astype(np.int64)
    rest = storage[~np.isin(storage, first)]
    return np.concatenate([first, rest])


def compact(
    parts: PartFiles, snapshots: SnapshotFiles, folder: str, key: FeatureSetKey, order: Sequence[str] | None
) -> Snapshot:
    """Rewrite the current snapshot of ``key`` as one part in ``compaction_positions`` order.

    The rows come from parts already validated on write, so they are written as they are.
    """
    snap = snapshots.current(folder)
    if snap is None:
        raise LookupError(f"nothing to compact: no snapshot of {key} in {parts.fs.uri}")
    index = snapshots.decoded(folder, snap)
    positions = compaction_positions(index, order)
    n = len(positions)
    if n == 0:
        return snap
    if len(snap.parts) == 1 and (index.row[positions] == np.arange(n)).all():
        return snap  # already one part in this order
    emb = gather(parts, folder, index, positions, snap.dim)
    take = pa.array(positions)
    table = pa.table({"item_id": index.item_id.take(take), "content_hash": index.content_hash.take(take)})
    backends = snap.backends or parts.backend_rows(folder, pa.array([index.parts[c] for c in index.part_code]))
    name = parts.write(folder, table, emb, " + ".join(backends))
    new_index = pa.table(
        {
            "item_id": table["item_id"],
            "content_hash": table["content_hash"],
            "part": pa.array([name] * n, pa.string()),
            "row": pa.array(np.arange(n, dtype=np.int64)),
        }
    )
    return snapshots.commit(folder, key, new_index, snap.dim, missing=snap.missing, backends=backends)


def gc(
    parts: PartFiles,
    snapshots: SnapshotFiles,
    folder: str,
    keep_last: int,
    tmp_older_than_s: float,
    also_clean: Sequence[str] = (),
) -> int:
    """Delete what no retained snapshot of the feature set in ``folder`` needs; return the files removed.

    ``also_clean``: more folders (the encoder records) whose old temporaries go too.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    snaps = snapshots.all(folder)
    current = snapshots.current(folder)
    retained = {s.id: s for s in snaps[-keep_last:]}
    if current is not None:
        retained[current.id] = current
    removed = 0
    for snap in snaps:
        if snap.id not in retained:
            snapshots.remove(folder, snap.id)
            removed += 1
    parts.forget_available(folder)
    referenced = {p for s in retained.values() for p in s.parts}
    newest_ns = max((iso_to_ns(s.created) for s in snaps), default=-1)
    for name in parts.names(folder):
        if name not in referenced and part_time_ns(name) <= newest_ns:
            parts.remove(folder, name)
            removed += 1
    for sub in (folder, posixpath.join(folder, PARTS_DIR), posixpath.join(folder, SNAPSHOTS_DIR), *also_clean):
        removed += parts.fs.remove_temporaries(sub, tmp_older_than_s)
    return removed
