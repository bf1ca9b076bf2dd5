"""Graph recommenders on torch CSR graphs (models.sparse, models.graphs), and the BeFA adapter.

``MODELS`` is the explicit registry; ``create_model`` the single factory::

    model = create_model("mgcn", data, {"adapter": "befa", "befa.t": 2.0})
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from models.base import BeFAConfig, BeFAInput, ModelConfig, Recommender, TrainData
from models.befa import BeFA
from models.bm3 import BM3
from models.content_mapper import ContentMapper, MapperConfig
from models.freedom import FREEDOM
from models.itemknn_cbf import ItemKNNCBF
from models.lattice import LATTICE
from models.lightgcn import LightGCN
from models.mapper_aldi import ALDIMapper
from models.mapper_regression import RegressionMapper
from models.mgcn import MGCN
from models.mostpop import MostPop

MODELS: dict[str, type[Recommender]] = {
    "mostpop": MostPop,
    "itemknn_cbf": ItemKNNCBF,
    "lightgcn": LightGCN,
    "bm3": BM3,
    "lattice": LATTICE,
    "freedom": FREEDOM,
    "mgcn": MGCN,
}
# the models compared base vs +BeFA (a content model with a behaviour embedding for BeFA to adapt)
CONTENT_MODELS: tuple[str, ...] = tuple(name for name, cls in MODELS.items() if cls.accepts_befa)


# content-to-behaviour mappers for items without behaviour (models.content_mapper)
MAPPERS: dict[str, type[ContentMapper]] = {"regression": RegressionMapper, "aldi": ALDIMapper}


def create_mapper(
    method: str, in_dims: dict[str, int], out_dim: int, overrides: Mapping[str, Any] | None = None
) -> ContentMapper:
    """The mapper factory: ``create_mapper("aldi", {"image": 1280, "text": 384}, 64, {"steps": 200})``."""
    try:
        cls = MAPPERS[method]
    except KeyError:
        raise UnknownModelError(f"unknown mapper {method!r}; choose from {', '.join(MAPPERS)}") from None
    return cls(in_dims, out_dim, cls.Config.model_validate(dict(overrides or {})))


class UnknownModelError(KeyError, ValueError):
    """A model name that is not in ``MODELS``."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_model_class(model: str | type[Recommender]) -> type[Recommender]:
    """A registry name (``MODELS``), or a Recommender subclass passed through."""
    if isinstance(model, type) and issubclass(model, Recommender):
        return model
    try:
        return MODELS[model]
    except KeyError:
        raise UnknownModelError(f"unknown model {model!r}; choose from {', '.join(MODELS)}") from None


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied; dotted keys reach nested sections (``befa.t``)."""
    out = json.loads(json.dumps(base))
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise KeyError(f"config override {key!r}: {part!r} is not a nested section")
            node = node[part]
        node[parts[-1]] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["befa.t=2", "reg=1e-4"]`` -> ``{"befa.t": 2, "reg": 0.0001}``: values are JSON,
    or plain strings where they are not JSON."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def make_config(model: str | type[Recommender], overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """The model's typed config with (dotted) overrides applied and validated."""
    cls = get_model_class(model)
    return cls.Config.model_validate(apply_overrides(cls.Config().model_dump(mode="json"), overrides or {}))


def create_model(
    model: str | type[Recommender], data: TrainData, overrides: ModelConfig | Mapping[str, Any] | None = None
) -> Recommender:
    """The one factory: ``create_model("mgcn", data, {"adapter": "befa", "befa.t": 2.0})``, or
    with a config already validated (``make_config``, a run record's): ``create_model("mgcn", data, config)``."""
    cls = get_model_class(model)
    config = overrides if isinstance(overrides, cls.Config) else make_config(cls, overrides)
    if config.adapter == "befa" and not cls.accepts_befa:
        why = "has no behaviour embedding" if cls.uses_content else "uses no content features"
        raise ValueError(f"model {cls.name!r} {why}, so it has nothing for BeFA to adapt")
    return cls(data, config)


__all__ = [
    "MAPPERS",
    "MapperConfig",
    "create_mapper",
    "MODELS",
    "CONTENT_MODELS",
    "UnknownModelError",
    "apply_overrides",
    "BeFA",
    "BeFAConfig",
    "BeFAInput",
    "ModelConfig",
    "Recommender",
    "TrainData",
    "create_model",
    "get_model_class",
    "make_config",
    "parse_overrides",
]
