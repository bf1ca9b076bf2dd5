"""Full-ranking evaluation (spec section 1).

For every user with at least one held-out item, every item is scored
(``score = user_emb @ item_emb.T`` from ``model.inference_embeddings()``), the user's
TRAIN items are set to -inf, and the top K_max = 50 items are taken. Validation items
are not masked when testing (reference behaviour). Valid and test share the train mask,
so one top-K pass over the union of their users serves both.

Work runs in user batches on the embeddings' device; the batch size is chosen so one
score block holds about ``block_elements`` floats (2^25 = 128 MB), which keeps memory
flat for large catalogs.

Ties: ranking is by score, higher first, and among equal scores the LOWER item index
comes first. This is exact and device independent: ``torch.topk`` alone leaves tie order
unspecified (and it differs between CPU and CUDA), so (1) the K_max returned entries are
re-ordered by (score desc, index asc) and (2) rows where the K-th score ties with an
item left outside the top K are re-ranked with an exact integer key
(order-preserving int of the float32 score, then the inverted item index). Rows without
a boundary tie (almost all rows of a trained model) cost one extra comparison pass.
MostPop, where many items share a popularity count, is the case this matters for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.metrics import TOPKS, average, per_user_metrics


@dataclass
class UserItems:
    """A user -> items table in CSR form (sorted by user), on one device."""

    indptr: Tensor  # (U + 1,) int64
    items: Tensor  # (nnz,) int64

    @classmethod
    def from_pairs(cls, num_users: int, users: Tensor, items: Tensor) -> "UserItems":
        order = torch.argsort(users * (int(items.max()) + 1 if items.numel() else 1) + items)
        users, items = users[order], items[order]
        counts = torch.bincount(users, minlength=num_users)
        indptr = torch.zeros(num_users + 1, dtype=torch.int64, device=users.device)
        indptr[1:] = counts.cumsum(0)
        return cls(indptr=indptr, items=items)

    @property
    def num_users(self) -> int:
        return self.indptr.numel() - 1

    def counts(self) -> Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def users_with_items(self) -> Tensor:
        return torch.nonzero(self.counts() > 0).flatten()

    def rows(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """(row position in ``users``, item) for every item of the given users."""
        start = self.indptr[users]
        count = self.indptr[users + 1] - start
        row = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), count)
        offset = torch.arange(row.numel(), device=users.device) - torch.repeat_interleave(count.cumsum(0) - count, count)
        return row, self.items[torch.repeat_interleave(start, count) + offset]

    def to(self, device: torch.device | str) -> "UserItems":
        return UserItems(self.indptr.to(device), self.items.to(device))


@dataclass
class EvalResult:
    """Averaged metrics plus the per-user values needed for paired tests."""

    metrics: dict[str, float]
    users: np.ndarray  # evaluated user_idx (>= 1 held-out item), ascending
    per_user: dict[str, np.ndarray] = field(default_factory=dict)  # recall@20, ndcg@20, aligned with users

    @property
    def num_users(self) -> int:
        return int(self.users.size)


def _ordered_int(scores: Tensor) -> Tensor:
    """int64 key with the same order as the float32 scores (-0.0 folded into +0.0)."""
    bits = (scores.float() + 0.0).view(torch.int32)
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)


def topk_items(scores: Tensor, k: int) -> Tensor:
    """Indices of the k best columns per row: score descending, ties -> lower index first."""
    k = min(k, scores.size(1))
    vals, idx = scores.topk(k, dim=1)
    kth = vals[:, -1:]
    boundary_tie = (scores >= kth).sum(1) > k
    if bool(boundary_tie.any()):
        rows = torch.nonzero(boundary_tie).flatten()
        sub = scores[rows]
        col = torch.arange(sub.size(1), device=sub.device, dtype=torch.int64)
        key = _ordered_int(sub) * (1 << 32) + ((1 << 31) - 1 - col)
        idx[rows] = key.topk(k, dim=1).indices
        vals[rows] = sub.gather(1, idx[rows])
    # Re-order inside the top k: ascending index, then a stable sort by score descending.
    by_index = idx.argsort(dim=1)
    idx, vals = idx.gather(1, by_index), vals.gather(1, by_index)
    by_score = vals.argsort(dim=1, descending=True, stable=True)
    return idx.gather(1, by_score)


class Evaluator:
    """Full-ranking evaluator for one split: train mask plus held-out parts (valid, test)."""

    def __init__(
        self,
        train: UserItems,
        heldout: dict[str, UserItems],
        num_items: int,
        ks: Sequence[int] = TOPKS,
        block_elements: int = 1 << 25,
        per_user_metrics_kept: Sequence[str] = ("recall@20", "ndcg@20"),
    ):
        self.train = train
        self.heldout = heldout
        self.num_items = int(num_items)
        self.ks = tuple(sorted(ks))
        self.kmax = max(self.ks)
        self.block_elements = block_elements
        self.kept = tuple(per_user_metrics_kept)
        # With fewer items than K the list is the whole catalog; missing ranks count as misses.
        self.depth = min(self.kmax, self.num_items)

    def to(self, device: torch.device | str) -> "Evaluator":
        self.train = self.train.to(device)
        self.heldout = {k: v.to(device) for k, v in self.heldout.items()}
        return self

    @torch.no_grad()
    def evaluate(self, user_emb: Tensor, item_emb: Tensor, parts: Sequence[str] | None = None) -> dict[str, EvalResult]:
        parts = list(parts) if parts is not None else list(self.heldout)
        device = user_emb.device
        user_emb, item_emb = user_emb.float(), item_emb.float()
        if item_emb.size(0) != self.num_items:
            raise ValueError(f"model returned {item_emb.size(0)} item embeddings for {self.num_items} items")
        per_part_users = {p: self.heldout[p].users_with_items().to(device) for p in parts}
        all_users = torch.unique(torch.cat(list(per_part_users.values()))) if parts else torch.empty(0, dtype=torch.int64)
        batch = max(1, self.block_elements // max(1, self.num_items))
        hits = {p: torch.zeros(all_users.numel(), self.kmax, dtype=torch.bool, device=device) for p in parts}
        item_t = item_emb.T.contiguous()
        for start in range(0, all_users.numel(), batch):
            users = all_users[start : start + batch]
            scores = user_emb[users] @ item_t
            row, col = self.train.rows(users)
            scores[row, col] = float("-inf")
            top = topk_items(scores, self.depth)
            for p in parts:
                truth = torch.zeros_like(scores, dtype=torch.bool)
                row, col = self.heldout[p].rows(users)
                truth[row, col] = True
                hits[p][start : start + users.numel(), : self.depth] = truth.gather(1, top)
        out = {}
        for p in parts:
            users = per_part_users[p]
            pos = torch.searchsorted(all_users, users)
            counts = self.heldout[p].counts()[users]
            values = per_user_metrics(hits[p][pos], counts, self.ks)
            out[p] = EvalResult(
                metrics=average(values),
                users=users.cpu().numpy(),
                per_user={name: values[name].cpu().numpy() for name in self.kept if name in values},
            )
        return out


def evaluate_model(model: torch.nn.Module, evaluator: Evaluator, parts: Sequence[str] | None = None) -> dict[str, EvalResult]:
    """Switch to eval mode, take the model's inference embeddings, rank, restore the mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            user_emb, item_emb = model.inference_embeddings()
        return evaluator.evaluate(user_emb, item_emb, parts)
    finally:
        model.train(was_training)
