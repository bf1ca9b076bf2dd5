"""FREEDOM: frozen modality kNN graph + degree-sensitive edge dropout (spec section 3)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from models.base import Insertion, ModelConfig, Recommender, TrainData
from models.befa import BeFA, adapt_all
from models.content import FeatureProjection
from models.graphs import KnnMethod, cached, degree_sensitive_edge_sample, interaction_adjacency, knn_graph, knn_key
from models.losses import bpr_gathered
from models.sparse import SparseGraph, propagate, weighted_sum


def freedom_modality_weights(
    modalities: list[str],
    image_weight: float = 0.1,
    image_modality: str = "image",
    explicit: dict[str, float] | None = None,
) -> dict[str, float]:
    """Mixing weights w_m of G = sum_m w_m G_m over the modalities present (they sum to 1).

    - ``explicit`` given: its weights for the present modalities, renormalised to sum 1
      (weights of absent modalities are ignored; a present modality without a weight is an error);
    - otherwise, no modality: {}; one modality: weight 1; ``image_modality`` present beside
      others: it gets ``image_weight`` and the others share 1 - image_weight equally (the
      reference's 0.1 G_v + 0.9 G_t when the modalities are image and text); no image
      modality: equal weights.
    """
    if not modalities:
        return {}
    if explicit is not None:
        missing = [m for m in modalities if m not in explicit]
        if missing:
            raise ValueError(
                f"FREEDOM modality_weights lacks a weight for modalities {missing} (given: {sorted(explicit)})"
            )
        raw = {m: float(explicit[m]) for m in modalities}
        if any(w < 0 for w in raw.values()) or sum(raw.values()) <= 0:
            raise ValueError(f"FREEDOM modality_weights must be >= 0 with a positive sum, got {raw}")
        total = sum(raw.values())
        return {m: w / total for m, w in raw.items()}
    if len(modalities) == 1:
        return {modalities[0]: 1.0}
    if image_modality in modalities:
        others = [m for m in modalities if m != image_modality]
        return {m: (image_weight if m == image_modality else (1 - image_weight) / len(others)) for m in modalities}
    return {m: 1 / len(modalities) for m in modalities}


class FREEDOM(Recommender):
    """FREEDOM (Zhou & Shen 2023) on the project's graphs, plus its three BeFA insertions.

    Graphs (built once):
        G_m = binary cosine kNN graph of the RAW features X_m (k per row, self included,
              D^-1/2 S D^-1/2, so entries 1/k), cached under (snapshot, k, variant, split)
        G   = sum_m w_m G_m   (see :func:`freedom_modality_weights`: 0.1 G_image + 0.9 G_text)
        Â   = D^-1/2 A D^-1/2 of the user-item graph; per epoch (``pre_epoch``) Â_drop keeps
              (1 - edge_dropout) of the edges, drawn without replacement with p ∝ 1/sqrt(d_u d_i),
              and is renormalised on the kept edges; prediction uses the full Â.
    Forward (Â_drop in training, Â at prediction):
        h = G^hops E_i                                   (hops = 1)
        [U*; I_g] = mean(H^(0..L)), H^(0) = [E_u; E_i], H^(l+1) = Â H^(l)   (L = 2)
        I* = I_g + h;   score(u, i) = U*_u . I*_i
    Loss, batch (u, p, n):
        BPR(U*_u, I*_p, I*_n) + reg * sum_m BPR(U*_u, c_m[p], c_m[n]),   c_m = P_m X_m
    +BeFA (``adapter='befa'``), g_m = the adapter's gate (``models.befa``), by ``befa.insertion``:
    - ``forward`` (default): the gated behaviour embedding is what the item graphs propagate,
      over each modality's own graph (kept apart, not merged into G):
          h = sum_m w_m G_m^hops (E_i * g_m(c_m))      (hops: G_m applied once per hop)
          I* = I_g + h;  the content BPR terms stay on c_m (no adapter there).
      The adapters change the scores. Cost per step: c_m for EVERY item (``projection()``),
      an I x D_m x d product per modality forward and one more for P_m's gradient (in place
      of the batch's distinct items x D_m x d), plus the adapters over I x d and M sparse
      products instead of one; the content terms reuse these c_m rows (no second projection).
    - ``loss`` (the earlier design, kept bit-for-bit): the content terms use
      adapted_m = E_i * g_m(c_m) in place of c_m; graphs and prediction as base FREEDOM.
    - ``content``: the content terms use adapted_m = c_m * g_m(c_m); graphs and prediction as
      base FREEDOM.
    Under ``loss`` and ``content`` the adapters are training-only: they do not change the
    scores at inference (tested), and at reg = 0 they never run.

    Choices where the spec is silent:
    - L = 2 user-item layers and 1 item-graph hop (the BeFA grid's setting; the reference's defaults).
    - Any set of modalities: weights by :func:`freedom_modality_weights`; with no modality the
      model is LightGCN with edge dropout (h = 0, no content terms), not an error.
    - reg default 1e-3 (GRID {0, 1e-5, 1e-4, 1e-3}); edge_dropout default 0.8 (GRID {0.8, 0.9}).
    - c_m is computed only for the batch's distinct items (the reference projects every item
      every batch; the loss and its gradient are the same), except under ``forward``, whose
      item view needs every item's c_m anyway; when reg = 0 the content terms are skipped
      entirely (their gradient is 0).
    - P_m: Xavier-normal weights; E_u, E_i: Xavier-uniform.
    - Regulariser: checked against the reference; FREEDOM has no L2 term on embeddings
      (``reg`` weighs the content BPR terms, as in the reference), so no ``reg_form``.
    - Edge sampling draws from torch's global generator, so it follows the trainer's seed.

    Cold items (no train interaction; its E_i gets gradient only as a BPR negative and as a
    neighbour of other items). Every item has a row in the frozen kNN graphs of the raw
    features, so I* = I_g + h (I_g = E_i / (L + 1): no edge) is content-derived through h:
    - base, ``loss``, ``content``: h = G E_i, its content neighbours' ID embeddings (the
      adapters are training-only, so prediction is base FREEDOM's);
    - ``forward``: h = sum_m w_m G_m (E_i * g_m(c_m)): its neighbours' ID embeddings, each
      gated by that neighbour's own content; its own row E_i * g_m(c_i) (self is in the kNN)
      is a gate on an E_i it never trained positively.
    Items added after training (``serves_new_items``; ``pipeline.serving.servable``) get a
    model rebuilt over all items, kNN graphs included, with their E_i set to 0. Then
    base / ``loss`` / ``content``: h = sum_j G[i, j] E_j over the trained neighbours; ``forward``:
    h = sum_m w_m sum_j G_m[i, j] E_j * g_m(c_j), the neighbours gated by their content, and
    the new item's own gate multiplies its zero E_i, so its own content acts only through the
    choice of neighbours.

    Cost: on CPU the epoch is dominated by the image content term, two GEMMs per batch of
    (distinct items of the batch, ~3k) x D_v x d (forward and P_v's gradient); the sparse
    products are ~10% (``models.sparse``). ``forward`` replaces that term by the I x D_m x d
    products above.

    Where an epoch goes (movielens, 22 batches, one thread, ``make bench-profile-epoch``,
    2026-12-06, commit 3f6dfe2): 0.22 s for 12.1 GFLOP, 2.9x its floor at the measured matmul
    rate: the feature projections of the batch's items every batch (forward and weight
    gradient: 38%, 76 ms), then gathers (index_select 11%) and scatters. BPR runs fused
    (``bpr_gathered``). Live against the reference: 3.8-4.2x frozen, 2.2-2.3x trained, under the 8x
    target, which this CPU's arithmetic rules out (docs/benchmarks.md says why).
    """

    name = "freedom"
    uses_content = True
    accepts_befa = True
    serves_new_items = True  # see the docstring: items added after training

    class Config(ModelConfig):
        num_layers: int = Field(2, ge=0, description="user-item LightGCN layers")
        item_graph_hops: int = Field(1, ge=0)
        knn_k: int = Field(10, ge=1)
        knn_method: KnnMethod = Field(
            "auto",
            description=(
                "item kNN graphs: exact, approx (IVF, models.graphs.ApproxKnn) "
                "or auto (approx from APPROX_KNN_MIN_ITEMS items)"
            ),
        )
        image_weight: float = Field(0.1, ge=0, le=1)
        image_modality: str = "image"
        modality_weights: dict[str, float] | None = None
        edge_dropout: float = Field(0.8, ge=0, lt=1, description="fraction of user-item edges dropped per epoch")
        reg: float = Field(1e-3, ge=0, description="weight of the content BPR terms")

    GRID: ClassVar[dict[str, list]] = {"edge_dropout": [0.8, 0.9], "reg": [0.0, 1e-5, 1e-4, 1e-3]}

    def __init__(self, data: TrainData, config: "FREEDOM.Config | None" = None):
        config = config or FREEDOM.Config()
        super().__init__(data, config)
        d, dev = config.embedding_dim, data.device
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.num_users, d, device=dev)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.num_items, d, device=dev)))
        self.register_buffer("edge_users", data.train_users, persistent=False)
        self.register_buffer("edge_items", data.train_items, persistent=False)
        self.full_adj = SparseGraph.from_csr(
            interaction_adjacency(data.num_users, data.num_items, data.train_users, data.train_items, "sym"),
            symmetric=True,
        )
        self.train_adj = self.full_adj

        modalities = data.modalities
        self.projections = nn.ModuleDict(
            {m: FeatureProjection(data.features[m].to(dev), d, config.train_features) for m in modalities}
        )
        # where BeFA acts (None without adapters); see the class docstring
        self.insertion: Insertion | None = config.befa.insertion if config.adapter == "befa" else None
        if config.adapter == "befa":
            self.adapters = nn.ModuleDict({m: BeFA(d, config.befa.t, config.befa.dropout) for m in modalities})
        self.modality_weights = freedom_modality_weights(
            modalities, config.image_weight, config.image_modality, config.modality_weights
        )
        self.item_graph: SparseGraph | None = None  # G = sum_m w_m G_m (base, loss, content)
        self.modality_graphs: dict[str, SparseGraph] = {}  # the G_m kept apart (forward)
        if modalities:
            graphs = {m: SparseGraph.from_csr(self._knn(data, m).to(dev)) for m in modalities}
            if self.insertion == "forward":
                self.modality_graphs = graphs
            else:
                self.item_graph = weighted_sum([(self.modality_weights[m], graphs[m]) for m in modalities])

    def _knn(self, data: TrainData, modality: str) -> Tensor:
        snapshot = data.feature_snapshots.get(modality)
        key = {
            "graph": "knn",
            "modality": modality,
            "snapshot": snapshot,
            "k": self.config.knn_k,
            "variant": "binary",
            "split": data.split_id,
            "items": data.num_items,
            "knn": knn_key(self.config.knn_method, data.num_items),
        }
        # without a snapshot id a cached graph could silently outlive an encoder change: don't cache
        cache_dir = data.graph_cache_dir if snapshot else None
        return cached(
            cache_dir,
            key,
            lambda: knn_graph(
                data.features[modality], self.config.knn_k, weighted=False, method=self.config.knn_method
            ),
        )

    def pre_epoch(self, epoch: int) -> None:
        if self.config.edge_dropout <= 0:
            self.train_adj = self.full_adj
            return
        keep = degree_sensitive_edge_sample(
            self.edge_users, self.edge_items, self.num_users, self.num_items, 1 - self.config.edge_dropout
        )
        self.train_adj = SparseGraph.from_csr(
            interaction_adjacency(self.num_users, self.num_items, self.edge_users[keep], self.edge_items[keep], "sym"),
            symmetric=True,
        )

    def _forward(self, adj: SparseGraph, content: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """(U*, I*); ``content``: every item's c_m (forward insertion; computed here if None)."""
        users, items = propagate(adj, [self.user_embedding, self.item_embedding], self.config.num_layers)
        if self.item_graph is not None and self.config.item_graph_hops > 0:
            g = self.item_embedding
            for _ in range(self.config.item_graph_hops):
                g = self.item_graph @ g
            items = items + g
        elif self.modality_graphs and self.config.item_graph_hops > 0:
            items = items + self.gated_item_view(self.content() if content is None else content)
        return users, items

    def _needs_all_content(self) -> bool:
        return bool(self.modality_graphs) and self.config.item_graph_hops > 0

    def content(self) -> list[Tensor]:
        """c_m = P_m X_m of every item, per modality (``projection()``: no gather buffer)."""
        return [self.projections[m]() for m in self.projections]

    def adapted(self, content: list[Tensor]) -> list[Tensor]:
        """E_i * g_m(c_m) for every item, per modality: what the forward insertion propagates."""
        return adapt_all([self.adapters[m] for m in self.projections], content, self.item_embedding)

    def gated_item_view(self, content: list[Tensor]) -> Tensor:
        """h = sum_m w_m G_m^hops (E_i * g_m(c_m)) (forward insertion)."""
        h: Tensor | float = 0.0
        for m, z in zip(self.projections, self.adapted(content)):
            for _ in range(self.config.item_graph_hops):
                z = self.modality_graphs[m] @ z
            h = h + self.modality_weights[m] * z
        return h  # type: ignore[return-value]

    def contents(self, rows: Tensor) -> list[Tensor]:
        """What the content terms consume for the given items, per modality: c_m (base,
        forward), E_i * g_m(c_m) (loss) or c_m * g_m(c_m) (content)."""
        cs = [self.projections[m](rows) for m in self.projections]
        if self.insertion == "loss":
            # one gather of E_i for all modalities, and the adapters run together
            cs = adapt_all([self.adapters[m] for m in self.projections], cs, self.item_embedding[rows])
        elif self.insertion == "content":
            cs = [self.adapters[m](c, c) for m, c in zip(self.projections, cs)]
        return cs

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor | None) -> Tensor:
        if neg_items is None:
            raise ValueError("FREEDOM needs negative items (BPR)")
        content = self.content() if self._needs_all_content() else None
        u_all, i_all = self._forward(self.train_adj, content)
        loss = bpr_gathered(u_all, i_all, users, pos_items, neg_items)
        if self.config.reg > 0 and len(self.projections):
            content_loss = 0.0
            if content is not None:  # forward: every item's c_m is at hand, the terms read its rows
                for c in content:
                    content_loss = content_loss + bpr_gathered(u_all, c, users, pos_items, neg_items)
            else:
                rows, inv = torch.unique(torch.cat([pos_items, neg_items]), return_inverse=True)
                pos_idx, neg_idx = inv[: pos_items.numel()], inv[pos_items.numel() :]
                for c in self.contents(rows):
                    content_loss = content_loss + bpr_gathered(u_all, c, users, pos_idx, neg_idx)
            loss = loss + self.config.reg * content_loss
        return loss

    def befa_inert(self) -> str | None:
        if self.insertion in ("loss", "content") and self.config.reg == 0 and len(self.projections):
            return (
                f"under insertion {self.insertion!r} FREEDOM's adapter enters only the content BPR terms, "
                "which reg = 0 skips"
            )
        if self.insertion == "forward" and self.config.item_graph_hops == 0:
            return (
                "under insertion 'forward' the adapter feeds the item-graph view, which item_graph_hops = 0 leaves out"
            )
        return None

    def inference_embeddings(self) -> tuple[Tensor, Tensor]:
        return self._forward(self.full_adj)

    def feature_table_parameters(self) -> int:
        return sum(p.num_table_entries for p in self.projections.values())
