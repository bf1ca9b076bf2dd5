"""Small loss pieces shared by the models.

- ``bpr_loss``: -mean log sigmoid(s_pos - s_neg) for score vectors.
- ``bpr_from_embeddings``: the same with s = <u, i> (row-wise dot products).
- ``negative_cosine``: 1 - mean cosine(a, b), BM3's alignment term.
- ``embedding_reg``: the L2-type regulariser in either form, chosen by a model's ``reg_form`` config field:
  ``"squared"`` = 0.5 * sum_t ||t||_F^2 / n (the LightGCN paper's and the reference's
  LATTICE / MGCN ``bpr_loss``), ``"norm"`` = sum_t ||t||_F / n (the reference's
  ``EmbLoss``: LightGCN, BM3). The two are different objectives for the same ``reg``: at
  trained embeddings the squared form of LightGCN's batch term was measured about 54x the
  norm form, so a ``reg`` taken from a reference grid means the same only in its form.
"""

from __future__ import annotations

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
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        na_c = torch.linalg.vector_norm(a, dim=-1).clamp(min=COSINE_EPS)
        nb_c = torch.linalg.vector_norm(b, dim=-1).clamp(min=COSINE_EPS)
        cos = (a * b).sum(-1) / (na_c * nb_c)
        ctx.save_for_backward(a, b, na_c, nb_c, cos)
        return 1 - cos.mean()

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        a, b, na_c, nb_c, cos = ctx.saved_tensors
        k = -grad / max(cos.numel(), 1)
        cross = (k / (na_c * nb_c)).unsqueeze(-1)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = torch.addcmul(cross * b, (-k * cos / na_c.square()).unsqueeze(-1), a)
        if ctx.needs_input_grad[1]:
            gb = torch.addcmul(cross * a, (-k * cos / nb_c.square()).unsqueeze(-1), b)
        return ga, gb


def negative_cosine(a: Tensor, b: Tensor) -> Tensor:
    """1 - mean_r cos(a_r, b_r) over the rows (``F.cosine_similarity``'s values, fewer passes)."""
    if a.dim() != 2 or a.shape != b.shape:
        return 1 - F.cosine_similarity(a, b, dim=-1).mean()
    return _NegativeCosine.apply(a, b)
