"""Small loss pieces shared by the models.

- ``bpr_loss``: -mean log sigmoid(s_pos - s_neg) for score vectors.
- ``bpr_from_embeddings``: the same with s = <u, i> (row-wise dot products).
- ``l2_per_batch``: 0.5 * sum of squared entries / batch size (LightGCN, LATTICE, MGCN "L2/batch").
- ``norm_reg``: sum of Frobenius norms / rows of the last tensor (the reference toolbox's
  ``EmbLoss``, used by BM3 on the full user and item tables: / I).
- ``negative_cosine``: 1 - mean cosine(a, b), BM3's alignment term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    return -F.logsigmoid(pos_scores - neg_scores).mean()


def bpr_from_embeddings(users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    return bpr_loss((users * pos).sum(-1), (users * neg).sum(-1))


def l2_per_batch(*tensors: Tensor, batch_size: int | None = None) -> Tensor:
    """0.5 * sum ||x||^2 / batch (batch = rows of the first tensor unless given)."""
    n = batch_size if batch_size is not None else tensors[0].size(0)
    return 0.5 * sum(t.pow(2).sum() for t in tensors) / max(n, 1)


def norm_reg(*tensors: Tensor) -> Tensor:
    """sum ||x||_F / rows of the last tensor (not squared)."""
    return sum(torch.linalg.vector_norm(t) for t in tensors) / max(tensors[-1].size(0), 1)


def negative_cosine(a: Tensor, b: Tensor) -> Tensor:
    return 1 - F.cosine_similarity(a, b, dim=-1).mean()
