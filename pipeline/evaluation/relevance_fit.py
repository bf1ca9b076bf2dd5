"""Estimating the relevance calibration's curves (``pipeline.evaluation.relevance``) on the
VALID part of a split, at mapping time (``pipeline.training.mapping``). Only valid positives
are read: the test part stays for honest evaluation of every calibration mode.

Pooled over the users with at least one valid positive, per user block:

- warm: the user's scores for every warm item (the model's own representations), train
  positives masked as the evaluator masks them, the top K; a hit at rank r counts towards
  p_warm(r) = hits(r) / users with a candidate at rank r;
- new: the population's raw mapped scores, placed at their quantile q in the user's table
  (``QuantileCalibration.position``), binned on 1 - q; p_new(b) = hits(b) / pairs in b. The
  population is the items without behaviour when valid has positives on them (source
  ``cold``: the very items the cold-items split serves), else the held-out warm calibration
  items scored through the mapper (``calib``: pseudo-new; pairs that are train positives are
  left out, as the evaluator would mask them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.evaluation.calibration import QuantileCalibration
from pipeline.evaluation.evaluator import UserItems
from pipeline.evaluation.relevance import BIN_EDGES, K, RelevanceCurves, bin_index, curves_from_counts


def _pair_keys(table: UserItems, num_items: int, device: torch.device) -> Tensor:
    """Sorted user * I + item keys of a user -> items table."""
    owner = torch.repeat_interleave(torch.arange(table.num_users, device=table.items.device), table.counts())
    return (owner * num_items + table.items).to(device).sort().values


def _member(keys: Tensor, query: Tensor) -> Tensor:
    """Whether each query key is among the sorted ``keys``."""
    if keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    at = torch.searchsorted(keys, query.contiguous()).clamp(max=keys.numel() - 1)
    return keys[at] == query


@torch.no_grad()
def fit_relevance(
    calibration: QuantileCalibration,
    item_emb: Tensor,
    mapped_emb: Tensor,
    warm: Tensor,
    calib: Tensor,
    train: UserItems,
    valid: UserItems,
    k: int = K,
    block_elements: int = 1 << 21,
) -> RelevanceCurves | None:
    """p_warm and p_new from the valid positives (module docstring); None when valid has none
    or there are no warm items. ``calibration`` supplies the per-user quantile tables and the
    items without behaviour (``calibration.new``)."""
    device = calibration.user_emb.device
    num_items = item_emb.size(0)
    warm, calib = warm.to(device=device, dtype=torch.bool), calib.to(device=device, dtype=torch.bool)
    users = valid.users_with_items().to(device)
    warm_idx = warm.nonzero().flatten()
    if users.numel() == 0 or warm_idx.numel() == 0:
        return None
    valid_keys, train_keys = _pair_keys(valid, num_items, device), _pair_keys(train, num_items, device)
    on_new = torch.bincount(valid.items.to(device), minlength=num_items)[:num_items] > 0
    source = "cold" if bool((on_new & calibration.new).any()) else "calib"
    pop_idx = (calibration.new if source == "cold" else calib).nonzero().flatten()
    k = min(k, warm_idx.numel())
    bins = len(BIN_EDGES) - 1
    warm_hits = torch.zeros(k, dtype=torch.float64, device=device)
    warm_counts = torch.zeros_like(warm_hits)
    new_hits, new_counts = torch.zeros(bins, dtype=torch.float64), torch.zeros(bins, dtype=torch.float64)
    true_w = item_emb[warm_idx].float().T.contiguous().to(device)
    mapped_p = mapped_emb[pop_idx].float().T.contiguous().to(device)
    step = max(1, block_elements // max(1, warm_idx.numel() + pop_idx.numel()))
    for start in range(0, users.numel(), step):
        u = users[start : start + step]
        z = calibration.user_emb[u].float()
        scores = z @ true_w
        scores[_member(train_keys, u[:, None] * num_items + warm_idx[None, :])] = float("-inf")
        values, top = scores.topk(k, dim=1)
        finite = torch.isfinite(values)
        hit = _member(valid_keys, u[:, None] * num_items + warm_idx[top]) & finite
        warm_hits += hit.sum(0).double()
        warm_counts += finite.sum(0).double()
        if pop_idx.numel() == 0:
            continue
        query = u[:, None] * num_items + pop_idx[None, :]
        keep = ~_member(train_keys, query)
        raw = calibration.mapped_users[u].float() @ mapped_p
        b = bin_index(calibration.position(u, raw))[keep].cpu()  # q beyond [0, 1] has bins of its own
        new_hits += torch.bincount(b, weights=_member(valid_keys, query)[keep].double().cpu(), minlength=bins)
        new_counts += torch.bincount(b, minlength=bins).double()
    return curves_from_counts(
        [int(h) for h in warm_hits.tolist()],
        [int(c) for c in warm_counts.tolist()],
        [int(h) for h in new_hits.tolist()],
        [int(c) for c in new_counts.tolist()],
        source,
        int(users.numel()),
    )
