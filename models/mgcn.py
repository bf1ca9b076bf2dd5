"""MGCN (Yu et al., MM 2023), plus its BeFA insertion, the authors' published BeFA model and its skeleton alone.

Equations (spec section 3; d = ``embedding_dim``, M >= 1 modalities, N = U + I rows):

    content   = LightGCN(D^-1/2 A D^-1/2, [E_u; E_i], n_ui_layers)        (N x d)
    c_m       = P_m X_m                                                    (I x d)
    z_m       = E_i * sigmoid(W_m c_m + b_m)                               purifier
    z_m      <- G_m^{item_layers} z_m                                      G_m frozen weighted kNN graph of X_m
    u_m       = R_hat z_m                                                  R_hat = U x I block of D^-1/2 A D^-1/2
    v_m       = [u_m; z_m]                                                 (N x d) modality view
    alpha     = softmax_m( q(v_m) ),  q = Linear(d, d) - tanh - Linear(d, 1, no bias)
    common    = sum_m alpha_m v_m
    specific_m = (v_m - common) * sigmoid(W_c,m content + b_c,m)
    side      = (sum_m specific_m + common) / (M + 1)
    final     = content + side                                             score = user . item
    loss = BPR(final) + reg * 0.5 (|u|^2 + |i+|^2 + |i-|^2) / batch_size   (reg_form "squared")
           + cl * [InfoNCE(side_i[pos], content_i[pos]) + InfoNCE(side_u[users], content_u[users])]
    InfoNCE(a, b) = mean_r -log( exp(cos(a_r, b_r)/tau) / sum_s exp(cos(a_r, b_s)/tau) ),
                    in-batch negatives (rows of the same batch, duplicates included), tau = 0.2

+BeFA (``adapter="befa"``, spec section 4), replacing the purifier gate (W_m, b_m do not
exist); g_m is the adapter's gate (``models.befa``), ``befa.insertion`` says what it gates:

  "forward" (default; the authors' placement, and what every MGCN +BeFA run recorded before
             the option existed ran):
    z_m = BeFA_m(c_m, E_i) = E_i * g_m(c_m)
  "content" (gate the content itself, in place of the purifier output):
    z_m = BeFA_m(c_m, c_m) = c_m * g_m(c_m)
  "loss": does not exist for MGCN. MGCN has no content loss term: its only use of c_m is the
          purifier, on the scoring path, which "forward" replaces. ``MGCN.Config`` refuses
          it (a ValueError naming "forward" and "content") before any model is built.
  (everything from z_m <- G_m z_m on unchanged.)
  default variant: the fuser and InfoNCE kept;
  ``befa.variant="authors"`` (the authors' public model, with either insertion):
  side = (1/M) sum_m v_m, no fuser, no InfoNCE term: loss = BPR + reg L2/batch.

  Cost per step: both insertions run the M adapters over all I items every batch, where
  base MGCN runs one Linear(d, d) per modality (the projection c_m, already per batch in
  base MGCN, is not repeated). Under "content" the modality views no longer carry E_i: E_i
  is trained by the LightGCN path (BPR, L2, InfoNCE's content side) alone.

The authors' skeleton without the adapter (``skeleton="authors"``, the study's architecture
control): the purifier gate z_m = E_i * sigmoid(W_m c_m + b_m) as in base MGCN, then
side = (1/M) sum_m v_m, no fuser, no InfoNCE: loss = BPR + reg L2/batch. It separates the
adapter's effect (authors' +BeFA vs this) from the change of architecture (this vs the
model the paper names, LATTICE). ``skeleton="authors"`` and ``befa.variant="authors"``
select the same skeleton: the model has it when either says so, so ``adapter="befa"`` with
``skeleton="authors"`` is the same model as with ``befa.variant="authors"`` (tested), and
``skeleton="full"`` set explicitly beside ``befa.variant="authors"`` is refused. Why a
top-level field rather than reading ``befa.variant`` without the adapter: the skeleton is
the base model's, not the adapter's; every ``befa.*`` key is documented (and searched,
``--set``) as the adapter's, unread when ``adapter="none"``, so a record of a base run
that carried ``befa.variant="authors"`` would silently change model. ``skeleton`` is left
out of every dump while "full" (``ModelConfig.DUMP_OMITS``): the configs, hashes and run
folders of every MGCN run made before it stay byte-identical, and an old record (no
``skeleton`` key) validates to "full" and builds the model it ran.

Choices (where the spec is silent):

- The content gate W_c is one Linear(d, d) per modality, as in the reference
  (``gate_image_prefer``/``gate_text_prefer``) and the MGCN paper; its input is the full
  LightGCN output row (users and items alike), so users are gated too.
- The fuser and the side/final rows are row-wise functions, so training computes them only
  for the batch's users, positives and negatives (identical values to computing every row
  and indexing, which the reference does); the propagations (LightGCN, G_m, R_hat) and the
  projections run over all rows every batch, as in the reference, since every item feeds
  the graphs.
- With M = 1 the fuser gives alpha = 1, so side = v_1 / 2 (the formula, not a special case).
- Default cl_weight = 0.01, the middle of the grid {0.001, 0.01, 0.1}.
- The L2 term divides by the configured batch size (reference); embeddings are
  Xavier-uniform; other layers keep PyTorch's default initialisation.
- Zero modalities raise ValueError (MGCN has no content-free form); ``befa.variant`` and
  ``befa.insertion`` are only read when ``adapter="befa"`` (so ``adapter="none"`` with
  insertion "loss" is accepted and means base MGCN).
- Regulariser: checked against the reference's ``bpr_loss`` (0.5 x squared L2 of the final
  batch rows / the configured batch size): ``reg_form="squared"`` (default) is that form;
  ``"norm"`` = (|u|_F + |i+|_F + |i-|_F) / batch_size is offered for comparison. The
  InfoNCE weight ``cl_weight`` is not a norm and has no form.
- Cold items (no train interaction): the content view z_m = E_i * sigmoid(W_m c_m + b_m)
  gates the item's own E_i, which for a cold item only ever got BPR-negative, graph-
  neighbour and L2 gradients; one hop of G_m mixes in its content neighbours' z, so the
  item view still carries content. +BeFA "forward" has the same dependence
  (z_m = E_i * g_m(c_m)): base MGCN and "forward" both gate the behaviour embedding, so
  neither gives a cold item a representation independent of its untrained E_i beyond the
  graph hop. "content" (z_m = c_m * g_m(c_m)) does: its modality views are content alone.
- Cost (why an epoch cannot be cheap on CPU): every batch needs c_m for every item (the
  batch's users reach, through R_hat and one hop of G_m, all 7,050 amazon-baby items; counted),
  so the 4096-d projection is two full (7,050 x 4096 x 64) products per batch, forward and
  weight gradient, 7.4 GFLOP, ~61 ms on 2 cores of this project's CPU machines: 3.6 s of a
  59-batch epoch before anything else. The two InfoNCE terms run over the batch's DISTINCT
  users and positives with their counts as weights (``unique_rows``; identical loss and
  gradients): three (n x n x 64) products each, n ~ 1,900 users and ~1,470 items on
  amazon-baby, ~700 and ~660 on movielens (from 2,048), which made the movielens epoch
  2x faster. ``content.project`` and ``info_nce`` keep the rest small.
- Frozen raw features by default (``train_features=True`` makes them trainable, as in the
  reference). The kNN graphs G_m are built from the raw features once and cached on disk
  under (feature snapshot, k, variant, split), never by k alone.
- Where an epoch goes (movielens, 22 batches, one thread, ``make bench-profile-epoch``,
  2026-12-06, commit 3f6dfe2): 0.56 s for 31 GFLOP, 2.9x its floor at the measured matmul
  rate: dense products (projections, the fuser's Linear layers, InfoNCE: 44%), then
  elementwise passes, sparse products and gathers. The fuser runs once per distinct batch
  row (-29% per epoch); BPR and L2 read those rows by index. Live against the reference:
  4.7-5.0x frozen (target 5x, on the line), 3.5-4.2x trained (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from torch import Tensor, nn

from models import graphs
from models.base import ModelConfig, Recommender, TrainData
from models.befa import BeFA
from models.content import FeatureProjection
from models.losses import RegForm, bpr_gathered, counted_reg
from models.sparse import SparseGraph, propagate


class _InfoNCE(torch.autograd.Function):
    """(1/n) sum_r w_r [log sum_s w_s exp(l_rs) - l_rr], l = a b^T, n = sum_r w_r; gradient without softmax passes.

    w = row multiplicities (None: all 1). e = exp(l - c) (c = 0 when exp cannot overflow,
    else the row max), s = e w (the row sums), k_r = w_r / n:
        d/da = k (e (w b) / s - b),   d/db = w (e^T (a k / s)) - a k
    so the (rows x rows) matrix is made by one product and one in-place exp, summed by one
    matrix-vector product and read by the two backward products; the weights only ever
    scale (rows x d) factors, and no softmax matrix is formed."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # exp row sums are not safe in bf16
    def forward(ctx, a: Tensor, b: Tensor, weights: Tensor | None, bound: float) -> Tensor:  # type: ignore[override]
        n = a.size(0)
        w = torch.ones(n, dtype=a.dtype, device=a.device) if weights is None else weights
        logits = a @ b.T
        diag = logits.diagonal().clone()
        if bound <= 40.0:  # exp(40) is far below float32's max: no shift needed
            shift = None
            e = logits.exp_()
        else:
            shift = logits.amax(dim=1, keepdim=True)
            e = logits.sub_(shift).exp_()
        rowsum = e.sum(dim=1) if weights is None else e @ w
        lse = rowsum.log() if shift is None else rowsum.log() + shift.squeeze(1)
        k = w / w.sum()
        ctx.weighted = weights is not None
        ctx.save_for_backward(a, b, e, rowsum, w, k)
        return ((lse - diag) * k).sum()

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        a, b, e, rowsum, w, k = ctx.saved_tensors
        k = (k * grad).unsqueeze(1)
        inv = rowsum.reciprocal().unsqueeze(1)
        bw = b * w.unsqueeze(1) if ctx.weighted else b
        grad_a = (e @ bw).mul_(inv).sub_(b).mul_(k)
        grad_b = e.T @ (a * (inv * k))
        if ctx.weighted:
            grad_b.mul_(w.unsqueeze(1))
        grad_b.sub_(a * k)
        return grad_a, grad_b, None, None


def info_nce(view1: Tensor, view2: Tensor, temperature: float, weights: Tensor | None = None) -> Tensor:
    """Mean InfoNCE of matching rows, cosine similarity, in-batch negatives:

        mean_r -log( exp(cos(a_r, b_r)/tau) / sum_s exp(cos(a_r, b_s)/tau) )

    ``weights``: row r stands for ``weights[r]`` identical rows (a batch's repeated users or
    items, passed once each), so the value and the gradients equal those of the batch with
    its duplicates, at the cost of the unique rows only (see :func:`unique_rows`).

    Why a hand-written gradient: with 2048-row batches the (rows x rows) logits are 16 MB,
    and autograd's log-softmax + NLL made ~6 passes over them (fills, forward, backward),
    measured at about as much time as the 2048 x 2048 x 64 products themselves on CPU.
    Cosines bound the logits by 1/tau, which is what lets ``_InfoNCE`` skip the max shift.
    Tested against the dense formula, values and gradients, both branches, with and
    without duplicates."""
    a = F.normalize(view1, dim=1) * (1.0 / temperature)
    b = F.normalize(view2, dim=1)
    w = None if weights is None else weights.to(a.dtype)
    return _InfoNCE.apply(a, b, w, 1.0 / temperature)


def unique_rows(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(unique ids, the batch position of each one's first occurrence, its count).

    Why: a batch's in-batch InfoNCE over repeated ids (943 movielens users fill a 2,048-row
    batch with about 700 distinct ones, and about 660 distinct positives) is the same sum
    over distinct rows with multiplicities, and the (rows x rows) work shrinks with the
    square of the distinct count: 8x fewer products there, about 1.2x on amazon-baby."""
    uniq, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full_like(uniq, ids.numel()).scatter_reduce_(0, inverse, positions, "amin")
    return uniq, first, counts


# the BeFA insertions MGCN has (module docstring); "loss" has no meaning here
INSERTIONS = ("forward", "content")


def _no_autocast(device: torch.device):
    return torch.autocast(device.type, enabled=False) if device.type == "cuda" else contextlib.nullcontext()


class MGCN(Recommender):
    """Multi-view graph convolution with a behaviour-guided purifier. See the module docstring."""

    name: ClassVar[str] = "mgcn"
    uses_content: ClassVar[bool] = True
    accepts_befa: ClassVar[bool] = True
    serves_new_items: ClassVar[bool] = True  # see the docstring: items added after training
    GRID: ClassVar[dict[str, list]] = {"cl_weight": [0.001, 0.01, 0.1]}

    class Config(ModelConfig):
        lr_decay: tuple[float, int] | None = (0.96, 50)
        reg: float = Field(1e-4, ge=0, description="L2/batch weight")
        reg_form: RegForm = Field(
            "squared", description="'squared': 0.5 ||.||^2 / batch (reference); 'norm': ||.||_F / batch"
        )
        cl_weight: float = Field(0.01, ge=0, description="InfoNCE weight (grid 0.001, 0.01, 0.1)")
        temperature: float = Field(0.2, gt=0)
        knn_k: int = Field(10, ge=1)
        knn_method: graphs.KnnMethod = Field(
            "auto",
            description=(
                "item kNN graphs: exact, approx (IVF, models.graphs.ApproxKnn) "
                "or auto (approx from APPROX_KNN_MIN_ITEMS items)"
            ),
        )
        n_ui_layers: int = Field(2, ge=0)
        item_layers: int = Field(1, ge=0, description="hops of the modality item graphs")
        skeleton: Literal["full", "authors"] = Field(
            "full",
            description=(
                "'authors': the authors' public model's skeleton (no fuser, no InfoNCE, side = mean of the "
                "modality views), with the purifier gate or BeFA; befa.variant='authors' selects it too"
            ),
        )
        DUMP_OMITS: ClassVar[dict[str, Any]] = {**ModelConfig.DUMP_OMITS, "skeleton": "full"}

        @property
        def authors_skeleton(self) -> bool:
            """Whether the model is the authors' skeleton (no fuser, no InfoNCE): ``skeleton``, or
            ``befa.variant`` with the adapter (module docstring)."""
            return self.skeleton == "authors" or (self.adapter == "befa" and self.befa.variant == "authors")

        @model_validator(mode="after")
        def _skeleton_agrees(self) -> "MGCN.Config":
            if "skeleton" in self.model_fields_set and self.skeleton == "full" and self.authors_skeleton:
                raise ValueError("MGCN: skeleton='full' contradicts befa.variant='authors' (the authors' skeleton)")
            return self

        @model_validator(mode="after")
        def _insertion_exists(self) -> "MGCN.Config":
            # Refused here, so make_config and the CLI's early checks catch it before any work; raised
            # as a ValidationError (a ValueError) located at befa.insertion, so `--set` errors name that key.
            insertion = self.befa.insertion
            if self.adapter == "befa" and insertion not in INSERTIONS:
                message = (
                    f"MGCN: befa.insertion={insertion!r} does not exist for MGCN: its adapter replaces the purifier "
                    "gate, on the path it scores with, and it has no content loss term; "
                    f"use {' or '.join(map(repr, INSERTIONS))}"
                )
                error = InitErrorDetails(
                    type=PydanticCustomError("value_error", message), loc=("befa", "insertion"), input=insertion
                )
                raise ValidationError.from_exception_data("MGCN.Config", [error])
            return self

    def __init__(self, data: TrainData, config: "MGCN.Config"):
        super().__init__(data, config)
        self.modalities = graphs.check_modalities(data, "MGCN")
        d, dev = config.embedding_dim, data.device
        self.befa = config.adapter == "befa"
        self.authors = config.authors_skeleton
        if self.befa and config.befa.insertion not in INSERTIONS:  # a config built without validation
            raise ValueError(
                f"MGCN: befa.insertion={config.befa.insertion!r} does not exist for MGCN; use {INSERTIONS}"
            )
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.num_users, d, device=dev)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.num_items, d, device=dev)))
        # raw table X_m (frozen buffer sharing the caller's storage, or trainable) and P_m
        self.projections = nn.ModuleDict(
            {
                m: FeatureProjection(data.features[m].to(dev), d, config.train_features, init="default")
                for m in self.modalities
            }
        )
        if self.befa:
            self.adapters = nn.ModuleDict(
                {m: BeFA(d, config.befa.t, config.befa.dropout).to(dev) for m in self.modalities}
            )
        else:
            self.purifiers = nn.ModuleDict({m: nn.Linear(d, d, device=dev) for m in self.modalities})
        if not self.authors:
            self.query = nn.Sequential(nn.Linear(d, d, device=dev), nn.Tanh(), nn.Linear(d, 1, bias=False, device=dev))
            self.prefer_gates = nn.ModuleDict({m: nn.Linear(d, d, device=dev) for m in self.modalities})
        # SparseGraph: CSR products whose backward reuses a transpose built once (models.sparse).
        u, i, nu, ni = data.train_users, data.train_items, data.num_users, data.num_items
        self.norm_adj = SparseGraph.from_csr(graphs.interaction_adjacency(nu, ni, u, i, "sym"), symmetric=True)
        self.user_item = SparseGraph.from_csr(graphs.user_item_norm(nu, ni, u, i))
        self.item_graphs = {
            m: SparseGraph.from_csr(graphs.original_item_graph(data, m, config.knn_k, config.knn_method))
            for m in self.modalities
        }

    def feature(self, modality: str) -> Tensor:
        return self.projections[modality].table

    def feature_table_parameters(self) -> int:
        return sum(p.num_table_entries for p in self.projections.values())

    # -- views ----------------------------------------------------------------
    def purified(self, modality: str) -> Tensor:
        """z_m before propagation: E_i gated by the content (purifier, BeFA "forward"), or
        the content gated by itself (BeFA "content")."""
        c = self.projections[modality]()
        if self.befa:
            return self.adapters[modality](c, c if self.config.befa.insertion == "content" else self.item_embedding)
        return self.item_embedding * torch.sigmoid(self.purifiers[modality](c))

    def views(self) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """(content N x d, [(u_m U x d, z_m I x d) per modality]); v_m = [u_m; z_m]."""
        views = []
        with _no_autocast(self.item_embedding.device):
            ego = torch.cat([self.user_embedding, self.item_embedding]).float()
            (content,) = propagate(self.norm_adj, [ego], self.config.n_ui_layers)
            for m in self.modalities:
                z = self.purified(m).float()
                for _ in range(self.config.item_layers):
                    z = self.item_graphs[m] @ z
                views.append((self.user_item @ z, z))
        return content, views

    def side(self, content: Tensor, views: list[Tensor]) -> Tensor:
        """Row-wise fusion of the modality views (fuser, or the authors' mean)."""
        if self.authors:
            return torch.stack(views).mean(0)
        scores = torch.cat([self.query(v) for v in views], dim=1)  # (rows, M)
        alpha = scores.softmax(dim=1)
        common = sum(alpha[:, j : j + 1] * v for j, v in enumerate(views))
        specific = sum(
            (v - common) * torch.sigmoid(self.prefer_gates[m](content)) for m, v in zip(self.modalities, views)
        )
        return (specific + common) / (len(views) + 1)

    # -- recommender hooks ------------------------------------------------------
    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor | None) -> Tensor:
        if neg_items is None:
            raise ValueError("MGCN: BPR needs negative items")
        content, views = self.views()
        # side is row-wise: computed once per distinct row (about a third of the 3 x batch rows)
        rows = torch.cat([users, pos_items + self.num_users, neg_items + self.num_users])
        uniq, inv = torch.unique(rows, return_inverse=True)
        k = int(torch.searchsorted(uniq, self.num_users))  # sorted: users first, then items
        content_rows = content[uniq]
        side_rows = self.side(content_rows, [torch.cat([u[uniq[:k]], z[uniq[k:] - self.num_users]]) for u, z in views])
        final_rows = content_rows + side_rows
        # the batch's u, i+, i- are rows of final_rows: BPR and L2 read them by index, never
        # gathering (3 x batch) x d copies whose slices' backward fill zero tables
        b = users.numel()
        at_u, at_p, at_n = inv[:b], inv[b : 2 * b], inv[2 * b :]
        pairs = [(final_rows, at_u), (final_rows, at_p), (final_rows, at_n)]
        reg = counted_reg(pairs, form=self.config.reg_form, batch_size=self.config.batch_size)
        loss = bpr_gathered(final_rows, final_rows, at_u, at_p, at_n) + self.config.reg * reg
        if not self.authors and self.config.cl_weight > 0:
            t = self.config.temperature
            items_u, items_at, items_n = unique_rows(pos_items)
            users_u, users_at, users_n = unique_rows(users)
            cl = info_nce(side_rows[at_p[items_at]], content[items_u + self.num_users], t, items_n) + info_nce(
                side_rows[at_u[users_at]], content[users_u], t, users_n
            )
            loss = loss + self.config.cl_weight * cl
        return loss

    def inference_embeddings(self) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            content, views = self.views()
            final = content + self.side(content, [torch.cat(v) for v in views])
        return final.split([self.num_users, self.num_items])
