"""A mapped item's raw score blended with the content floor's (ItemKNN-CBF), per user.

The content mapper (``models.content_mapper``) scores an item without behaviour as
z_u . f(x_i); ItemKNN-CBF (``models.itemknn_cbf``) scores it by its content similarity to the
user's history, p_u . x_i. They fail differently: the mapper only knows what the trained
representations of warm items taught it, the floor only what the raw features share. With
w the floor's share,

    s(u, i) = (1 - w) z_u . f(x_i) / sigma^f_u  +  w p_u . x_i / sigma^x_u

where sigma^f_u and sigma^x_u are the standard deviations of the user's two scores over the
WARM items (fixed by the run's split, so mapping time and serving time agree):
sigma^f_u = sqrt(z_u^T C_f z_u) with C_f the covariance of f(x) over warm items, likewise
sigma^x_u with the content's covariance. Dividing puts the two scores on one scale per user;
a per-user offset would change no ranking or quantile, so there is none.

It stays a dot product, s(u, i) = zb_u . fb_i with zb_u = [(1 - w) z_u / sigma^f_u,
w p_u / sigma^x_u] and fb_i = [f(x_i), x_i], so the calibration and the evaluator take it as
the mapped side's (user, item) representations (``QuantileCalibration(mapped_users=...)``).

w is chosen per mapper at mapping time on the VALID cold setting's Recall@20 over
``BLEND_WEIGHTS`` (0 is the mapper alone, 1 the floor alone: ``pipeline.training.mapping``),
and stored in ``mapping.json`` (``MappedMethod.cbf_weight``; 0 in records written before it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.itemknn_cbf import cbf_embeddings
from pipeline.evaluation.evaluator import UserItems

BLEND_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # the floor's share w, the first is the mapper alone


def _row_std(vectors: Tensor, table: Tensor) -> Tensor:
    """(U,) the standard deviation over the rows of ``table`` of each vector's dot products."""
    centred = table.float() - table.float().mean(0, keepdim=True)  # centred: float32 keeps the precision
    cov = centred.T @ centred / max(table.size(0), 1)
    v = vectors.float()
    return ((v @ cov) * v).sum(1).clamp(min=0).sqrt()


class ContentBlend:
    """The parts of the blend that do not depend on w, computed once (the floor's profiles and
    content, both per-user scales); :meth:`sides` combines them for one w."""

    def __init__(
        self,
        user_emb: Tensor,
        mapped_emb: Tensor,
        features: dict[str, Tensor],
        train_users: Tensor,
        train_items: Tensor,
        warm: Tensor,
    ):
        device = user_emb.device
        self.user_emb, self.mapped_emb = user_emb, mapped_emb
        self.has_content = bool(features)
        if not self.has_content:
            return
        self.profiles, self.content = cbf_embeddings(
            {m: x.to(device) for m, x in features.items()}, train_users, train_items, user_emb.size(0)
        )
        warm = warm.to(device=device, dtype=torch.bool)
        self.mapped = mapped_emb.float().to(device)
        self.mapper_sd = _row_std(user_emb.float(), self.mapped[warm]).clamp(min=1e-12)
        self.floor_sd = _row_std(self.profiles, self.content[warm]).clamp(min=1e-12)

    def sides(self, weight: float) -> tuple[Tensor, Tensor]:
        """(zb (U, d + D), fb (I, d + D)) of the module docstring; (user_emb, mapped_emb)
        unchanged when ``weight`` is 0 or there is no content."""
        if not 0 <= weight <= 1:
            raise ValueError(f"the content floor's share must be in [0, 1], got {weight}")
        if weight == 0 or not self.has_content:
            return self.user_emb, self.mapped_emb
        users = torch.cat(
            [
                self.user_emb.float() * ((1 - weight) / self.mapper_sd)[:, None],
                self.profiles * (weight / self.floor_sd)[:, None],
            ],
            dim=1,
        )
        return users, torch.cat([self.mapped, self.content], dim=1)


def blended_from_history(
    user_emb: Tensor,
    mapped_emb: Tensor,
    features: dict[str, Tensor],
    train: UserItems,
    warm: Tensor,
    weight: float,
) -> tuple[Tensor, Tensor]:
    """:meth:`ContentBlend.sides` for one w, with the train interactions given as a user -> items
    table (serving); nothing computed at w = 0."""
    if weight == 0:
        return user_emb, mapped_emb
    owner = torch.repeat_interleave(torch.arange(train.num_users, device=train.items.device), train.counts())
    return ContentBlend(user_emb, mapped_emb, features, owner, train.items, warm).sides(weight)
