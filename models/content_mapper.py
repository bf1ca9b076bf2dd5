"""Content-to-behaviour mappers, the shared part: what a mapper is given, its input
encoding and network, and its training loop. The methods are one file each:
``models.mapper_regression`` (DeepMusic-style regression) and ``models.mapper_aldi`` (ALDI).

A trained recommender scores ``s(u, i) = z_u . h_i`` from its inference embeddings
(``Recommender.inference_embeddings``). A cold or new item has no behaviour, so its
``h_i`` comes from an ID embedding that never trained. A mapper learns, on the WARM items
only, a map from an item's content to the model's item representation,

    f(x_i) ~ h_i,   x_i = concat_m standardise(c_i^m)

(each modality's features standardised per dimension over the catalog's items, which uses
no behaviour), and is applied to the items without behaviour in place of their ``h_i``.
The recommender is left as it was: its users, its warm items and its scores for them do
not change. The network is an MLP: Linear(D, hidden), ReLU, Linear(hidden, d).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class MapperConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(256, ge=1, description="hidden width of the MLP")
    steps: int = Field(400, ge=1, description="Adam steps")
    batch_size: int = Field(
        1024, ge=1, description="warm items (regression) or interactions (ALDI) per step (at most as many as there are)"
    )
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)


@dataclass
class MapperData:
    """What a mapper learns from: a trained model's representations and the train interactions."""

    features: dict[str, Tensor]  # modality -> (I, D_m), every item
    user_emb: Tensor  # (U, d) the model's inference user representations
    item_emb: Tensor  # (I, d) the model's inference item representations (targets on warm items)
    warm: Tensor  # (I,) bool: items with train interactions
    train_users: Tensor  # (E,) the train interactions (ALDI's pairs)
    train_items: Tensor
    fit: Tensor | None = None  # (I,) bool: the warm items learned from (default: every warm item)

    @functools.cached_property
    def fit_mask(self) -> Tensor:
        return self.warm if self.fit is None else self.fit & self.warm

    @functools.cached_property
    def warm_items(self) -> Tensor:
        """The items learned from (warm, minus any held out for calibration)."""
        return self.fit_mask.nonzero().flatten()

    @functools.cached_property
    def warm_pairs(self) -> Tensor:
        """Positions of the train interactions whose item is learned from."""
        return self.fit_mask[self.train_items].nonzero().flatten()

    @functools.cached_property
    def item_counts(self) -> Tensor:
        return torch.bincount(self.train_items, minlength=self.warm.numel()).float()


@dataclass
class MapperFit:
    """How a mapper's training went."""

    method: str
    steps: int
    seconds: float
    final_loss: float
    warm_cosine: float  # mean cosine between f(x_i) and h_i over the warm items


class ContentMapper(nn.Module):
    """Base: input encoding, the MLP, the loop. Subclasses give ``method`` and ``batch_loss``."""

    method: ClassVar[str]
    Config: ClassVar[type[MapperConfig]] = MapperConfig

    def __init__(self, in_dims: dict[str, int], out_dim: int, config: MapperConfig | None = None):
        super().__init__()
        self.config = config or self.Config()
        self.modalities = sorted(in_dims)
        if not self.modalities:
            raise ValueError("a content mapper needs at least one modality of content features")
        width = sum(in_dims.values())
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.net = nn.Sequential(
            nn.Linear(width, self.config.hidden), nn.ReLU(), nn.Linear(self.config.hidden, out_dim)
        )

    def _concat(self, features: dict[str, Tensor]) -> Tensor:
        missing = [m for m in self.modalities if m not in features]
        if missing:
            raise ValueError(f"the mapper was trained on {self.modalities}; missing features: {missing}")
        return torch.cat([features[m].float() for m in self.modalities], dim=1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """f(x): (I, d) mapped representations of every item given."""
        x = self._concat(features).to(self.mean.device)
        return self.net((x - self.mean) / self.scale)

    def batch_loss(self, data: MapperData, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def fit(self, data: MapperData, seed: int = 0) -> MapperFit:
        """Standardise the inputs over every item, then ``steps`` Adam steps on ``batch_loss``."""
        if int(data.fit_mask.sum()) < 2:
            raise ValueError("a content mapper needs at least 2 warm items (items with train interactions)")
        start = time.perf_counter()
        x = self._concat(data.features)
        self.mean.copy_(x.mean(0))
        self.scale.copy_(x.std(0).clamp(min=1e-6))
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # the MLP's initialisation is part of the seeded fit
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        opt = torch.optim.Adam(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.train()
        loss = torch.zeros(())
        for _ in range(self.config.steps):
            loss = self.batch_loss(data, generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.eval()
        with torch.no_grad():
            warm = data.warm_items
            mapped = self({m: f[warm] for m, f in data.features.items()})
            cosine = float(nn.functional.cosine_similarity(mapped, data.item_emb[warm].float(), dim=1).mean())
        return MapperFit(self.method, self.config.steps, time.perf_counter() - start, float(loss.detach()), cosine)


def sample(pool: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """``size`` entries of ``pool`` drawn uniformly with replacement."""
    return pool[torch.randint(0, pool.numel(), (size,), generator=generator)]
