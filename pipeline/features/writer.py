"""The part writer both extraction backends use: buffered embeddings -> feature store parts.

A part is written every ``part_size`` rows or ``flush_seconds``, whichever comes first,
which bounds the work a crash can lose; the store sees a written part at once
(``existing_keys``), so the next run resumes after it.
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
        self.chunks: list[np.ndarray] = []
        self.parts: list[str] = []
        self.last = time.perf_counter()

    def add(self, ids: list[str], hashes: list[str], emb: np.ndarray) -> None:
        """Buffer rows (``emb``: (n, D) float32); write a part when the buffer is full or old."""
        self.ids += ids
        self.hashes += hashes
        self.chunks.append(emb)
        if len(self.ids) >= self.part_size or time.perf_counter() - self.last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered (if anything) as one part."""
        if self.ids:
            name = self.store.write_part(self.key, self.ids, self.hashes, np.concatenate(self.chunks))
            self.parts.append(name)
            self.ids, self.hashes, self.chunks = [], [], []
            if self.on_part is not None:
                self.on_part(self.key.modality, len(self.parts), name)
            pause_point("extract-part")  # crash tests: a part written, the snapshot not committed
        self.last = time.perf_counter()
