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


def negative_cosine(a: Tensor, b: Tensor) -> Tensor:
    return 1 - F.cosine_similarity(a, b, dim=-1).mean()
