"""Top-K ranking metrics (spec section 1), per user, from a hit matrix.

The evaluator turns each evaluated user's top-K list into one row of ``hits``
(``hits[u, r] = 1`` when the item at rank r + 1 is one of the user's held-out items)
and counts the user's held-out items ``n``. Then, for K in {5, 10, 20, 50}:

- Recall@K    = sum_{r<=K} hit(r) / n                     (denominator n, not min(n, K))
- Precision@K = sum_{r<=K} hit(r) / K
- NDCG@K      = sum_{r<=K} hit(r) / log2(r + 1)  /  sum_{r=1}^{min(n, K)} 1 / log2(r + 1)
- MAP@K       = 1 / min(n, K) * sum_{r<=K} Precision@r * hit(r)

Users with n = 0 are not evaluated (the averages run over users with >= 1 held-out
item). The spec's example: user a has held-out {x, y, z} and ranks x 1st, y 3rd;
user b has held-out {w} ranked 1st: Recall@4 = (2/3 + 1) / 2 = 0.8333.

Per item group (warm, cold, long tail; ``pipeline.evaluation.groups``) the same formulas
apply to a restricted hit matrix: hit(r) counts only held-out items of the group, n is
the user's number of held-out items in the group, users with n = 0 in the group are
skipped, and r stays the rank in the full ranking over all items. Example: held-out
{x (cold), y (warm)}, x ranked 2nd, y 1st: cold Recall@20 = 1/1, cold NDCG@20 =
(1/log2 3) / 1 = 0.6309; warm NDCG@20 = 1.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

TOPKS: tuple[int, ...] = (5, 10, 20, 50)
METRICS: tuple[str, ...] = ("recall", "ndcg", "precision", "map")
SELECTION_METRIC = "recall@20"  # early stopping and grid selection (on VALID only)


def metric_names(ks: Sequence[int] = TOPKS) -> list[str]:
    return [f"{m}@{k}" for m in METRICS for k in ks]


def per_user_metrics(hits: Tensor, n_heldout: Tensor, ks: Sequence[int] = TOPKS) -> dict[str, Tensor]:
    """Per-user metric values (float64) for every ``metric@K``.

    hits: (N, K_max) bool/0-1, row u = top-K_max list of user u against its held-out set;
    n_heldout: (N,) int, every entry >= 1. Works on any device.
    """
    if hits.dim() != 2:
        raise ValueError(f"hits must be (users, K), got shape {tuple(hits.shape)}")
    kmax = hits.size(1)
    if max(ks) > kmax:
        raise ValueError(f"hits has {kmax} ranks, metrics ask for K = {max(ks)}")
    n = n_heldout.to(device=hits.device, dtype=torch.float64)
    if n.numel() != hits.size(0):
        raise ValueError(f"{hits.size(0)} hit rows but {n.numel()} held-out counts")
    if bool((n < 1).any()):
        raise ValueError("per_user_metrics: users with no held-out item must be left out before scoring")
    h = hits.to(torch.float64)
    ranks = torch.arange(1, kmax + 1, device=h.device, dtype=torch.float64)
    discount = 1.0 / torch.log2(ranks + 1.0)
    cum_hits = h.cumsum(1)
    dcg = (h * discount).cumsum(1)
    ideal = discount.cumsum(0)  # ideal[j] = sum_{r<=j+1} 1/log2(r+1)
    prec_at_r = cum_hits / ranks
    ap_sum = (prec_at_r * h).cumsum(1)
    out: dict[str, Tensor] = {}
    for k in ks:
        hk = cum_hits[:, k - 1]
        cap = torch.clamp(n, max=k)
        cap_idx = cap.long() - 1
        out[f"recall@{k}"] = hk / n
        out[f"ndcg@{k}"] = dcg[:, k - 1] / ideal[cap_idx]
        out[f"precision@{k}"] = hk / k
        out[f"map@{k}"] = ap_sum[:, k - 1] / cap
    return out


def average(per_user: dict[str, Tensor]) -> dict[str, float]:
    """Mean over users (all rows given are users with >= 1 held-out item)."""
    return {name: (float(v.mean()) if v.numel() else float("nan")) for name, v in per_user.items()}


def hits_from_rankings(
    ranked: Sequence[Sequence[object]], heldout: Sequence[Iterable[object]], kmax: int
) -> tuple[Tensor, Tensor]:
    """Hit matrix from explicit ranked lists (any hashable ids). For tests and small checks.

    Lists shorter than ``kmax`` are padded with misses."""
    rows = []
    counts = []
    for lst, truth in zip(ranked, heldout, strict=True):
        truth = set(truth)
        row = [item in truth for item in list(lst)[:kmax]]
        rows.append(row + [False] * (kmax - len(row)))
        counts.append(len(truth))
    return torch.tensor(rows, dtype=torch.bool).reshape(len(rows), kmax), torch.tensor(counts, dtype=torch.int64)


def ranking_metrics(
    ranked: Sequence[Sequence[object]], heldout: Sequence[Iterable[object]], ks: Sequence[int] = TOPKS
) -> dict[str, float]:
    """Averaged metrics of explicit ranked lists; users with an empty held-out set are skipped."""
    keep = [i for i, t in enumerate(heldout) if len(set(t)) > 0]
    hits, n = hits_from_rankings([ranked[i] for i in keep], [heldout[i] for i in keep], max(ks))
    return average(per_user_metrics(hits, n, ks))


def to_numpy(per_user: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in per_user.items()}
