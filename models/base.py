"""What every recommender in ``models/`` is given and must provide.

The trainer (``pipeline.training``) and the evaluator (``pipeline.evaluation``)
only talk to models through :class:`Recommender`:

- ``pre_epoch(epoch)``: per-epoch work (FREEDOM's edge sampling, LATTICE's graph rebuild).
- ``loss(users, pos_items, neg_items)``: a scalar training loss for one batch.
- ``inference_embeddings()``: (user matrix U x k, item matrix I x k) such that the
  score of item i for user u is ``users[u] @ items[i]``. Full-ranking evaluation is then
  one matrix product per user batch, so no model recomputes graphs per batch.
- ``befa_inputs()``: per modality, the content c_m and the behaviour embedding E_i at
  BeFA's insertion point (for the study's inspection; training does not call it).

Naming: the ID (behaviour) embeddings E_u (U x d) and E_i (I x d) of the equations are the
parameters ``user_embedding`` and ``item_embedding`` in every model that has them, and a
content model keeps c_m = P_m X_m as ``projections[m]`` (``models.content.FeatureProjection``).

Content features arrive as frozen float32 tensors aligned to the catalog's item index,
one per modality, with a mask of the items that had no feature (their rows are already
filled by the feature loader's fill rule). A model must accept any number of modalities,
including none where that makes sense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, model_serializer
from torch import Tensor, nn


@dataclass
class TrainData:
    """The train-split interaction graph plus content features, all on one device."""

    num_users: int
    num_items: int
    train_users: Tensor  # (E,) int64
    train_items: Tensor  # (E,) int64
    features: dict[str, Tensor] = field(default_factory=dict)  # modality -> (I, D_m) float32
    feature_masks: dict[str, Tensor] = field(default_factory=dict)  # modality -> (I,) bool, True = real feature
    feature_snapshots: dict[str, str] = field(default_factory=dict)  # modality -> feature-store snapshot id
    split_id: str = "unknown"
    graph_cache_dir: Path | None = None  # where graphs are cached (key: snapshot + k + variant + split)

    @property
    def device(self) -> torch.device:
        return self.train_users.device

    @property
    def modalities(self) -> list[str]:
        return sorted(self.features)


# Where BeFA acts; runs recorded before the option existed are mapped on load (pipeline.training.record).
Insertion = Literal["forward", "loss", "content"]


class BeFAConfig(BaseModel):
    """The behaviour-driven feature adapter (spec section 4)."""

    model_config = ConfigDict(extra="forbid")
    t: float = Field(1.0, gt=0, description="decoupling-space multiplier: hidden size h = round(d * t)")
    dropout: float = Field(0.3, ge=0, lt=1, description="dropout after each ReLU, training only")
    variant: Literal["default", "authors"] = Field(
        "default",
        description=(
            "'authors' = the authors' published MGCN variant (no fuser, no InfoNCE), read with adapter='befa' "
            "only; the same as MGCN's skeleton='authors', which the adapter-free control reads"
        ),
    )
    insertion: Insertion = Field(
        "forward",
        description=(
            "where the adapter acts (spec section 4): 'forward' = E_i * g_m(c_m) on the path the model scores "
            "with; 'loss' = E_i * g_m(c_m) in place of c_m in the content loss terms only (the earlier design, "
            "an ablation); 'content' = c_m * g_m(c_m) wherever the model uses c_m"
        ),
    )


class ModelConfig(BaseModel):
    """Fields every model shares. Each model subclasses this with its own defaults."""

    model_config = ConfigDict(extra="forbid")
    embedding_dim: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_decay: tuple[float, int] | None = Field(None, description="(gamma, step): lr *= gamma ** (epoch / step)")
    reg: float = Field(0.0, ge=0)
    adapter: Literal["none", "befa"] = "none"
    befa: BeFAConfig = Field(default_factory=BeFAConfig)
    train_features: bool = Field(False, description="make raw feature tables trainable (reference behaviour)")
    batch_size: int = Field(2048, ge=1)
    uses_negatives: bool = Field(True, description="False for BM3: batches are (user, item) pairs only")
    max_batches_per_epoch: int | None = Field(
        None,
        ge=1,
        description=(
            "large-catalog rule (opt-in): the batch grows, lr by its square root, so an epoch has at most this many"
        ),
    )
    id_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="DropoutNet-style: share of items whose ID embedding is zeroed in each training batch, so the "
        "model learns to score from content (models.id_dropout); items never trained score with a zero ID embedding",
    )

    # Fields added after runs were recorded, left out of every dump while at this value, so config
    # hashes, run-cache keys and records of runs made before them stay what they were. A subclass
    # extends it with its own (MGCN: ``skeleton``).
    DUMP_OMITS: ClassVar[dict[str, Any]] = {"max_batches_per_epoch": None, "id_dropout": 0.0}

    @model_serializer(mode="wrap")
    def _omit_unset_rule(self, handler):  # type: ignore[no-untyped-def]
        data = handler(self)
        if isinstance(data, dict):
            for name, value in self.DUMP_OMITS.items():
                if name in data and data[name] == value:
                    del data[name]
        return data


class BeFAInput(NamedTuple):
    """What BeFA_m reads at its insertion point, every item: adapted_m = behaviour * g_m(content)."""

    content: Tensor  # c_m = P_m X_m (I x d): the content feature where the base model consumes it
    behaviour: Tensor  # E_i (I x d): the item ID embedding the gate selects from


class Recommender(nn.Module):
    """Base class. Subclasses set ``name`` and ``Config`` and implement the three training
    hooks (``pre_epoch``, ``loss``, ``inference_embeddings``); ``befa_inputs`` has a default."""

    name: ClassVar[str]
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    uses_content: ClassVar[bool] = False
    # whether a +BeFA variant exists: a content model with a behaviour embedding to adapt
    accepts_befa: ClassVar[bool] = False
    # whether an item added after training (no ID embedding) gets a content-based representation
    serves_new_items: ClassVar[bool] = False

    def __init__(self, data: TrainData, config: ModelConfig):
        super().__init__()
        self.config = config
        self.num_users = data.num_users
        self.num_items = data.num_items
        if config.id_dropout > 0:  # the items that have an ID embedding worth reading (models.id_dropout)
            known = torch.bincount(data.train_items, minlength=data.num_items)[: data.num_items] > 0
            self.register_buffer("id_known", known, persistent=False)

    def id_keep(self, generator: torch.Generator | None = None) -> Tensor | None:
        """(I,) bool: the items whose ID embedding this pass reads (``models.id_dropout``); None
        when ``id_dropout`` is 0 (every item). Training: each known item kept with probability
        1 - id_dropout, drawn from ``generator``; evaluation: the items trained at all."""
        if self.config.id_dropout <= 0 or not hasattr(self, "id_known"):
            return None
        if not self.training:
            return self.id_known
        draw = torch.rand(self.num_items, generator=generator, device=generator.device if generator else None)
        return self.id_known & (draw.to(self.id_known.device) >= self.config.id_dropout)

    def pre_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called before each training epoch."""

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor | None) -> Tensor:
        raise NotImplementedError

    def inference_embeddings(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def serving_embeddings(self, user_emb: Tensor, item_emb: Tensor, trained_items: int) -> tuple[Tensor, Tensor]:
        """The representations to serve, from ``inference_embeddings()`` of a model built over
        more items than it trained: rows ``>= trained_items`` are items added after training,
        whose ID embedding is zero (``pipeline.serving.servable``). A model whose content
        reaches its item representation through a graph (FREEDOM, LATTICE, MGCN) needs
        nothing here; a model whose content enters only through its loss (BM3) overrides this
        to give new items a content-derived row. Only called when ``serves_new_items``."""
        return user_emb, item_emb

    def befa_inert(self) -> str | None:
        """Why this +BeFA model's adapters can reach neither its loss nor its scores (a term
        weighted to nothing), or None when they can. Models whose insertion can be cut off
        by their own settings override this; the run record keeps the reason."""
        return None

    def befa_inputs(self, modalities: Iterable[str] | None = None) -> dict[str, BeFAInput]:
        """modality -> ``BeFAInput(content, behaviour)``, both I x d, all items: the inputs of
        BeFA at its insertion point (spec section 4), from the current parameters.

        ``content`` is c_m = P_m X_m as the model computes it and ``behaviour`` is what the
        gate selects from: E_i under the ``forward`` and ``loss`` insertions
        (``BeFAConfig.insertion``; where each puts adapted_m = E_i * g_m(c_m) is in each
        model's docstring), c_m itself under ``content`` (adapted_m = c_m * g_m(c_m)).
        Defined whether or not the model has adapters (``adapter='none'`` gives the same c_m
        and E_i the +BeFA model would gate).

        ``modalities``: only these (default: every modality the model consumes); an unknown
        one raises KeyError. A model without content (``uses_content`` False) returns {}.
        The default reads the naming convention of the module docstring,
        ``projections[m]()`` (every item) and ``item_embedding``; a model whose insertion
        point differs overrides this. Differentiable: wrap it in ``torch.no_grad()`` to inspect.
        """
        if not self.uses_content:
            return {}
        projections, behaviour = self.projections, self.item_embedding
        wanted = list(projections) if modalities is None else list(modalities)
        if self.config.adapter == "befa" and self.config.befa.insertion == "content":
            # the "content" insertion gates the content itself: adapted_m = c_m * g_m(c_m)
            return {m: BeFAInput(c, c) for m in wanted for c in [projections[m]()]}
        return {m: BeFAInput(projections[m](), behaviour) for m in wanted}

    # -- parameter accounting (spec section 4: report overhead both ways) ----
    def feature_table_parameters(self) -> int:
        """Size of the raw feature tables (I x D_m per modality), frozen buffers or trainable.

        Content models override this; the reference counts these tables as parameters
        because it trains them, the paper's overhead figure excludes them."""
        return 0

    def adapter_parameters(self) -> int:
        """Parameters of BeFA adapters (0 when adapter='none'); adapters live under ``self.adapters``."""
        return sum(p.numel() for n, p in self.named_parameters() if n.startswith("adapters."))

    def parameter_report(self) -> dict[str, float]:
        trainable = sum(p.numel() for p in self.parameters())
        adapter = self.adapter_parameters()
        tables = self.feature_table_parameters()
        trained_tables = tables if self.config.train_features else 0
        base_without = trainable - adapter - trained_tables
        base_with = base_without + tables
        return {
            "params_trainable": trainable,
            "params_adapter": adapter,
            "params_feature_tables": tables,
            "params_base_with_feature_tables": base_with,
            "params_base_without_feature_tables": base_without,
            "overhead_vs_base_with_tables": adapter / base_with if base_with else 0.0,
            "overhead_vs_base_without_tables": adapter / base_without if base_without else 0.0,
        }
