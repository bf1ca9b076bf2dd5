"""Relevance-matched calibration of mapped items' scores: the curves and the placement.

A mapped (new) item is placed, per user, where its estimated probability of being relevant
equals a warm item's at that rank. It then enters a user's top 20 only when it is likelier a
hit than the warm item it displaces, which maximises the expected hits of the list; warm items
lose only low-probability places, and keep their scores and order.

Two curves, learned at mapping time on the VALID part of the split (the test part stays for
honest evaluation; ``pipeline.evaluation.relevance_fit``), pooled over the users with a valid
positive:

- p_warm(r), r = 1..K (K = 200): the share of (user u, warm item at rank r among u's warm
  candidates, train positives masked as the evaluator masks them) that are valid positives,

      p_warm(r) = sum_u [w_u(r) in V_u] / #{u : u has a warm candidate at rank r},

  made non-increasing in r by pool-adjacent-violators (PAV, weighted by the counts);
- p_new(b): per bin b of the mapped item's per-user quantile q (``QuantileCalibration``'s
  per-user tables of the mapper's scores on held-out warm items), the share of (user, mapped
  item in bin b) that are valid positives, made non-decreasing in q by PAV. The bins lie on
  1 - q, fine near q = 1 and beyond it (``BIN_EDGES``). The population is the split's items without
  behaviour when the valid part has positives on them (``source = "cold"``: the population
  served), else the held-out warm calibration items scored through the mapper (``"calib"``,
  pseudo-new, their train positives masked).

Placement, per user u with warm scores s_1 > s_2 > ... > s_K (u's top-K warm scores, train
positives masked; a user with fewer candidates has the ladder extended downwards by its mean
step): a mapped item with raw score z_u . f(x) gets q, then p = p_new(q) (linear between the
bins' centres), then a fractional warm rank

    r*(p) = j + t,  p_warm(j) >= p > p_warm(j + 1),  t = (p_warm(j) - p) / (p_warm(j) - p_warm(j + 1))

and the score s_j + t' (s_{j+1} - s_j), strictly between the warm items j and j + 1.
(With a warm budget, p is scale * p_new(q), scale <= 1 fitted on valid so that the warm items
lose at most the budget of their Recall@20: ``RelevanceCurves.scale``.) An item
as likely as a warm item goes below it (ties favour the warm item). Above rank 1 (p >
p_warm(1)) the score is s_1 + gap * u, below rank K (p <= p_warm(K)) it is s_K - gap * v,
with gap the user's mean step (s_1 - s_K) / (K - 1) and u, v in (0, 1) growing with the
distance in p. Inside a cell no warm item lies, so t' = (1 - RHO) t + RHO (1 - sigma(q))
(sigma a strictly increasing squash of q, extended beyond the calibration range) keeps the
mapped items strictly in the order of their raw scores, also where p_new is flat.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from pydantic import BaseModel, Field
from torch import Tensor

K = 200  # warm ranks p_warm is learned for
# on 1 - q, ascending; the negative edges hold items scored above every calibration item of the user
# (the extended q > 1 of ``QuantileCalibration.position``), so the best new items are told apart instead
# of sharing the top bin's rate (they would enter a list together, all or none)
BIN_EDGES: tuple[float, ...] = (
    -1.0, -0.3, -0.1, -0.03, 0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0
)  # fmt: skip
RHO = 0.5  # share of a cell's position given to the raw-score order (tie-break; never crosses a warm item)
EPS = 1e-12


class RelevanceCurves(BaseModel):
    """What ``relevance`` mode needs, stored in ``mapping.json`` (``MappedMethod.relevance``)."""

    k: int  # warm ranks: p_warm[r - 1] is p_warm(r)
    bin_edges: list[float] = Field(default_factory=lambda: list(BIN_EDGES))  # on 1 - q, ascending
    source: Literal["cold", "calib"]  # p_new's population: the split's cold items, or held-out warm items
    users: int  # users with a valid positive, pooled over
    p_warm: list[float]  # non-increasing in r
    warm_hits: list[int]  # valid positives at each rank
    warm_counts: list[int]  # users with a warm candidate at each rank
    p_new: list[float]  # per bin (bin 0: q nearest 1), non-decreasing in q
    new_hits: list[int]
    new_counts: list[int]
    # p_new is read as scale * p_new: the largest scale in [0, 1] whose VALID hybrid warm Recall@20
    # stays within warm_budget of the list without new items (``pipeline.training.mapping``);
    # 1 and None in records written before the budget
    scale: float = 1.0
    warm_budget: float | None = None


def pav(values: Sequence[float], weights: Sequence[float], increasing: bool = True) -> list[float]:
    """Weighted pool-adjacent-violators: the closest monotone sequence in least squares. An
    entry of zero weight takes the value before it (the first fitted value when leading), which
    keeps the sequence monotone."""
    keep = [i for i, w in enumerate(weights) if w > 0]
    if not keep:
        return [0.0] * len(values)
    sign = 1.0 if increasing else -1.0
    blocks: list[tuple[float, float, int]] = []  # (signed mean, weight, entries)
    for i in keep:
        blocks.append((sign * float(values[i]), float(weights[i]), 1))
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append(((m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2))
    fitted = dict(zip(keep, (sign * m for m, _, n in blocks for _ in range(n))))
    out, last = [], fitted[keep[0]]
    for i in range(len(values)):
        last = fitted.get(i, last)
        out.append(last)
    return out


def curves_from_counts(
    warm_hits: Sequence[int],
    warm_counts: Sequence[int],
    new_hits: Sequence[int],
    new_counts: Sequence[int],
    source: Literal["cold", "calib"],
    users: int,
    bin_edges: Sequence[float] = BIN_EDGES,
) -> RelevanceCurves:
    """The two hit rates, made monotone (p_warm non-increasing in rank, p_new non-decreasing in q)."""
    rate = [h / c if c else 0.0 for h, c in zip(warm_hits, warm_counts)]
    p_warm = pav(rate, warm_counts, increasing=False)
    new_rate = [h / c if c else 0.0 for h, c in zip(new_hits, new_counts)]
    p_new = pav(new_rate, new_counts, increasing=False)  # bin 0 is q near 1: non-increasing in the bin index
    return RelevanceCurves(
        k=len(p_warm),
        bin_edges=[float(e) for e in bin_edges],
        source=source,
        users=int(users),
        p_warm=p_warm,
        warm_hits=[int(h) for h in warm_hits],
        warm_counts=[int(c) for c in warm_counts],
        p_new=p_new,
        new_hits=[int(h) for h in new_hits],
        new_counts=[int(c) for c in new_counts],
    )


def bin_index(q: Tensor, bin_edges: Sequence[float] = BIN_EDGES) -> Tensor:
    """The bin of each (extended) quantile q (bins on 1 - q, clamped to the edges' range; bin 0
    holds the largest q)."""
    inner = torch.tensor(bin_edges[1:-1], dtype=q.dtype, device=q.device)
    return torch.bucketize((1 - q).clamp(bin_edges[0], bin_edges[-1]).contiguous(), inner, right=True)


def squash(q: Tensor) -> Tensor:
    """A strictly increasing map of an extended quantile (q < 0 or > 1 beyond the calibration
    items' range) into (0, 1): q itself, squeezed, inside [0, 1]."""
    below, above = (-q).clamp(min=0), (q - 1).clamp(min=0)
    ext = q.clamp(0, 1) + above / (1 + above) - below / (1 + below)  # in (-1, 2)
    return (ext + 1) / 3


def new_probability(curves: RelevanceCurves, q: Tensor) -> Tensor:
    """p_new read at quantiles q (float64), linear between the bins' centres, flat beyond them."""
    edges = torch.tensor(curves.bin_edges, dtype=torch.float64, device=q.device)
    centres = (edges[:-1] + edges[1:]) / 2  # ascending in 1 - q
    values = torch.tensor(curves.p_new, dtype=torch.float64, device=q.device)
    u = (1 - q.double()).clamp(float(centres[0]), float(centres[-1])).contiguous()
    if centres.numel() == 1:
        return values[0].expand_as(u).clone()
    hi = torch.searchsorted(centres, u).clamp(1, centres.numel() - 1)
    lo = hi - 1
    t = (u - centres[lo]) / (centres[hi] - centres[lo])
    return values[lo] * (1 - t) + values[hi] * t


def warm_ladder(scores: Tensor, warm: Tensor, masked: tuple[Tensor, Tensor], k: int) -> Tensor:
    """(B, k) float64: each row's top-k warm scores, descending, the ``masked`` (row, item)
    entries (train positives) left out; a row with fewer candidates is extended downwards by
    its mean step (1 when it has fewer than 2), so every entry is finite and strictly falling."""
    warm_cols = warm.nonzero().flatten()
    column = torch.full((scores.size(1),), -1, dtype=torch.int64, device=scores.device)
    column[warm_cols] = torch.arange(warm_cols.numel(), device=scores.device)
    block = scores[:, warm_cols].double()
    row, item = masked
    col = column[item]
    block[row[col >= 0], col[col >= 0]] = float("-inf")
    top = block.topk(min(k, block.size(1)), dim=1).values
    if top.size(1) < k:
        top = torch.cat([top, top.new_full((top.size(0), k - top.size(1)), float("-inf"))], dim=1)
    finite = torch.isfinite(top)
    count = finite.sum(1)
    first = torch.where(count > 0, top[:, 0], torch.zeros_like(top[:, 0]))
    last = top.gather(1, (count - 1).clamp(min=0)[:, None]).squeeze(1)
    last = torch.where(count > 0, last, first)
    step = torch.where(count > 1, (first - last) / (count - 1).clamp(min=1), torch.ones_like(first))
    step = torch.where(step > 0, step, first.abs().clamp(min=1.0) * 1e-3)
    beyond = torch.arange(k, device=top.device)[None, :] - (count - 1)[:, None]  # >= 1 past the last finite entry
    return torch.where(finite, top, last[:, None] - step[:, None] * beyond.double())


def relevance_scores(curves: RelevanceCurves, q: Tensor, ladder: Tensor) -> Tensor:
    """(B, n) float64 scores of mapped items on their users' warm scale: ``q`` (B, n) their
    extended quantiles (strictly increasing in the raw mapped score), ``ladder`` (B, K) the
    users' ``warm_ladder``. See the module docstring for the equations."""
    k = ladder.size(1)
    p_warm = torch.tensor(curves.p_warm[:k], dtype=torch.float64, device=q.device)
    if p_warm.numel() < k:  # a user ladder longer than the curve: the curve's last value continues
        p_warm = torch.cat([p_warm, p_warm[-1:].expand(k - p_warm.numel())])
    p = new_probability(curves, q) * curves.scale
    tie = 1 - squash(q.double())  # in (0, 1), strictly decreasing in q
    idx = torch.searchsorted(-p_warm, -p.contiguous(), right=True)  # number of warm ranks with p_warm >= p
    gap = torch.maximum((ladder[:, 0] - ladder[:, -1]) / max(k - 1, 1), 1e-6 * (ladder[:, 0].abs() + 1))[:, None]
    j = (idx - 1).clamp(0, k - 1)
    nxt = idx.clamp(max=k - 1)
    drop = (p_warm[j] - p_warm[nxt]).clamp(min=EPS)
    t = ((p_warm[j] - p) / drop).clamp(0, 1)
    t = (1 - RHO) * t + RHO * tie
    s_j, s_next = ladder.gather(1, j), ladder.gather(1, nxt)
    inside = s_j + t * (s_next - s_j)
    x_top = (p - p_warm[0]).clamp(min=0) / max(float(p_warm[0]), EPS)
    above = ladder[:, :1] + gap * ((1 - RHO) * x_top / (1 + x_top) + RHO * (1 - tie))
    x_low = (p_warm[-1] - p).clamp(min=0) / max(float(p_warm[-1]), EPS)
    below = ladder[:, -1:] - gap * ((1 - RHO) * x_low / (1 + x_low) + RHO * tie)
    return torch.where(idx == 0, above, torch.where(idx >= k, below, inside))
