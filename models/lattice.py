"""LATTICE (Zhang et al., MM 2021) with a sparse learned item graph, plus its BeFA insertion.

Equations (spec section 3; d = ``embedding_dim``, M >= 1 modalities, w = softmax(omega) the
modality weights, omega initialised equal):

    c_m = P_m X_m                                    (I x d) projected content
    S_m = topk_k( cos(c_m, c_m) )                     kNN rows, self included, cosine values kept
    L   = D^-1/2 (sum_m w_m S_m) D^-1/2               learned graph, D = row sums of the mixed S
    O   = sum_m w_m O_m                               O_m = D^-1/2 topk_k(cos(X_m, X_m)) D^-1/2, frozen
    G   = (1 - lambda) L + lambda O                   lambda = 0.9
    h   = G^{item_layers} E_i                         item view (1 hop)
    [u; i] = LightGCN(D^-1 (A + I), [E_u; E_i], n_ui_layers)  (mean of layers 0..L)
    user = u,  item = i + normalize(h)                score = user . item
    loss = BPR(user, item+, item-) + reg * 0.5 (|user|^2 + |item+|^2 + |item-|^2) / batch_size
           (reg_form "squared", default, the reference's form; "norm": (|user|_F + |item+|_F + |item-|_F) / batch_size)

+BeFA (``adapter="befa"``, spec section 4): one adapter per modality, g_m its gate
(``models.befa``: BeFA_m(c, b) = b * g_m(c)); ``befa.insertion`` says where it acts:

  "forward" (default; the authors' pattern: the gated behaviour embedding on the path scored)
    a_m = E_i * g_m(c_m)
    S_m = topk_k( cos(c_m, c_m) )                     the learned graph stays built from c_m
    h   = G^{item_layers} ((1/M) sum_m a_m)           instead of G^{item_layers} E_i
  "content" (gate the content itself wherever LATTICE uses c_m: only the learned graph)
    a_m = c_m * g_m(c_m)
    S_m = topk_k( cos(a_m, a_m) )                     the learned graph is built from a_m
    h   = G^{item_layers} E_i                         as base LATTICE
  "loss" (the earlier design, kept as an ablation, bit for bit, so that runs recorded before
          the option existed rebuild as they ran; LATTICE has no content loss term, and the
          name is the placement every model had then. Neither the paper nor the authors'
          code builds the learned graph from gated ID embeddings)
    a_m = E_i * g_m(c_m)
    S_m = topk_k( cos(a_m, a_m) )                     the learned graph is built from a_m
    h   = G^{item_layers} (sum_m w_m a_m)             mixed with the graphs' modality weights w
  (everything else unchanged: O, lambda, LightGCN, item = i + normalize(h), the loss)

  What each costs per step, and what gets gradient when (G carries gradient at the epoch's
  first batch only, see the choices below):
  - "forward", "loss": the M adapters run over all I items every batch (three (I x d)-sized
    products per modality, forward and backward) on the c_m computed at the epoch's graph
    rebuild and reused, detached: no extra projection. The adapters and E_i get gradient
    every batch through h; P_m at the rebuild batch only. omega gets gradient every batch
    under "loss" (h mixes with w), only at the rebuild batch under "forward" (as in base).
  - "content": nothing per batch beyond base LATTICE; the adapters run once per graph build
    (each epoch and each evaluation), and they get gradient only at the rebuild batch,
    through the learned graph's edge values, as P_m does: one adapter update per epoch.

Choices (where the spec is silent or the reference does not scale):

- Sparse learned graph. The reference materialises cos(c_m, c_m) and G as dense I x I
  matrices (O(I^2) memory: 16 GB per matrix at 63k items). Here the top-k search runs in
  row blocks of at most ~32 M similarities (no I x I tensor ever exists), the k kept
  similarities are recomputed differentiably as <c_i/|c_i|, c_j/|c_j|> on the chosen edges
  (identical values and identical gradients to the reference's dense topk: topk passes
  gradient only to the selected entries), and L, O, G are sparse with the union of their
  supports. Ties in top-k may pick a different but equally similar neighbour.
- Gradients of the learned graph, as in the reference: G is rebuilt once per epoch (in
  ``pre_epoch``, which the trainer calls in train mode, or lazily by the first ``loss`` if
  it was not), carries gradient for that epoch's FIRST batch only (to P_m, omega, the raw
  tables when ``train_features``, and with BeFA "content" or "loss" to the adapters, and
  "loss" to E_i, through a_m) and is detached for the remaining batches, whose optimiser
  steps use the same, now constant, graph. Keeping gradient through G for every batch would need a top-k search and the
  I x D_m projection per batch (0.5 s per batch for 4096-d features on 2 CPU threads), and
  it is not what the reference trains. For the same reason the +BeFA content c_m = P_m X_m
  ("forward", "loss": h needs it every batch) is computed with the graph and reused,
  detached, for the epoch's later batches: P_m gets gradient only at the rebuild batch,
  exactly as in base LATTICE.
- All propagations use ``models.sparse.SparseGraph`` (CSR forward, precomputed transpose
  for the backward, per-entry gather for the value gradient): torch's own CSR backward is
  ~5x the forward for the dense operand and densifies for the sparse values (measured:
  20 GB and 2 min at 63k items).
- Evaluation (``inference_embeddings``) rebuilds G from the current parameters, as the
  reference's ``full_sort_predict`` does, once per evaluation (not per user batch), without
  touching the training graph.
- A row of the mixed S whose sum is <= 0 gets D^-1/2 = 0 (the reference would produce NaN
  for a negative sum; with self-similarity 1 kept it needs k - 1 strongly negative
  neighbours).
- n_ui_layers = 2 (the reference's weight_size [64, 64]); item_layers = 1; embeddings
  Xavier-uniform; the L2 term divides by the configured batch size (reference); default
  reg = 0, the first value of the grid (the reference only gives the grid).
- Zero modalities raise ValueError: LATTICE is defined by its content graphs.
- Regulariser: checked against the reference's ``bpr_loss`` (0.5 x squared L2 of the final
  batch rows / the configured batch size): ``reg_form="squared"`` (default) is that form;
  ``"norm"`` (un-squared norms, as the reference's LightGCN) is offered for comparison.
- Cold items (no train interaction): the item view h = G E_i reaches a cold item through
  its kNN neighbours in the learned and the original content graphs, which are built from
  features every item has, so normalize(h) gives it a content-derived representation; its
  own E_i gets gradient only as a BPR negative, as a graph neighbour and from the L2 term,
  and its LightGCN part is E_i itself (no edge). +BeFA "forward": the learned graph is base
  LATTICE's, and h mixes the neighbours' gated E_j * g_m(c_j) with the cold item's own
  gated, never-positively-trained E_i (an item added after training, E_i = 0, gets its
  neighbours' part only). "content": h = G E_i as base, over a graph built from the gated
  content c_m * g_m(c_m), so the cold item's neighbours are content-derived. "loss": its
  a_m = E_i * g_m(c_m), its learned-graph neighbours and the h it propagates all depend on
  that untrained E_i, where base LATTICE uses c_m alone.
- The reference's raw feature tables are trainable; here they are frozen buffers unless
  ``train_features=True``.
- Where an epoch goes (movielens, 22 batches, one thread, ``make bench-profile-epoch``,
  2026-12-06, commit 3f6dfe2): 0.17 s for 2.8 GFLOP, 9.7x its floor at the measured matmul
  rate: overhead and memory-bound sparse products (15%), elementwise passes and gathers;
  the learned graph's rebuild (one kNN over the items) once per epoch. ``pre_epoch`` reuses
  the kNN search of the evaluation just before it when the basis is bit for bit the same
  (``_knn_edges``: 0.223 -> 0.190 s in an A/B), and the learned graph's value gradient runs
  as a sampled dense-dense product (``models.sparse.entry_dots``: -11.5%). Live against the
  reference: training 8.3-8.5x frozen, 7.9-8.2x trained; evaluation 7.0-7.8x (target 8x for both).
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from models import graphs
from models.base import ModelConfig, Recommender, TrainData
from models.befa import BeFA, adapt_all
from models.content import FeatureProjection
from models.losses import RegForm, bpr_gathered, counted_reg
from models.sparse import SparseGraph, coalesce_sum, propagate


@torch.no_grad()
def topk_cosine_edges(x: Tensor, k: int, method: str = "exact") -> tuple[Tensor, Tensor]:
    """(row, col) of each row's k most cosine-similar rows (self included), in row blocks;
    approximately (``graphs.topk_neighbours``) when ``method`` says so for this many rows."""
    num = x.size(0)
    k = min(k, num)
    if graphs.knn_method(method, num) == "approx":  # the exact search is quadratic in items
        return torch.arange(num, device=x.device).repeat_interleave(k), graphs.topk_neighbours(x, k, "approx")[
            1
        ].reshape(-1)
    xn = F.normalize(x.detach().float(), dim=1)
    block = max(1, min(num, graphs.SIM_BLOCK_ELEMENTS // max(num, 1)))
    cols = [graphs.row_topk(xn[s : s + block] @ xn.T, k)[1] for s in range(0, num, block)]
    col = torch.cat(cols).reshape(-1)
    row = torch.arange(num, device=x.device).repeat_interleave(k)
    return row, col


def cosine_edge_values(x: Tensor, row: Tensor, col: Tensor) -> Tensor:
    """cos(x_row, x_col) per edge, differentiable in x."""
    xn = F.normalize(x, dim=1)
    return (xn[row] * xn[col]).sum(-1)


def sym_normalise(graph: SparseGraph) -> SparseGraph:
    """D^-1/2 S D^-1/2 with D the row sums; rows with a sum <= 0 are zeroed."""
    rowsum = torch.zeros(graph.num_rows, dtype=graph.values.dtype, device=graph.values.device)
    rowsum = rowsum.index_add(0, graph.row, graph.values)
    dinv = torch.where(rowsum > 0, rowsum.clamp_min(1e-12).rsqrt(), torch.zeros_like(rowsum))
    return graph.with_values(dinv[graph.row] * graph.values * dinv[graph.col])


def _no_autocast(device: torch.device):
    # Sparse products stay in float32 even under the trainer's CUDA autocast.
    return torch.autocast(device.type, enabled=False) if device.type == "cuda" else contextlib.nullcontext()


class LATTICE(Recommender):
    """LATTICE: a learned (sparse) item-item graph on top of LightGCN. See the module docstring."""

    name: ClassVar[str] = "lattice"
    uses_content: ClassVar[bool] = True
    accepts_befa: ClassVar[bool] = True
    serves_new_items: ClassVar[bool] = True  # see the docstring: items added after training
    GRID: ClassVar[dict[str, list]] = {"reg": [0.0, 1e-5, 1e-4, 1e-3]}

    class Config(ModelConfig):
        lr_decay: tuple[float, int] | None = (0.96, 50)
        reg: float = Field(0.0, ge=0, description="L2/batch weight (grid 0, 1e-5, 1e-4, 1e-3)")
        reg_form: RegForm = Field(
            "squared", description="'squared': 0.5 ||.||^2 / batch (reference); 'norm': ||.||_F / batch"
        )
        lambda_coeff: float = Field(0.9, ge=0, le=1, description="weight of the original graph in G")
        knn_k: int = Field(10, ge=1)
        knn_method: graphs.KnnMethod = Field(
            "auto",
            description=(
                "item kNN graphs: exact, approx (IVF, models.graphs.ApproxKnn) "
                "or auto (approx from APPROX_KNN_MIN_ITEMS items)"
            ),
        )
        n_ui_layers: int = Field(2, ge=0, description="LightGCN layers on D^-1 (A + I)")
        item_layers: int = Field(1, ge=1, description="hops of the item graph")

    def __init__(self, data: TrainData, config: "LATTICE.Config"):
        super().__init__(data, config)
        self.modalities = graphs.check_modalities(data, "LATTICE")
        if config.adapter == "befa" and config.befa.variant != "default":
            raise ValueError("LATTICE: befa.variant='authors' exists only for MGCN; use variant='default'")
        # where BeFA acts (module docstring); None without an adapter
        self.insertion = config.befa.insertion if config.adapter == "befa" else None
        # whether the item view h reads the content every batch (c_m is then kept for the epoch)
        self._view_reads_content = self.insertion in ("forward", "loss")
        d, dev = config.embedding_dim, data.device
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.num_users, d, device=dev)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.num_items, d, device=dev)))
        # raw table X_m (frozen buffer sharing the caller's storage, or trainable) and P_m
        self.projections = nn.ModuleDict(
            {
                m: FeatureProjection(data.features[m].to(dev), d, config.train_features, init="default")
                for m in self.modalities
            }
        )
        self.modal_logits = nn.Parameter(torch.zeros(len(self.modalities), device=dev))  # softmax -> equal weights
        if config.adapter == "befa":
            self.adapters = nn.ModuleDict(
                {m: BeFA(d, config.befa.t, config.befa.dropout).to(dev) for m in self.modalities}
            )
        self.norm_adj = SparseGraph.from_csr(
            graphs.interaction_adjacency(data.num_users, data.num_items, data.train_users, data.train_items, "lattice")
        )
        self.original_graphs = [
            SparseGraph.from_csr(graphs.original_item_graph(data, m, config.knn_k, config.knn_method))
            for m in self.modalities
        ]
        self._train_graph: SparseGraph | None = None
        self._train_content: list[Tensor] | None = None
        self._graph_has_grad = False
        self._edges: tuple[list[Tensor], list[tuple[Tensor, Tensor]]] | None = None  # see _knn_edges

    # -- content ------------------------------------------------------------
    def feature(self, modality: str) -> Tensor:
        return self.projections[modality].table

    def feature_table_parameters(self) -> int:
        return sum(p.num_table_entries for p in self.projections.values())

    def content(self) -> list[Tensor]:
        """c_m = P_m X_m for every modality (I x d)."""
        return [self.projections[m]() for m in self.modalities]

    def adapted(self, content: list[Tensor]) -> list[Tensor]:
        """a_m per modality: E_i * g_m(c_m) ("forward", "loss"), c_m * g_m(c_m) ("content")."""
        if self.insertion == "content":
            return [self.adapters[m](c, c) for m, c in zip(self.modalities, content)]
        if self.insertion == "forward":
            return adapt_all([self.adapters[m] for m in self.modalities], content, self.item_embedding)
        return [self.adapters[m](c, self.item_embedding) for m, c in zip(self.modalities, content)]

    # -- graphs -------------------------------------------------------------
    def build_item_graph(self, content: list[Tensor]) -> SparseGraph:
        """G = (1 - lambda) L + lambda O, sparse, differentiable in content and omega."""
        n = self.num_items
        k = min(self.config.knn_k, n)
        w = self.modal_logits.softmax(0)
        basis = self.adapted(content) if self.insertion in ("loss", "content") else content
        rows, cols, vals = [], [], []
        for j, (x, (r, c)) in enumerate(zip(basis, self._knn_edges(basis, k))):
            rows.append(r)
            cols.append(c)
            vals.append(w[j] * cosine_edge_values(x, r, c))
        learned = sym_normalise(coalesce_sum(torch.cat(rows), torch.cat(cols), torch.cat(vals), (n, n)))
        lam = self.config.lambda_coeff
        rows, cols, vals = [learned.row], [learned.col], [(1 - lam) * learned.values]
        for j, o in enumerate(self.original_graphs):
            rows.append(o.row)
            cols.append(o.col)
            vals.append(lam * w[j] * o.values)
        return coalesce_sum(torch.cat(rows), torch.cat(cols), torch.cat(vals), (n, n))

    def _knn_edges(self, basis: list[Tensor], k: int) -> list[tuple[Tensor, Tensor]]:
        """Each basis' kNN edges (``topk_cosine_edges``), reused while the basis is bit for bit
        the one they were found for.

        Why: the trainer evaluates after each epoch (building G from the current parameters)
        and the next epoch's ``pre_epoch`` builds G again from the very same parameters; the
        kNN search (an I x I similarity and its top-k per modality) was about a sixth of a
        movielens epoch. Why compare values, not parameter versions: the fused Adam step
        updates parameters without bumping their version counters. Under ``loss`` and
        ``content`` the adapters' dropout makes the training basis differ from the evaluation
        one, so the comparison fails there and the search runs, as before."""
        cached = self._edges
        if cached is not None and len(cached[0]) == len(basis):
            if all(
                a.shape == x.shape and a.device == x.device and torch.equal(a, x.detach())
                for a, x in zip(cached[0], basis)
            ):
                return cached[1]
        edges = [topk_cosine_edges(x, k, self.config.knn_method) for x in basis]
        self._edges = ([x.detach().clone() for x in basis], edges)
        return edges

    def pre_epoch(self, epoch: int) -> None:
        """Rebuild the learned graph; it carries gradient for this epoch's first batch."""
        with torch.enable_grad():
            content = self.content()
            self._train_graph = self.build_item_graph(content)
            self._train_content = content if self._view_reads_content else None
        self._graph_has_grad = True

    # -- forward ------------------------------------------------------------
    def _item_view_input(self, content: list[Tensor] | None) -> Tensor:
        """What G propagates: E_i (base, "content"), (1/M) sum_m a_m ("forward"), sum_m w_m a_m ("loss")."""
        if not self._view_reads_content:
            return self.item_embedding
        if self.insertion == "forward":
            return torch.stack(self.adapted(content)).mean(0)
        w = self.modal_logits.softmax(0)
        return sum(w[j] * a for j, a in enumerate(self.adapted(content)))

    def _forward(self, graph: SparseGraph, content: list[Tensor] | None) -> tuple[Tensor, Tensor]:
        h = self._item_view_input(content)
        with _no_autocast(h.device):
            for _ in range(self.config.item_layers):
                h = graph @ h.float()
            ego = [self.user_embedding.float(), self.item_embedding.float()]
            users, items = propagate(self.norm_adj, ego, self.config.n_ui_layers)
        return users, items + F.normalize(h, dim=1)

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor | None) -> Tensor:
        if neg_items is None:
            raise ValueError("LATTICE: BPR needs negative items")
        if self._train_graph is None:
            self.pre_epoch(-1)
        user_all, item_all = self._forward(self._train_graph, self._train_content)
        if self._graph_has_grad:
            # Reference behaviour: only the rebuild batch back-propagates into the graph.
            self._train_graph = self._train_graph.detach()
            if self._train_content is not None:
                self._train_content = [c.detach() for c in self._train_content]
            self._graph_has_grad = False
        reg = counted_reg(
            [(user_all, users), (item_all, pos_items), (item_all, neg_items)],
            form=self.config.reg_form,
            batch_size=self.config.batch_size,
        )
        return bpr_gathered(user_all, item_all, users, pos_items, neg_items) + self.config.reg * reg

    def inference_embeddings(self) -> tuple[Tensor, Tensor]:
        """Rebuild G from the current parameters once and embed every user and item."""
        with torch.no_grad():
            content = self.content()
            graph = self.build_item_graph(content)
            users, items = self._forward(graph, content if self._view_reads_content else None)
        return users, items
