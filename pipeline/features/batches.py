"""The batches an extraction encodes: images decoded ahead of the forward pass, texts in length order.

Both generators yield ``(positions, embeddings (n, D) float32 numpy, failures)`` per batch,
positions being rows of the extraction's ``todo`` frame.

- Images: on CPU a thread pool reads, checks, decodes and preprocesses the next batches
  while the current one runs forward (:mod:`pipeline.features.prefetch`); on CUDA (or with
  ``ExtractTuning(decode_threads=False)``) DataLoader worker processes do
  (:func:`pipeline.features.images.image_loader`).
- Texts: a transformer's cost grows with the longest text of its batch, since every text is
  padded to it. Batches cut from texts in catalog order pad short texts to long ones; so
  within each window of ``window`` texts (the part size: a part's rows stay one contiguous
  stretch of the catalog, written in catalog order by the part writer) texts are batched in
  length order. That was most of the 1.85x between ``befa extract --encoder minilm`` and a
  plain sentence-transformers ``encode`` of all texts (which sorts them all by length).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from pipeline.features.images import ImageItems, image_loader
from pipeline.features.prefetch import prefetched_batches

Batch = tuple[list[int], "np.ndarray | None", list[tuple[int, str]]]


class ExtractTuning(BaseModel):
    """Extraction's speed paths; all on by default. ``ExtractTuning.baseline()`` turns them off, as
    extraction ran before them (``make bench-extract`` measures both)."""

    model_config = ConfigDict(frozen=True)

    decode_threads: bool = Field(True, description="CPU: decode images in threads, ahead of the forward pass")
    length_sorted_texts: bool = Field(True, description="batch texts in length order within each part's window")
    channels_last: bool = Field(True, description="conv nets run in channels-last memory format")

    @classmethod
    def baseline(cls) -> "ExtractTuning":
        return cls(decode_threads=False, length_sorted_texts=False, channels_last=False)


def embed_split_on_oom(fn: Callable[[Any], torch.Tensor], batch: Any, n: int) -> torch.Tensor:
    """``fn(batch)``; on CUDA out-of-memory, halve the batch and try again."""
    try:
        return fn(batch)
    except torch.cuda.OutOfMemoryError:
        if n <= 1:
            raise
        torch.cuda.empty_cache()
        half = n // 2
        return torch.cat([embed_split_on_oom(fn, batch[:half], half), embed_split_on_oom(fn, batch[half:], n - half)])


def image_batches(
    embed: Callable[[torch.Tensor], torch.Tensor],
    transform: Callable,
    items: pd.DataFrame,
    todo: pd.DataFrame,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    cache_root: str | None = None,
    tuning: ExtractTuning = ExtractTuning(),
) -> Iterator[Batch]:
    """Embedded batches of ``todo``'s images (see the module docstring)."""
    refs = items["image"].to_numpy()[todo["item_idx"].to_numpy()]
    # image URLs are read from the cache the catalog was ingested with (never fetched)
    dataset = ImageItems(refs.tolist(), todo["content_hash"].tolist(), transform, cache_root)
    if device.type == "cpu" and tuning.decode_threads:
        loader = prefetched_batches(dataset, batch_size, num_workers)
    else:
        loader = image_loader(dataset, batch_size, num_workers, device)
    for positions, pixels, bad in loader:
        if pixels is None:
            yield [], None, bad
            continue
        pixels = pixels.to(device, non_blocking=True)
        emb = embed_split_on_oom(embed, pixels, len(positions))
        yield positions, emb.cpu().numpy(), bad


def text_windows(texts: list[str], window: int, by_length: bool) -> list[list[int]]:
    """Positions of ``texts`` in windows of ``window``, each in encoding order: by length, or as they are."""
    step = max(1, window)
    windows = [list(range(w, min(w + step, len(texts)))) for w in range(0, len(texts), step)]
    return [sorted(w, key=lambda p: len(texts[p])) for w in windows] if by_length else windows


def text_batches(
    embed: Callable[[list[str]], torch.Tensor],
    items: pd.DataFrame,
    todo: pd.DataFrame,
    *,
    batch_size: int,
    window: int,
    tuning: ExtractTuning = ExtractTuning(),
) -> Iterator[Batch]:
    """Embedded batches of ``todo``'s texts, in length order within windows (see the module docstring);
    no batch spans two windows, so every part holds one window. The first window's middle batch
    goes first: it is the batch the backend trial times (``pipeline.features.backend``), and texts
    of typical length, not the shortest, are what the rest of the run encodes."""
    texts = items["text"].to_numpy()[todo["item_idx"].to_numpy()].tolist()
    for w, order in enumerate(text_windows(texts, window, tuning.length_sorted_texts)):
        starts = list(range(0, len(order), batch_size))
        if w == 0 and tuning.length_sorted_texts:
            starts.insert(0, starts.pop(len(starts) // 2))
        for start in starts:
            positions = order[start : start + batch_size]
            chunk = [texts[p] for p in positions]
            emb = embed_split_on_oom(embed, chunk, len(chunk))
            yield positions, emb.cpu().numpy(), []
