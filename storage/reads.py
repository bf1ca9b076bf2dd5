"""Reading a snapshot's vectors as numpy: aligned to requested item ids, or the whole table.

An aligned read looks the ids up in the snapshot's decoded index, then takes the
cheapest of three ways: when the rows are one part's single chunk in the requested
order (see ``FeatureStore.compact``) the result is a read-only view of the Arrow
buffer (no copy); when they are all in one part in another order, one gather; else a
zero-filled matrix with the present rows gathered part by part.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.index import DecodedIndex
from storage.parts import PartFiles


def _lookup(index: DecodedIndex, ids: pa.Array, hashes: pa.Array | None) -> tuple[np.ndarray, np.ndarray]:
    """(mask, position in the index) per requested id; with ``hashes`` only matching hashes count."""
    pos_arr = pc.index_in(ids, value_set=index.item_id)
    present = pc.is_valid(pos_arr)
    if hashes is not None:
        if len(hashes) != len(ids):
            raise ValueError(f"content_hashes has {len(hashes)} entries for {len(ids)} item_ids")
        stored = index.content_hash.take(pos_arr)
        present = pc.and_(present, pc.fill_null(pc.equal(stored, hashes), False))
    mask = present.to_numpy(zero_copy_only=False).astype(bool)
    pos = pc.fill_null(pos_arr, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return mask, pos


def read_aligned(
    parts: PartFiles, folder: str, index: DecodedIndex, dim: int, ids: pa.Array, hashes: pa.Array | None
) -> tuple[np.ndarray, np.ndarray]:
    """An (I, D) float32 matrix aligned to ``ids`` and an (I,) bool mask; absent rows are zero."""
    n = len(ids)
    mask, pos = _lookup(index, ids, hashes)
    sel = np.flatnonzero(mask)
    codes = index.part_code[pos[sel]]
    rows = index.row[pos[sel]]
    one_part = bool(n) and len(sel) == n and bool((codes == codes[0]).all())
    if one_part and (np.diff(rows) == 1).all():
        emb, view = parts.embeddings(folder, index.parts[codes[0]])
        out = emb[rows[0] : rows[0] + n]
        return (out if view else out.copy()), np.ones(n, dtype=bool)
    if one_part:
        # One part, every row present, another order: a single gather into the output.
        emb, _ = parts.embeddings(folder, index.parts[codes[0]])
        out = np.empty((n, dim), dtype=np.float32)
        np.take(emb, rows, axis=0, out=out)
        return out, np.ones(n, dtype=bool)
    out = np.zeros((n, dim), dtype=np.float32)
    for code in np.unique(codes):
        take = codes == code
        emb, _ = parts.embeddings(folder, index.parts[code])
        out[sel[take]] = emb[rows[take]]
    return out, mask


def gather(parts: PartFiles, folder: str, index: DecodedIndex, positions: np.ndarray, dim: int) -> np.ndarray:
    """The vectors at ``positions`` of the index, in that order, as a new (n, D) float32 matrix."""
    out = np.empty((len(positions), dim), dtype=np.float32)
    codes = index.part_code[positions]
    rows = index.row[positions]
    for code in np.unique(codes):
        take = codes == code
        emb, _ = parts.embeddings(folder, index.parts[code])
        out[take] = emb[rows[take]]
    return out


def snapshot_table(parts: PartFiles, folder: str, index: DecodedIndex, dim: int) -> pa.Table:
    """Every row of a snapshot as (item_id, content_hash, embedding), sorted by item_id."""
    emb = gather(parts, folder, index, np.arange(len(index.item_id)), dim)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim)
    return pa.table({"item_id": index.item_id, "content_hash": index.content_hash, "embedding": vectors})
