"""Item-to-item neighbours of a served run: ``similar_items`` and ``write_similar``.

Two spaces:

- ``"model"``: cosine similarity of the model's final item representations (what it scores
  users against), so neighbours reflect behaviour as the model learned it;
- ``"content"``: cosine similarity of the raw content features the run used (each
  modality L2-normalised, then concatenated, so every modality weighs the same).

The item itself, items removed from the catalog and items outside ``candidates`` are never
returned; ties as in the evaluator (lower item row first). Same file conventions as the
recommendations (``pipeline.serving.ranked_lists``): Parquet ``item_id, rank,
similar_item_id, score`` plus a JSON manifest carrying its sha256, written as one pair
(``pipeline.serving.ranked_files``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.serving.ranked_files import write_pair
from pipeline.serving.ranked_lists import (
    SIMILAR_SCHEMA,
    Written,
    allowed_items,
    manifest_base,
    mapped_manifest,
    ranked_frame,
)
from pipeline.serving.servable import Servable, ServingError, parse_ids

Space = Literal["model", "content"]


def item_vectors(s: Servable, space: Space) -> Tensor:
    """(I, d) unit rows of the chosen space."""
    if space == "model":
        return F.normalize(s.item_emb.float(), dim=1)
    if space != "content":
        raise ServingError(f"--space must be model or content, got {space!r}")
    if not s.features.features:
        raise ServingError(f"--space content: the run ({s.record.model}) used no content features; use --space model")
    device = s.item_emb.device
    parts = [F.normalize(s.features.features[m].to(device).float(), dim=1) for m in sorted(s.features.features)]
    return torch.cat(parts, dim=1) / len(parts) ** 0.5


def _batches(s: Servable, rows: np.ndarray, k: int, space: Space, allowed: Tensor, block_elements: int = 1 << 21):
    vectors = item_vectors(s, space)
    k = min(k, s.num_items)
    batch = max(1, block_elements // max(1, s.num_items))
    blocked = ~allowed
    for start in range(0, rows.size, batch):
        query = torch.as_tensor(rows[start : start + batch], device=vectors.device)
        scores = vectors[query] @ vectors.T
        scores[:, blocked] = float("-inf")
        scores[torch.arange(query.numel(), device=query.device), query] = float("-inf")  # never the item itself
        yield ranked_frame(scores, k, query, s.item_ids, s.item_ids, ("item_id", "similar_item_id"))


def _query_rows(s: Servable, items: list[str] | None) -> np.ndarray:
    rows = parse_ids(items, s.item_rows(), "items", "--items")
    if rows is None:
        return np.nonzero(s.active.cpu().numpy())[0].astype(np.int64)
    return rows


def similar_items(
    s: Servable, items: list[str] | None, k: int = 10, space: Space = "model", candidates: list[str] | None = None
) -> pd.DataFrame:
    if k < 1:
        raise ServingError(f"--k must be at least 1, got {k}")
    allowed, _ = allowed_items(s, candidates)
    frames = list(_batches(s, _query_rows(s, items), k, space, allowed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SIMILAR_SCHEMA.names)


def write_similar(
    s: Servable,
    items: list[str] | None,
    out: str | Path,
    k: int = 10,
    space: Space = "model",
    candidates: list[str] | None = None,
) -> Written:
    if k < 1:
        raise ServingError(f"--k must be at least 1, got {k}")
    out = Path(out)
    start = time.perf_counter()
    allowed, notes = allowed_items(s, candidates)
    rows = _query_rows(s, items)
    item_vectors(s, space)  # refuse a bad space before the file is opened

    def manifest(written: int) -> dict:
        return {
            **manifest_base(s, "similar-items"),
            "k": k,
            "space": space,
            "items": int(rows.size),
            "rows": written,
            "seconds": round(time.perf_counter() - start, 3),
            **notes,
            **mapped_manifest(s, 0),
        }

    written, path, info = write_pair(out, SIMILAR_SCHEMA, _batches(s, rows, k, space, allowed), manifest)
    return Written(out, path, written, int(rows.size), info["seconds"], info)
