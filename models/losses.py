"""Small loss pieces shared by the models.

- ``bpr_loss``: -mean log sigmoid(s_pos - s_neg) for score vectors.
- ``bpr_from_embeddings``: the same with s = <u, i> (row-wise dot products).
- ``bpr_gathered``: the same on rows gathered from two tables, fused (gradients scattered once).
- ``negative_cosine``: 1 - mean cosine(a, b), BM3's alignment term (optionally row-weighted).
- ``embedding_reg``: the L2-type regulariser in either form, chosen by a model's ``reg_form`` config field:
  ``"squared"`` = 0.5 * sum_t ||t||_F^2 / n (the LightGCN paper's and the reference's
  LATTICE / MGCN ``bpr_loss``), ``"norm"`` = sum_t ||t||_F / n (the reference's
  ``EmbLoss``: LightGCN, BM3). The two are different objectives for the same ``reg``: at
  trained embeddings the squared form of LightGCN's batch term was measured about 54x the
  norm form, so a ``reg`` taken from a reference grid means the same only in its form.
  ``counted_reg`` computes it from row counts instead of gathered rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

RegForm = Literal["squared", "norm"]
REG_FORMS: tuple[str, ...] = ("squared", "norm")


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    return -F.logsigmoid(pos_scores - neg_scores).mean()


def bpr_from_embeddings(users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    return bpr_loss((users * pos).sum(-1), (users * neg).sum(-1))


def embedding_reg(*tensors: Tensor, form: RegForm, batch_size: int | None = None) -> Tensor:
    """The L2-type regulariser in ``form`` (module docstring), divided by ``batch_size``
    (default: the rows of the last tensor, as the reference's ``EmbLoss``)."""
    n = batch_size if batch_size is not None else tensors[-1].size(0)
    if form == "squared":
        return 0.5 * sum(t.pow(2).sum() for t in tensors) / max(n, 1)
    if form == "norm":
        return sum(torch.linalg.vector_norm(t) for t in tensors) / max(n, 1)
    raise ValueError(f"reg_form must be one of {REG_FORMS}, got {form!r}")


COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's: each norm is clamped to at least this


class _NegativeCosine(torch.autograd.Function):
    """1 - (1/B) sum_r cos(a_r, b_r), cos = <a_r, b_r> / (max(|a_r|, eps) max(|b_r|, eps)), in few passes.

    Gradient, with n_a = max(|a_r|, eps), n_b likewise and k = -grad / B:
        d/da_r = k (b_r / (n_a n_b) - cos_r a_r / n_a^2)
    and symmetrically for b. Why not ``F.cosine_similarity``: it normalises both inputs and
    divides again in the backward, about ten (B x d) passes per call; BM3 calls it six times a
    batch (two of every three with a detached target), and a profile put its divisions at 17%
    of a movielens epoch. Here: three row reductions forward, two (B x d) passes per input
    that needs a gradient backward. Same values and gradients as ``F.cosine_similarity``
    (a test holds them, zero rows included); only rows with 0 < |x| < eps, which embeddings
    never reach, get a different (equally arbitrary) gradient at that kink."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, a: Tensor, b: Tensor, weights: Tensor | None) -> Tensor:  # type: ignore[override]
        na_c = torch.linalg.vector_norm(a, dim=-1).clamp(min=COSINE_EPS)
        nb_c = torch.linalg.vector_norm(b, dim=-1).clamp(min=COSINE_EPS)
        cos = (a * b).sum(-1) / (na_c * nb_c)
        ctx.save_for_backward(a, b, na_c, nb_c, cos, weights)
        return 1 - (cos.mean() if weights is None else (weights * cos).sum())

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        a, b, na_c, nb_c, cos, weights = ctx.saved_tensors
        k = -grad / max(cos.numel(), 1) if weights is None else -grad * weights
        cross = (k / (na_c * nb_c)).unsqueeze(-1)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = torch.addcmul(cross * b, (-k * cos / na_c.square()).unsqueeze(-1), a)
        if ctx.needs_input_grad[1]:
            gb = torch.addcmul(cross * a, (-k * cos / nb_c.square()).unsqueeze(-1), b)
        return ga, gb, None


def negative_cosine(a: Tensor, b: Tensor, weights: Tensor | None = None) -> Tensor:
    """1 - mean_r cos(a_r, b_r) over the rows (``F.cosine_similarity``'s values, fewer passes).

    ``weights`` (one per row, summing to 1): 1 - sum_r w_r cos(a_r, b_r) instead. A batch in
    which row j stands for c_j repeated pairs (BM3's item-only terms) is then computed once
    per distinct row with w_j = c_j / B: the same value as the repeated rows' mean."""
    if a.dim() != 2 or a.shape != b.shape:
        cos = F.cosine_similarity(a, b, dim=-1)
        return 1 - (cos.mean() if weights is None else (weights * cos).sum())
    return _NegativeCosine.apply(a, b, weights)


class _GatheredBPR(torch.autograd.Function):
    """BPR on rows gathered from two tables: -(1/B) sum_r log sigmoid(<U_ur, I_pr - I_nr>).

    With x_r = <U_ur, I_pr - I_nr> and s_r = -sigmoid(-x_r) grad / B, the gradients are
    scattered straight into the tables: dU += index_add(u, s (I_p - I_n)), dI +=
    index_add(p, s U_u) - index_add(n, s U_u). Why not ``bpr_from_embeddings(U[u], I[p], I[n])``:
    three gathers whose backward each fills a zero table and accumulates with
    ``index_put_`` (serial on CPU), plus five (B x d) elementwise passes; a LightGCN epoch
    on movielens spent about a fifth of its time there (``make bench-profile-epoch``)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, users_t: Tensor, items_t: Tensor, u: Tensor, p: Tensor, n: Tensor) -> Tensor:  # type: ignore[override]
        ur = users_t.index_select(0, u)
        diff = items_t.index_select(0, p) - items_t.index_select(0, n)
        x = (ur * diff).sum(-1)
        ctx.save_for_backward(ur, diff, x, u, p, n)
        ctx.sizes = (users_t.shape, items_t.shape)
        return -F.logsigmoid(x).mean()

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        ur, diff, x, u, p, n = ctx.saved_tensors
        s = (torch.sigmoid(-x) * (-grad / max(x.numel(), 1))).unsqueeze(-1)
        g_users = g_items = None
        if ctx.needs_input_grad[0]:
            g_users = ur.new_zeros(ctx.sizes[0]).index_add_(0, u, s * diff)
        if ctx.needs_input_grad[1]:
            su = s * ur  # two scatters, not one over cat([p, n]) and cat([su, -su]): -5.5% of a LightGCN epoch
            g_items = ur.new_zeros(ctx.sizes[1]).index_add_(0, p, su).index_add_(0, n, su, alpha=-1)
        return g_users, g_items, None, None, None


def bpr_gathered(users_t: Tensor, items_t: Tensor, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """``bpr_from_embeddings(users_t[users], items_t[pos], items_t[neg])``, fused (same value and gradients)."""
    return _GatheredBPR.apply(users_t, items_t, users, pos, neg)


def counted_reg(pairs: Sequence[tuple[Tensor, Tensor]], form: RegForm, batch_size: int | None = None) -> Tensor:
    """``embedding_reg(table[index] for table, index in pairs)`` without gathering: with c_i the
    times row i occurs in an index, ||table[index]||_F^2 = sum_i c_i ||table_i||^2, so both forms
    (and their gradients, c_i table_i up to a factor) come from one pass over each table. Same
    value as the gathered form up to float summation order."""
    n = batch_size if batch_size is not None else pairs[-1][1].numel()
    sq = [
        (torch.bincount(index, minlength=table.size(0)).to(table.dtype) * table.pow(2).sum(-1)).sum()
        for table, index in pairs
    ]
    if form == "squared":
        return 0.5 * sum(sq) / max(n, 1)
    if form == "norm":
        return sum(s.sqrt() for s in sq) / max(n, 1)
    raise ValueError(f"reg_form must be one of {REG_FORMS}, got {form!r}")
