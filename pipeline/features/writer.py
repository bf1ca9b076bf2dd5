"""The part writer both extraction backends use: buffered embeddings -> feature store parts.

A part is written every ``part_size`` rows or ``flush_seconds``, whichever comes first,
which bounds the work a crash can lose; the store sees a written part at once
(``existing_keys``), so the next run resumes after it. A part's rows are in catalog order
even when they were encoded in another (texts go in length order), and the part records
the inference backend that computed them (``backend``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from storage.faults import pause_point
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey


class PartWriter:
    """Buffers embeddings of one feature set and writes them to ``store`` as parts.

    ``on_part(modality, parts_written_so_far, part_name)`` is called after each part.
    """

    def __init__(
        self,
        store: FeatureStore,
        key: FeatureSetKey,
        part_size: int,
        flush_seconds: float,
        on_part: Callable[[str, int, str], None] | None = None,
    ):
        self.store, self.key = store, key
        self.part_size, self.flush_seconds, self.on_part = part_size, flush_seconds, on_part
        self.ids: list[str] = []
        self.hashes: list[str] = []
        self.order: list[int] = []
        self.chunks: list[np.ndarray] = []
        self.parts: list[str] = []
        self.backend: str | None = None  # what the next parts record as their inference backend
        self.last = time.perf_counter()

    def add(self, ids: list[str], hashes: list[str], emb: np.ndarray, order: list[int] | None = None) -> None:
        """Buffer rows (``emb``: (n, D) float32); write a part when the buffer is full or old.
        ``order``: the rows' positions in the catalog, by which a part's rows are sorted."""
        self.ids += ids
        self.hashes += hashes
        self.order += order if order is not None else range(len(self.order), len(self.order) + len(ids))
        self.chunks.append(emb)
        if len(self.ids) >= self.part_size or time.perf_counter() - self.last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered (if anything) as one part."""
        if self.ids:
            rows = np.argsort(np.asarray(self.order), kind="stable")
            ids, hashes = [self.ids[r] for r in rows], [self.hashes[r] for r in rows]
            emb = np.concatenate(self.chunks)[rows]
            name = self.store.write_part(self.key, ids, hashes, emb, backend=self.backend)
            self.parts.append(name)
            self.ids, self.hashes, self.order, self.chunks = [], [], [], []
            if self.on_part is not None:
                self.on_part(self.key.modality, len(self.parts), name)
            pause_point("extract-part")  # crash tests: a part written, the snapshot not committed
        self.last = time.perf_counter()
