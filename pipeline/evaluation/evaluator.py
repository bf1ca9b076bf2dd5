"""Full-ranking evaluation (spec section 1).

For every user with at least one held-out item, every item is scored
(``score = user_emb @ item_emb.T`` from ``model.inference_embeddings()``), the user's
TRAIN items are set to -inf, and the top K_max = 50 items are taken. Validation items
are not masked when testing (reference behaviour). Valid and test share the train mask,
so one top-K pass over the union of their users serves both.

Work runs in user batches on the embeddings' device; the batch size is chosen so one
score block holds about ``block_elements`` floats (2^21 = 8 MB, cache-sized; larger
blocks were not faster here), which keeps memory flat for large catalogs.

Ties: ranking is by score, higher first, and among equal scores the LOWER item index
comes first. This is exact and device independent: ``torch.topk`` alone leaves tie order
unspecified (and it differs between CPU and CUDA), so ``topk_items`` takes the top K + 1:
(1) rows where the K-th and (K+1)-th scores are equal (a tie across the cut) are
re-ranked with an exact integer key (order-preserving int of the float32 score, then
the inverted item index); (2) rows with equal scores inside the top K are re-ordered by
(score desc, index asc). Rows without ties (almost all rows of a trained model) cost
nothing extra. MostPop, where many items share a popularity count, is the case this
matters for. Held-out hits are found by a sorted-key lookup (``user * I + item``), and
the per-split constants (who is ranked, the train entries to mask per batch) are built
once and reused every epoch.

Item groups (``item_groups``: group -> (I,) bool mask, ``pipeline.evaluation.groups``:
warm, cold, long tail): from the same top-K pass, each group's Recall@20 and NDCG@20
count, per user, only the user's held-out items in the group (the denominators use the
user's count of held-out items in the group); users with none are skipped; ranks are
those of the full ranking over all items. ``EvalResult.groups`` holds the averages, and
``EvalResult.per_user`` adds ``<group>/<metric>`` arrays (NaN for skipped users).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from models.id_dropout import item_ids_masked
from pipeline.evaluation.metrics import TOPKS, average, per_user_metrics

SHARE_AT = 20  # the list length of the "share of cold items in users' top 20"


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
        offset = torch.arange(row.numel(), device=users.device) - torch.repeat_interleave(
            count.cumsum(0) - count, count
        )
        return row, self.items[torch.repeat_interleave(start, count) + offset]

    def to(self, device: torch.device | str) -> "UserItems":
        return UserItems(self.indptr.to(device), self.items.to(device))


@dataclass
class GroupResult:
    """One item group's metrics on one part: averages over its users."""

    metrics: dict[str, float]  # recall@20, ndcg@20
    users: int  # users with >= 1 held-out item in the group
    heldout: int  # held-out (user, item) pairs in the group
    top_share: float = float("nan")  # share of the group's items in the top SHARE_AT of every ranked user


@dataclass
class EvalResult:
    """Averaged metrics plus the per-user values needed for paired tests."""

    metrics: dict[str, float]
    users: np.ndarray  # evaluated user_idx (>= 1 held-out item), ascending
    # recall@20, ndcg@20 (+ <group>/<metric>, NaN where the user has no item of the group), aligned with users
    per_user: dict[str, np.ndarray] = field(default_factory=dict)
    groups: dict[str, GroupResult] = field(default_factory=dict)  # item group -> metrics
    heldout: int = 0  # held-out (user, item) pairs counted

    @property
    def num_users(self) -> int:
        return int(self.users.size)


def _ordered_int(scores: Tensor) -> Tensor:
    """int64 key with the same order as the float32 scores (-0.0 folded into +0.0)."""
    bits = (scores.float() + 0.0).view(torch.int32)
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)


def topk_items(scores: Tensor, k: int) -> Tensor:
    """Indices of the k best columns per row: score descending, ties -> lower index first."""
    n = scores.size(1)
    k = min(k, n)
    extra = 1 if k < n else 0
    vals, idx = scores.topk(k + extra, dim=1)  # sorted, descending
    if extra:
        # A tie across the cut exists iff the (k+1)-th best equals the k-th best.
        boundary = vals[:, k - 1] == vals[:, k]
        vals, idx = vals[:, :k], idx[:, :k]
        if bool(boundary.any()):
            rows = torch.nonzero(boundary).flatten()
            sub = scores[rows]
            col = torch.arange(n, device=sub.device, dtype=torch.int64)
            key = _ordered_int(sub) * (1 << 32) + ((1 << 31) - 1 - col)
            idx[rows] = key.topk(k, dim=1).indices
            vals[rows] = sub.gather(1, idx[rows])
    inner = (vals[:, 1:] == vals[:, :-1]).any(1) if k > 1 else torch.zeros(0, dtype=torch.bool)
    if bool(inner.any()):
        # Re-order tied runs inside the top k: ascending index, then a stable sort by score.
        rows = torch.nonzero(inner).flatten()
        v, i = vals[rows], idx[rows]
        by_index = i.argsort(dim=1)
        v, i = v.gather(1, by_index), i.gather(1, by_index)
        idx[rows] = i.gather(1, v.argsort(dim=1, descending=True, stable=True))
    return idx


@dataclass
class _Plan:
    """What does not change between epochs for one set of parts: who is ranked, in which
    batches, which train entries to mask in each batch, and the held-out lookup keys."""

    users: Tensor  # ranked users (union over parts), ascending
    batch: int
    train_pos: Tensor  # per masked train entry: row in ``users`` (sorted)
    train_items: Tensor
    bounds: Tensor  # train entries of batch b: bounds[b] .. bounds[b + 1]
    part_rows: dict[str, Tensor]  # part -> rows of ``users`` that have held-out items in it
    part_counts: dict[str, Tensor]
    part_keys: dict[str, Tensor]  # part -> sorted user * I + item
    group_masks: dict[str, Tensor] = field(default_factory=dict)  # group -> (I,) bool on the device
    group_counts: dict[tuple[str, str], Tensor] = field(default_factory=dict)  # (part, group) -> per part row
    excluded: Tensor | None = None  # items outside the candidates (scored -inf), on the device


class Evaluator:
    """Full-ranking evaluator for one split: train mask plus held-out parts (valid, test)."""

    def __init__(
        self,
        train: UserItems,
        heldout: dict[str, UserItems],
        num_items: int,
        ks: Sequence[int] = TOPKS,
        block_elements: int = 1 << 21,
        per_user_metrics_kept: Sequence[str] = ("recall@20", "ndcg@20"),
        item_groups: Mapping[str, Tensor] | None = None,
        candidates: Tensor | None = None,
    ):
        self.train = train
        self.heldout = heldout
        self.num_items = int(num_items)
        self.ks = tuple(sorted(ks))
        self.kmax = max(self.ks)
        self.block_elements = block_elements
        self.kept = tuple(per_user_metrics_kept)
        self.item_groups = {g: m.to(dtype=torch.bool).flatten() for g, m in (item_groups or {}).items()}
        for g, m in self.item_groups.items():
            if m.numel() != self.num_items:
                raise ValueError(f"item group {g!r}: mask has {m.numel()} entries for {self.num_items} items")
        # (I,) bool: the items that may be ranked (None: all); the others score -inf like train items
        self.candidates = None if candidates is None else candidates.to(dtype=torch.bool).flatten()
        if self.candidates is not None and self.candidates.numel() != self.num_items:
            raise ValueError(f"candidates: mask has {self.candidates.numel()} entries for {self.num_items} items")
        ranked = self.num_items if self.candidates is None else int(self.candidates.sum())
        # With fewer items than K the list is the whole catalog; missing ranks count as misses.
        self.depth = max(1, min(self.kmax, ranked))
        self._plans: dict[tuple, _Plan] = {}
        self.restricted_views: dict[str, "Evaluator"] = {}  # setting -> evaluator (pipeline.evaluation.settings)

    def restricted(self, candidates: Tensor) -> "Evaluator":
        """This split ranked over ``candidates`` only: the other items score -inf, and only
        held-out items among the candidates count (users with none are not evaluated)."""
        mask = candidates.to(device=self.train.items.device, dtype=torch.bool).flatten()
        heldout = {}
        for part, h in self.heldout.items():
            owner = torch.repeat_interleave(torch.arange(h.num_users, device=h.items.device), h.counts())
            keep = mask.to(h.items.device)[h.items]
            heldout[part] = UserItems.from_pairs(h.num_users, owner[keep], h.items[keep])
        return Evaluator(self.train, heldout, self.num_items, self.ks, self.block_elements, self.kept, candidates=mask)

    def to(self, device: torch.device | str) -> "Evaluator":
        self.train = self.train.to(device)
        self.heldout = {k: v.to(device) for k, v in self.heldout.items()}
        self.item_groups = {g: m.to(device) for g, m in self.item_groups.items()}
        self.candidates = None if self.candidates is None else self.candidates.to(device)
        self.restricted_views = {k: v.to(device) for k, v in self.restricted_views.items()}
        self._plans.clear()
        return self

    def _plan(self, parts: tuple[str, ...], device: torch.device) -> _Plan:
        key = (parts, str(device))
        if key in self._plans:
            return self._plans[key]
        n_items = self.num_items
        per_part_users = {p: self.heldout[p].users_with_items() for p in parts}
        users = torch.unique(torch.cat(list(per_part_users.values()))) if parts else torch.empty(0, dtype=torch.int64)
        batch = max(1, self.block_elements // max(1, n_items))
        # train entries of the ranked users, as (row in users, item), sorted by row
        entry_user = torch.repeat_interleave(torch.arange(self.train.num_users), self.train.counts().cpu()).to(
            self.train.items.device
        )
        pos = torch.searchsorted(users, entry_user).clamp_(max=max(users.numel() - 1, 0))
        keep = users[pos] == entry_user if users.numel() else torch.zeros_like(entry_user, dtype=torch.bool)
        train_pos, train_items = pos[keep], self.train.items[keep]  # already sorted by user
        starts = torch.arange(0, users.numel() + batch, batch)
        bounds = torch.searchsorted(train_pos, starts.to(train_pos.device))
        part_keys = {}
        for p in parts:
            h = self.heldout[p]
            owner = torch.repeat_interleave(torch.arange(h.num_users, device=h.items.device), h.counts())
            part_keys[p] = (owner * n_items + h.items).sort().values
        plan = _Plan(
            users=users.to(device),
            batch=batch,
            train_pos=train_pos.to(device),
            train_items=train_items.to(device),
            bounds=bounds.cpu(),
            part_rows={p: torch.searchsorted(users, u).to(device) for p, u in per_part_users.items()},
            part_counts={p: self.heldout[p].counts()[u].to(device) for p, u in per_part_users.items()},
            part_keys={p: k.to(device) for p, k in part_keys.items()},
            group_masks={g: m.to(device) for g, m in self.item_groups.items()},
            group_counts=self._group_counts(parts, per_part_users, device),
            excluded=None if self.candidates is None else torch.nonzero(~self.candidates).flatten().to(device),
        )
        self._plans[key] = plan
        return plan

    def _group_counts(
        self, parts: tuple[str, ...], per_part_users: dict[str, Tensor], device: torch.device
    ) -> dict[tuple[str, str], Tensor]:
        """(part, group) -> each evaluated user's number of held-out items in the group."""
        out = {}
        for p in parts:
            h = self.heldout[p]
            owner = torch.repeat_interleave(torch.arange(h.num_users, device=h.items.device), h.counts())
            for g, mask in self.item_groups.items():
                inside = mask.to(h.items.device)[h.items]
                counts = torch.bincount(owner[inside], minlength=h.num_users)
                out[(p, g)] = counts[per_part_users[p].to(counts.device)].to(device)
        return out

    @torch.no_grad()
    def evaluate(
        self,
        user_emb: Tensor,
        item_emb: Tensor,
        parts: Sequence[str] | None = None,
        rescore: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> dict[str, EvalResult]:
        """Rank every user with a held-out item. ``rescore(users, scores)`` may replace a user
        batch's raw scores before the masks (the mapped items' calibration,
        ``pipeline.evaluation.calibration``)."""
        parts = tuple(parts) if parts is not None else tuple(self.heldout)
        device = user_emb.device
        user_emb, item_emb = user_emb.float(), item_emb.float()
        n_items = self.num_items
        if item_emb.size(0) != n_items:
            raise ValueError(f"model returned {item_emb.size(0)} item embeddings for {n_items} items")
        plan = self._plan(parts, device)
        n = plan.users.numel()
        hits = {p: torch.zeros(n, self.kmax, dtype=torch.bool, device=device) for p in parts}
        in_group = {g: torch.zeros(n, self.kmax, dtype=torch.bool, device=device) for g in plan.group_masks}
        item_t = item_emb.T.contiguous()
        for b, start in enumerate(range(0, n, plan.batch)):
            users = plan.users[start : start + plan.batch]
            scores = user_emb[users] @ item_t
            if rescore is not None:
                scores = rescore(users, scores)
            lo, hi = int(plan.bounds[b]), int(plan.bounds[b + 1])
            flat = (plan.train_pos[lo:hi] - start) * n_items + plan.train_items[lo:hi]
            scores.view(-1)[flat] = float("-inf")
            if plan.excluded is not None:
                scores[:, plan.excluded] = float("-inf")
            top = topk_items(scores, self.depth)
            for g, mask in plan.group_masks.items():
                in_group[g][start : start + users.numel(), : self.depth] = mask[top]
            for p in parts:
                keys = plan.part_keys[p]
                query = users[:, None] * n_items + top
                at = torch.searchsorted(keys, query).clamp_(max=max(keys.numel() - 1, 0))
                hits[p][start : start + users.numel(), : self.depth] = keys[at] == query if keys.numel() else False
        out = {}
        for p in parts:
            rows = plan.part_rows[p]
            values = per_user_metrics(hits[p][rows], plan.part_counts[p], self.ks)
            out[p] = EvalResult(
                metrics=average(values),
                users=plan.users[rows].cpu().numpy(),
                per_user={name: values[name].cpu().numpy() for name in self.kept if name in values},
                heldout=int(plan.part_counts[p].sum()),
            )
            for g in plan.group_masks:
                self._group_metrics(out[p], hits[p][rows], in_group[g][rows], plan.group_counts[(p, g)], g)
        return out

    def _group_metrics(self, result: EvalResult, hits: Tensor, in_group: Tensor, counts: Tensor, group: str) -> None:
        """Add one item group's averages and per-user values (NaN: no held-out item in the group),
        and the share of the group's items in the users' top 20 (over every ranked user)."""
        has = counts > 0
        values = per_user_metrics((hits & in_group)[has], counts[has], self.ks)
        kept = [name for name in self.kept if name in values]
        shown = in_group[:, : min(SHARE_AT, self.depth)].float()
        result.groups[group] = GroupResult(
            metrics={name: (float(values[name].mean()) if int(has.sum()) else float("nan")) for name in kept},
            users=int(has.sum()),
            heldout=int(counts.sum()),
            top_share=float(shown.mean()) if shown.numel() else float("nan"),
        )
        mask = has.cpu().numpy()
        for name in kept:
            column = np.full(mask.size, np.nan)
            column[mask] = values[name].cpu().numpy()
            result.per_user[f"{group}/{name}"] = column


def evaluate_model(
    model: torch.nn.Module, evaluator: Evaluator, parts: Sequence[str] | None = None
) -> dict[str, EvalResult]:
    """Switch to eval mode, take the model's inference embeddings, rank, restore the mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), item_ids_masked(model, model.id_keep()):
            user_emb, item_emb = model.inference_embeddings()
        return evaluator.evaluate(user_emb, item_emb, parts)
    finally:
        model.train(was_training)
