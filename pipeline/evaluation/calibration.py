"""Scores of mapped items made comparable with the warm items' (per-user quantile calibration).

A content mapper (``models.content_mapper``) gives an item without behaviour a
representation f(x_c), and the user's raw score z_u . f(x_c) is on the mapper's scale, not
on the scale of the scores z_u . h_w the model gives warm items. Ranked together raw, either
the mapped items never show (the cold R@20 of 0 befa measured before) or they crowd warm
items out.

The calibration is learned on **held-out warm items** (``calib``: warm items the mapper did
not train on, ``pipeline.training.mapping``), where both scores exist and the mapper's is
as uncertain as it is for a new item. Per user u, F_u^mapped is the distribution of the
mapper's scores z_u . f(x_w) over them and Q_u^true the quantile function of the model's
z_u . h_w. A mapped item's raw score s is placed at its quantile q = F_u^mapped(s) and given

- ``quantile`` mode: the user's true score at the same quantile, Q_u^true(q): a new item
  ranks where a warm item the mapper scores alike would rank if the mapper were right;
- ``expected`` mode (relevance's fallback): the user's true score at g(q), where g(q) is the
  mean TRUE quantile of the held-out warm items whose mapped quantile is q (pooled over users,
  50 bins, made non-decreasing). This is regression to the mean: a mapper that ranks held-out
  warm items poorly gets its new items pulled toward the middle of the list (measured on
  MovieLens: no new item ever reaches a top 20, which needs q > 0.988). A perfect mapper
  gives g(q) = q.
- ``relevance`` mode (default where the run's ``mapping.json`` has its curves): the score at
  which the item's estimated probability of being relevant, p_new(q), equals a warm item's
  at that rank, p_warm(r), both learned on the VALID part (``pipeline.evaluation.relevance``
  has the equations, ``relevance_fit`` the estimation). A new item enters a top 20 only when
  it is likelier a hit than the warm item it displaces.

``quantile`` and ``expected`` are piecewise linear between ``levels`` quantiles, clamped at
the ends; ``relevance`` is strictly increasing in the raw mapped score. All are monotone per
user: one user's mapped items keep their order among themselves (the cold setting's ranking
is unchanged by calibration), and warm items keep their scores and order.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from pipeline.evaluation.evaluator import UserItems
from pipeline.evaluation.relevance import RelevanceCurves, relevance_scores, warm_ladder

LEVELS = 101  # quantile levels per user (0, 1, ..., 100 percent)
BINS = 50  # bins of the mapped quantile for the expected mode's g
Mode = Literal["relevance", "expected", "quantile"]


def _row_quantiles(scores: Tensor, levels: int) -> Tensor:
    """(B, L): each row's quantiles at ``levels`` evenly spaced levels (sorted-order statistics)."""
    ordered = scores.sort(dim=1).values
    at = torch.linspace(0, scores.size(1) - 1, levels, device=scores.device).round().long()
    return ordered[:, at]


def _rank_quantiles(scores: Tensor) -> Tensor:
    """(B, n): each entry's rank in its row as a quantile in [0, 1]."""
    n = scores.size(1)
    return scores.argsort(dim=1).argsort(dim=1).float() / max(n - 1, 1)


def _level_at(table: Tensor, values: Tensor) -> Tensor:
    """(B, n) fractional positions q in [0, 1] of ``values`` in the rows' quantile tables."""
    hi = torch.searchsorted(table, values.contiguous()).clamp(1, table.size(1) - 1)
    lo = hi - 1
    x0, x1 = table.gather(1, lo), table.gather(1, hi)
    t = ((values - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0, 1)
    return (lo.float() + t) / (table.size(1) - 1)


def _value_at(table: Tensor, q: Tensor) -> Tensor:
    """(B, n) the rows' quantile tables read at fractional positions q, linearly."""
    pos = q.clamp(0, 1) * (table.size(1) - 1)
    lo = pos.floor().long().clamp(max=table.size(1) - 2)
    t = pos - lo.float()
    return table.gather(1, lo) * (1 - t) + table.gather(1, lo + 1) * t


class QuantileCalibration:
    """Per-user quantile tables learned on held-out warm items; ``rescore`` applies them."""

    def __init__(
        self,
        user_emb: Tensor,
        item_emb: Tensor,
        mapped_emb: Tensor,
        calib: Tensor,
        new: Tensor,
        mode: Mode = "expected",
        levels: int = LEVELS,
        block_elements: int = 1 << 22,
        mapped_users: Tensor | None = None,
    ):
        """``item_emb``: the model's item representations; ``mapped_emb``: f(x) for every item;
        ``calib``: (I,) bool, held-out warm items the tables are learned from; ``new``: (I,) bool,
        the items whose scores ``rescore`` replaces (their rows of ``item_emb`` are ignored).
        ``mapped_users``: the user side of the raw mapped score, ``mapped_users_u . mapped_emb_i``
        (default ``user_emb``; the content floor's blend widens both, ``content_blend``)."""
        if int(calib.sum()) < 2:
            raise ValueError("calibration needs at least 2 held-out warm items")
        self.mode = mode
        self.mapped_users = user_emb if mapped_users is None else mapped_users
        self.new = new.to(device=user_emb.device, dtype=torch.bool)
        self.mapped_new = mapped_emb[self.new.to(mapped_emb.device)].float().to(user_emb.device)
        true_c = item_emb[calib].float().T.contiguous()
        mapped_c = mapped_emb[calib].float().T.contiguous().to(user_emb.device)
        step = max(1, block_elements // int(calib.sum()))
        true_q, mapped_q = [], []
        sums, counts = torch.zeros(BINS), torch.zeros(BINS)
        for start in range(0, user_emb.size(0), step):
            z = user_emb[start : start + step].float()
            t, m = z @ true_c, self.mapped_users[start : start + step].float() @ mapped_c
            true_q.append(_row_quantiles(t, levels))
            mapped_q.append(_row_quantiles(m, levels))
            b = (_rank_quantiles(m) * (BINS - 1)).round().long().flatten().cpu()
            sums += torch.bincount(b, weights=_rank_quantiles(t).flatten().cpu(), minlength=BINS)
            counts += torch.bincount(b, minlength=BINS).float()
        self.true_q, self.mapped_q = torch.cat(true_q), torch.cat(mapped_q)
        levels_mid = torch.linspace(0, 1, BINS)
        expected = torch.where(counts > 0, sums / counts.clamp(min=1), levels_mid)
        self.g = torch.cummax(expected, dim=0).values.to(user_emb.device)  # non-decreasing
        self.user_emb = user_emb
        self.relevance: RelevanceCurves | None = None
        self.train: UserItems | None = None

    def use_relevance(self, curves: RelevanceCurves, train: UserItems) -> None:
        """Enable ``relevance`` mode: its curves, and the train positives its warm ranks mask."""
        self.relevance, self.train = curves, train.to(self.user_emb.device)

    def position(self, users: Tensor, raw: Tensor) -> Tensor:
        """(B, n) float64 quantiles of raw mapped scores in the users' tables, extended linearly
        beyond them (below 0, above 1, by the table's range), so strictly increasing in ``raw``."""
        table = self.mapped_q[users].double()
        raw = raw.double()
        lo, hi = table[:, :1], table[:, -1:]
        spread = (hi - lo).clamp(min=1e-12)
        q = _level_at(table, raw.clamp(lo, hi))
        return q + (raw - hi).clamp(min=0) / spread - (lo - raw).clamp(min=0) / spread

    def calibrate(self, users: Tensor, raw: Tensor) -> Tensor:
        """(B, n) raw mapped scores of ``users`` -> the same on the users' true-score scale."""
        if self.mode == "relevance":
            raise ValueError("relevance mode places items among the users' warm scores: use rescore")
        q = _level_at(self.mapped_q[users], raw)
        if self.mode == "expected":
            pos = q * (BINS - 1)
            lo = pos.floor().long().clamp(max=BINS - 2)
            t = pos - lo.float()
            q = self.g[lo] * (1 - t) + self.g[lo + 1] * t
        return _value_at(self.true_q[users], q)

    def rescore(self, users: Tensor, scores: Tensor) -> Tensor:
        """The evaluator's hook: the new items' columns replaced by their calibrated scores."""
        raw = self.mapped_users[users].float() @ self.mapped_new.T
        if self.mode == "relevance":
            if self.relevance is None or self.train is None:
                raise ValueError("relevance calibration needs its curves (use_relevance)")
            ladder = warm_ladder(scores, ~self.new, self.train.rows(users), self.relevance.k)
            calibrated = relevance_scores(self.relevance, self.position(users, raw), ladder)
        else:
            calibrated = self.calibrate(users, raw)
        scores[:, self.new] = calibrated.to(scores.dtype)
        return scores
