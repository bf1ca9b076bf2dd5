"""MostPop, the popularity floor."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from models.base import ModelConfig, Recommender, TrainData


class MostPop(Recommender):
    """MostPop: the sanity floor. score(u, i) = number of train interactions of item i.

    Every user gets the same ranking (minus their own train items, masked by the evaluator).
    No trainable parameters: ``trainable = False`` tells the trainer to skip optimisation
    (build no optimiser, run no batches); ``loss`` still returns a zero scalar that does not
    require grad so a generic loop that calls it does not crash, but calling ``backward``
    on it would fail, which is the point: there is nothing to learn.

    Embeddings: (ones(U, 1), popularity(I, 1)).
    """

    name = "mostpop"
    trainable: ClassVar[bool] = False

    class Config(ModelConfig):
        pass

    GRID: ClassVar[dict[str, list]] = {}

    def __init__(self, data: TrainData, config: "MostPop.Config | None" = None):
        super().__init__(data, config or MostPop.Config())
        if self.config.adapter != "none":
            raise ValueError(f"MostPop consumes no content features: adapter={self.config.adapter!r} has nowhere to go")
        pop = torch.bincount(data.train_items, minlength=data.num_items).float()
        self.register_buffer("popularity", pop.unsqueeze(1))

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor | None) -> Tensor:
        return torch.zeros((), device=self.popularity.device)

    def inference_embeddings(self) -> tuple[Tensor, Tensor]:
        return torch.ones(self.num_users, 1, device=self.popularity.device), self.popularity.clone()
