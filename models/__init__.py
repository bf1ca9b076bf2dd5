"""Recommenders on PyTorch Geometric, and the BeFA adapter.

``MODELS`` is the explicit registry; ``create_model`` the single factory::

    model = create_model("mgcn", data, adapter="befa", befa={"t": 2.0})
"""

from __future__ import annotations

from typing import Any

from models.base import BeFAConfig, ModelConfig, Recommender, TrainData
from models.befa import BeFA
from models.bm3 import BM3
from models.freedom import FREEDOM
from models.lattice import LATTICE
from models.lightgcn import LightGCN
from models.mgcn import MGCN
from models.mostpop import MostPop

MODELS: dict[str, type[Recommender]] = {
    "mostpop": MostPop,
    "lightgcn": LightGCN,
    "bm3": BM3,
    "lattice": LATTICE,
    "freedom": FREEDOM,
    "mgcn": MGCN,
}
CONTENT_MODELS = ("bm3", "lattice", "freedom", "mgcn")


def get_model_class(name: str) -> type[Recommender]:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None


def make_config(name: str, **overrides: Any) -> ModelConfig:
    """The model's typed config with overrides applied and validated."""
    return get_model_class(name).Config(**overrides)


def create_model(name: str, data: TrainData, **overrides: Any) -> Recommender:
    cls = get_model_class(name)
    config = cls.Config(**overrides)
    if config.adapter == "befa" and not cls.uses_content:
        raise ValueError(f"model {name!r} uses no content features, so it has nothing for BeFA to adapt")
    return cls(data, config)


__all__ = [
    "MODELS",
    "CONTENT_MODELS",
    "BeFA",
    "BeFAConfig",
    "ModelConfig",
    "Recommender",
    "TrainData",
    "create_model",
    "get_model_class",
    "make_config",
]
