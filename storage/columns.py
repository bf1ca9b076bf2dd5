"""Validated columns for the feature store: item ids, content hashes and vectors.

Ids and hashes become Arrow string arrays, checked to be present, non-empty and free
of control characters (so ``\\x1f`` can join them into one unambiguous key);
embeddings become a C-contiguous (n, D) float32 numpy matrix. Any array-like that
``np.asarray`` accepts will do, a CPU torch tensor included, so this floor does not
import torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_CONTROL_RE = "[\\x00-\\x1f\\x7f]"


def _has_empty_or_control(arr: pa.Array) -> bool:
    """Fast screen: any empty string or control byte? (UTF-8 continuation bytes are >= 0x80.)"""
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    if (np.diff(offsets) == 0).any():
        return True
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return bool(((data < 0x20) | (data == 0x7F)).any())


def string_array(values: Iterable[Any], what: str) -> pa.Array:
    """``values`` as one Arrow string array; raises ValueError naming the first bad row."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = values
    else:
        try:
            arr = pa.array(list(values), type=pa.string())
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            raise ValueError(f"{what} must be strings: {exc}") from None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{what}: row {row} is missing (null)")
    if len(arr) and _has_empty_or_control(arr):
        bad = pc.or_(pc.equal(pc.utf8_length(arr), 0), pc.match_substring_regex(arr, _CONTROL_RE))
        if pc.any(bad).as_py():
            row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{what}: row {row} ({arr[row].as_py()!r}) is empty or holds control characters")
    return arr


def as_float32_matrix(embeddings: Any) -> np.ndarray:
    """A C-contiguous (n, D) float32 copy or view of ``embeddings`` (numpy, or a CPU tensor)."""
    x = np.ascontiguousarray(np.asarray(embeddings), dtype=np.float32)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"embeddings must be a 2-D (items, dim) array, got shape {tuple(x.shape)}")
    return x


def first_duplicate(values: pa.Array) -> int | None:
    """Row of the first value seen before (in row order), or None when all are distinct."""
    if len(values) < 2:
        return None
    # A sort is several times cheaper than a hash set of long strings here.
    order = pc.sort_indices(values)
    ordered = values.take(order)
    same = pc.equal(ordered.slice(1), ordered.slice(0, len(values) - 1))
    if not pc.any(same).as_py():
        return None
    rows = order.to_numpy()
    hits = np.flatnonzero(same.to_numpy(zero_copy_only=False))
    # For each equal neighbour pair the later row repeats; report the smallest such row.
    return int(np.maximum(rows[hits], rows[hits + 1]).min())


def joined_keys(ids: pa.Array, hashes: pa.Array) -> pa.Array:
    """One string per (item_id, content_hash), for set lookups."""
    # \x1f cannot appear in validated ids or hashes, so the joined key is unambiguous.
    return pc.binary_join_element_wise(ids, hashes, "\x1f")


def part_columns(item_ids: Any, content_hashes: Any, embeddings: Any) -> tuple[pa.Table, np.ndarray]:
    """Validated keys (item_id, content_hash) and the (n, D) float32 matrix of one write."""
    ids = string_array(item_ids, "item_ids")
    hashes = string_array(content_hashes, "content_hashes")
    x = as_float32_matrix(embeddings)
    if not (len(ids) == len(hashes) == x.shape[0]):
        raise ValueError(
            f"item_ids ({len(ids)}), content_hashes ({len(hashes)}) and embeddings ({x.shape[0]} rows) "
            "must have the same length"
        )
    dup = first_duplicate(ids)
    if dup is not None:
        raise ValueError(f"item_ids: row {dup} repeats item {ids[dup].as_py()!r}")
    return pa.table({"item_id": ids, "content_hash": hashes}), x


def keep_keys(keep: Iterable[tuple[str, str]]) -> pa.Array:
    """Joined keys of the (item_id, content_hash) pairs to keep, each once.

    A pair given twice counts once; one item with two different hashes is an error.
    """
    pairs = list(keep)
    if any(not isinstance(p, (tuple, list)) or len(p) != 2 for p in pairs):
        raise ValueError("keep must hold (item_id, content_hash) pairs")
    ids_list, hashes_list = (list(c) for c in zip(*pairs)) if pairs else ([], [])
    ids = string_array(ids_list, "keep item_ids")
    hashes = string_array(hashes_list, "keep content_hashes")
    keys = joined_keys(ids, hashes)
    if first_duplicate(ids) is not None:
        unique_keys = pc.unique(keys)
        first = pc.index_in(unique_keys, value_set=keys)
        ids, keys = ids.take(first), unique_keys
        dup = first_duplicate(ids)
        if dup is not None:
            raise ValueError(f"keep names item {ids[dup].as_py()!r} with more than one content_hash")
    return keys
