"""Top-K recommendations per user and similar items, written as Parquet with a manifest.

Scoring is the evaluator's (``pipeline.evaluation.evaluator``): ``score = user @ item.T``
in float32 from the model's final representations, excluded entries set to -inf, and
``topk_items`` for the order (score descending, ties -> lower item row first). So for the
same users and the same exclusions (``seen="train"``) the lists equal the evaluator's
(tested). Users are scored in batches of about ``block_elements`` scores, so memory stays
flat as users grow, and batches are streamed into the Parquet file.

Output (``user_id, rank, item_id, score``; rank 1 is best), and beside it
``<name>.json``: the run, model, adapter, feature snapshots, the catalog's fingerprint,
what was excluded, counts, the creation time and the Parquet's sha256. Both are written
under a temporary name and renamed, the manifest last, so a killed write leaves no partial
file and never a manifest beside another write's Parquet; befa's readers check the sha256
(:mod:`pipeline.serving.ranked_files`). One line of DuckDB reads it::

    duckdb -c "SELECT * FROM 'recommendations.parquet' WHERE user_id = '42' ORDER BY rank"

Exclusions: items not in the current catalog (removed since training) are never returned;
``candidates`` restricts to an allowed list (e.g. in stock); by default items the user
interacted with are excluded (``seen="all"``: the run's train split plus every interaction
in the current catalog; ``"train"``: the train split only, as the evaluator; ``"none"``:
keep them). Fewer than K rows come back for a user with fewer than K allowed items.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pydantic import BaseModel
from torch import Tensor

from pipeline.evaluation.evaluator import topk_items
from pipeline.serving.new_items import top_with_slots
from pipeline.serving.ranked_files import write_pair
from pipeline.serving.servable import Servable, ServingError, parse_ids

Seen = Literal["all", "train", "none"]
RECS_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float32())]
)
SIMILAR_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("rank", pa.int32()), ("similar_item_id", pa.string()), ("score", pa.float32())]
)


class RankedRow(BaseModel):
    """One row of a recommendations file: ``user_id``'s item at ``rank`` (1 is best) and its score."""

    user_id: str
    rank: int
    item_id: str
    score: float


@dataclass(frozen=True)
class RecommendRequest:
    k: int = 20
    users: list[str] | None = None  # user ids; None = every user the run knows
    seen: Seen = "all"
    candidates: list[str] | None = None  # allowed item ids; None = every current item
    block_elements: int = 1 << 21  # scores per batch, as the evaluator
    new_item_slots: int = 0  # places each list guarantees to items without behaviour (new_items)

    def check(self) -> None:
        if self.k < 1:
            raise ServingError(f"--k must be at least 1, got {self.k}")
        if not 0 <= self.new_item_slots <= self.k:
            raise ServingError(f"--new-item-slots must be between 0 and --k ({self.k}), got {self.new_item_slots}")
        if self.seen not in ("all", "train", "none"):
            raise ServingError(f"seen must be all, train or none, got {self.seen!r}")


@dataclass
class Written:
    path: Path
    manifest: Path
    rows: int
    users: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def allowed_items(s: Servable, candidates: list[str] | None) -> tuple[Tensor, dict[str, int]]:
    """(I,) bool of the items that may be returned, and counts for the manifest."""
    allowed = s.active.clone()
    notes = {
        "removed_since_training": int((~s.active).sum()),
        "new_items": int(s.new.sum()),
        "new_items_left_out": s.new_items_left_out,
    }
    if candidates is not None:
        rows = s.item_rows()
        known = [c for c in dict.fromkeys(candidates) if c in rows.index]
        mask = torch.zeros_like(allowed)
        mask[torch.tensor(rows.loc[known].to_numpy(np.int64), device=mask.device)] = True
        allowed &= mask
        notes.update(candidates_given=len(set(candidates)), candidates_unknown=len(set(candidates)) - len(known))
    notes["allowed_items"] = int(allowed.sum())
    return allowed, notes


def _seen_rows(s: Servable, users: Tensor, seen: Seen) -> tuple[Tensor, Tensor]:
    """(row in batch, item) pairs to exclude."""
    if seen == "none":
        empty = torch.empty(0, dtype=torch.int64, device=users.device)
        return empty, empty
    table = s.history if seen == "all" else s.train_history
    return table.rows(users)


def score_batches(s: Servable, request: RecommendRequest, allowed: Tensor, users: Tensor) -> Iterator[pd.DataFrame]:
    """Per batch of users: a frame of (user_id, rank, item_id, score)."""
    num_items = s.num_items
    k = min(request.k, num_items)
    batch = max(1, request.block_elements // max(1, num_items))
    item_t = s.item_emb.T.contiguous()
    blocked = ~allowed
    user_ids = s.user_ids
    for start in range(0, users.numel(), batch):
        rows = users[start : start + batch]
        scores = s.user_emb[rows] @ item_t
        if s.calibration is not None:  # mapped items' scores on the warm items' scale (new_items)
            scores = s.calibration.rescore(rows, scores)
        scores[:, blocked] = float("-inf")
        r, i = _seen_rows(s, rows, request.seen)
        scores[r, i] = float("-inf")
        top = None
        if request.new_item_slots and s.no_behaviour is not None:
            top = top_with_slots(scores, k, s.no_behaviour, request.new_item_slots)
        yield ranked_frame(scores, k, rows, user_ids, s.item_ids, ("user_id", "item_id"), top)


def ranked_frame(
    scores: Tensor,
    k: int,
    rows: Tensor,
    row_ids: np.ndarray,
    item_ids: np.ndarray,
    names: tuple[str, str],
    top: tuple[Tensor, Tensor] | None = None,
) -> pd.DataFrame:
    """The top ``k`` of each row of ``scores`` (the evaluator's order; or ``top``, (items,
    scores) already chosen) as (row id, rank, item id, score), -inf entries (excluded items) dropped."""
    if top is None:
        top = topk_items(scores, k)
        vals = scores.gather(1, top)
    else:
        top, vals = top
    keep = torch.isfinite(vals)
    rank = torch.arange(1, k + 1, dtype=torch.int32, device=top.device).expand_as(top)
    who = rows[:, None].expand_as(top)
    return pd.DataFrame(
        {
            names[0]: row_ids[who[keep].cpu().numpy()],
            "rank": rank[keep].cpu().numpy(),
            names[1]: item_ids[top[keep].cpu().numpy()],
            "score": vals[keep].cpu().numpy().astype(np.float32),
        }
    )


def requested_users(s: Servable, users: list[str] | None) -> Tensor:
    rows = parse_ids(users, s.user_rows, "users", "--users")
    if rows is None:
        rows = np.sort(s.user_rows.to_numpy(np.int64))
    return torch.as_tensor(rows, device=s.user_emb.device)


def recommend(s: Servable, request: RecommendRequest) -> pd.DataFrame:
    """All requested users' top-K in one frame (for small requests; files stream instead)."""
    request.check()
    allowed, _ = allowed_items(s, request.candidates)
    frames = list(score_batches(s, request, allowed, requested_users(s, request.users)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RECS_SCHEMA.names)


def manifest_base(s: Servable, kind: str) -> dict[str, Any]:
    rec = s.record
    return {
        "kind": kind,
        "run_dir": str(s.run_dir.resolve()),
        "run_record": str((s.run_dir / "run.json").resolve()),
        "model": rec.model,
        "adapter": rec.adapter,
        "seed": rec.seed,
        "best_epoch": rec.best_epoch,
        "split_id": rec.split_id,
        "feature_sets": rec.feature_sets,
        "new_item_snapshots": s.new_item_snapshots,
        "catalog": s.catalog.name,
        "catalog_dir": s.catalog_dir,
        "catalog_fingerprint": s.catalog.fingerprint(),
        "item_universe": s.universe_source,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def mapped_manifest(s: Servable, slots: int) -> dict[str, Any]:
    """What the manifest says of the items without behaviour and how they were scored."""
    unseen = s.no_behaviour if s.no_behaviour is not None else torch.zeros(0, dtype=torch.bool)
    ids = s.item_ids[unseen.cpu().numpy()] if unseen.numel() else np.array([], dtype=object)
    return {
        "mapper": s.mapper,  # None: the model's own content path
        "calibration": s.calibration.mode if s.calibration is not None else None,
        "calibration_note": s.calibration_note,  # set when the mode asked for fell back
        "new_item_slots": slots,
        "items_without_behaviour": [str(i) for i in ids],
        "mapped_items": [str(i) for i in ids] if s.mapper else [],
    }


def write_recommendations(s: Servable, request: RecommendRequest, out: str | Path, progress: Any = None) -> Written:
    """Stream every requested user's top-K into ``out`` (Parquet) and write ``out``'s manifest."""
    request.check()
    out = Path(out)
    start = time.perf_counter()
    allowed, notes = allowed_items(s, request.candidates)
    users = requested_users(s, request.users)
    frames = score_batches(s, request, allowed, users)
    if progress is not None:
        frames = progress(frames, users.numel())

    def manifest(rows: int) -> dict[str, Any]:
        return {
            **manifest_base(s, "recommendations"),
            "k": request.k,
            "seen_excluded": request.seen,
            "users": int(users.numel()),
            "rows": rows,
            "seconds": round(time.perf_counter() - start, 3),
            **notes,
            **mapped_manifest(s, request.new_item_slots),
        }

    rows, path, info = write_pair(out, RECS_SCHEMA, frames, manifest)
    return Written(out, path, rows, int(users.numel()), info["seconds"], info)
