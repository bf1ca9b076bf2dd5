"""ItemKNN-CBF, the content floor: scores from content similarity alone."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from models.base import ModelConfig, Recommender, TrainData


class ItemKNNCBF(Recommender):
    r"""ItemKNN-CBF: a user's score for an item is the item's content similarity to the items
    of the user's train history. It has no ID embedding, so a new item, with nothing but its
    picture and text, is scored exactly as an old one: the floor any cold-start method must beat.

    Per modality m, with the content centred over items and unit-normalised,
    :math:`\hat x^m_i = (c^m_i - \bar c^m) / \lVert c^m_i - \bar c^m \rVert`,

    .. math::
        s_m(u, i) = \frac{1}{|N_u|} \sum_{j \in N_u} \cos(\hat x^m_i, \hat x^m_j)
                  = \hat x^m_i \cdot p^m_u, \qquad p^m_u = \frac{1}{|N_u|} \sum_{j \in N_u} \hat x^m_j

    and over the modalities used (``modalities``; default every one)
    :math:`s(u, i) = \frac{1}{M} \sum_m s_m(u, i)`.

    The neighbourhood is the whole history (every train item of the user counts, weighted by
    its similarity), so the score is linear in the history and the model is two matrices:
    ``inference_embeddings() = (concat_m p^m_u / M, concat_m \hat x^m_i)``. Centring matters
    for CNN features, which are all positive: uncentred, every cosine sits near 1 and the
    ranking follows the shared direction instead of what tells items apart.

    Nothing is trained (``trainable = False``): the trainer evaluates it once, like MostPop.
    A user with no train item scores every item 0.
    """

    name = "itemknn_cbf"
    trainable: ClassVar[bool] = False
    uses_content: ClassVar[bool] = True
    serves_new_items: ClassVar[bool] = True

    class Config(ModelConfig):
        modalities: list[str] | None = Field(
            None, description="modalities whose similarities are averaged (None: every modality of the run)"
        )
        center: bool = Field(True, description="centre each modality's content over items before the cosine")

    GRID: ClassVar[dict[str, list]] = {}

    def __init__(self, data: TrainData, config: "ItemKNNCBF.Config | None" = None):
        super().__init__(data, config or ItemKNNCBF.Config())
        if self.config.adapter != "none":
            raise ValueError(
                f"itemknn_cbf has no behaviour embedding for BeFA to adapt: adapter={self.config.adapter!r}"
            )
        wanted = self.config.modalities or data.modalities
        missing = sorted(set(wanted) - set(data.features))
        if not data.features or missing:
            have = ", ".join(data.modalities) or "none"
            raise ValueError(
                f"itemknn_cbf scores from content: modalities {missing or wanted} have no features "
                f"(this run has: {have})"
            )
        self.used = sorted(wanted)
        for m in self.used:
            self.register_buffer(f"content_{m}", self._normalised(data.features[m]), persistent=False)
        self.register_buffer("train_users", data.train_users.clone(), persistent=False)
        self.register_buffer("train_items", data.train_items.clone(), persistent=False)

    def _normalised(self, x: Tensor) -> Tensor:
        return normalised_content(x, self.config.center)

    def befa_inputs(self, modalities=None):  # type: ignore[no-untyped-def]
        return {}  # no behaviour embedding: nothing for BeFA to gate

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor | None) -> Tensor:
        return torch.zeros((), device=self.train_items.device)

    def inference_embeddings(self) -> tuple[Tensor, Tensor]:
        items = torch.cat([getattr(self, f"content_{m}") for m in self.used], dim=1)
        return history_profiles(items, self.train_users, self.train_items, self.num_users) / len(self.used), items


def normalised_content(x: Tensor, center: bool = True) -> Tensor:
    r"""\hat x_i: one modality's content, centred over items (``center``) and unit-normalised."""
    x = x.float()
    if center:
        x = x - x.mean(0, keepdim=True)
    return F.normalize(x, dim=1)


def history_profiles(items: Tensor, train_users: Tensor, train_items: Tensor, num_users: int) -> Tensor:
    """p_u = (1/|N_u|) sum_{j in N_u} items_j per user (0 for a user without train items)."""
    summed = torch.zeros(num_users, items.size(1), device=items.device)
    summed.index_add_(0, train_users.to(items.device), items[train_items.to(items.device)])
    count = torch.bincount(train_users, minlength=num_users)[:num_users].clamp(min=1).unsqueeze(1)
    return summed / count.to(items.device)


def cbf_embeddings(
    features: dict[str, Tensor], train_users: Tensor, train_items: Tensor, num_users: int
) -> tuple[Tensor, Tensor]:
    """ItemKNN-CBF's (user profiles, item content) over every modality of ``features`` (centred,
    as the model's default): s(u, i) = profiles_u . content_i, the floor's score."""
    mods = sorted(features)
    items = torch.cat([normalised_content(features[m]) for m in mods], dim=1)
    return history_profiles(items, train_users, train_items, num_users) / max(len(mods), 1), items
