"""BM3: bootstrapped multimodal model, no negative sampling (spec section 3), and its BeFA insertions."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from models.base import ModelConfig, Recommender, TrainData
from models.befa import BeFA, adapt_all
from models.content import FeatureProjection, make_projection
from models.dropout import dropout
from models.graphs import interaction_adjacency
from models.losses import RegForm, embedding_reg, negative_cosine
from models.sparse import SparseGraph, propagate


class BM3(Recommender):
    """BM3 (Zhou et al. 2023) on the project's graphs.

    Forward:
        [U*; I_g] = mean(H^(0..L)), H^(0) = [E_u; E_i], H^(l+1) = Â H^(l), Â = D^-1/2 A D^-1/2  (L = 1)
        I* = I_g + E_i                              (residual ID embedding)
        pred(x) = W x + b                           (one predictor Linear(d, d), shared by everything)
    Loss, batch of (u, i) pairs (no negatives):
        ũ = Dropout_p(U*).detach(),  ĩ = Dropout_p(I*).detach()          (target views, p = dropout)
        L_ui = 1 - cos(pred(U*_u), ĩ_i)   L_iu = 1 - cos(pred(I*_i), ũ_u)
        for each modality m, c_m = P_m X_m,  c̃_m = Dropout_p(c_m).detach():
        L_m = [1 - cos(pred(c_m,i), ĩ_i)] + [1 - cos(pred(c_m,i), c̃_m,i)]
        loss = mean(L_ui) + mean(L_iu) + reg * (||U*||_F + ||I*||_F) / I + cl_weight * sum_m mean(L_m)
        (reg_form "norm", default, the reference's EmbLoss on the full tables; "squared":
        0.5 (||U*||_F^2 + ||I*||_F^2) / I)
        (cosine terms are averaged over the batch rows; the norm term uses the full tables)
    Scores: pred(U*_u) . pred(I*_i); in base BM3 content features are used only in training.
    +BeFA (``adapter='befa'``, g_m = BeFA_m's gate, M = number of modalities), by ``befa.insertion``:
    - "forward" (default): the gated behaviour embedding replaces the residual E_i,
          I*_i = I_g,i + (1/M) sum_m E_i * g_m(c_m,i)
      everywhere I* appears (scores, target views ĩ, the norm term); the content terms L_m stay on
      c_m as in base BM3. So the adapters change the scores at inference. Cost: c_m = P_m X_m and
      g_m(c_m) for every item at every step (the norm term needs all of I*), as the reference BM3
      projects every item every batch anyway; the batch's c_m,i are then rows of that one
      all-item projection (no second projection in the step). With no modality: I* = I_g + E_i.
    - "loss" (the earlier design, an ablation; old runs load as this): I* as base BM3, and the
      content terms use adapted_m = E_i * g_m(c_m) in place of c_m (online and target views both
      from adapted_m). The gate only acts in training: the adapters do not change the scores.
      Extra cost: the adapters on the batch's distinct items.
    - "content": the content terms use adapted_m = c_m * g_m(c_m) in place of c_m (online and
      target views both from adapted_m); I* as base BM3, so the adapters do not change the scores
      of trained items at inference either (they do change a new item's served row, see
      ``serving_embeddings``). Extra cost: the adapters on the batch's distinct items.

    Choices where the spec is silent:
    - Target views: dropout is applied to the batch's distinct users and items, so a user or
      item repeated in a batch shares one mask, as in the reference (which drops out the full
      tables, then indexes them); same distribution, a fraction of the random draws.
    - c_m is computed only for the batch's distinct items (the reference projects every item
      every batch; the loss and its gradient are the same), except under "forward" (above).
    - With no modality the content terms vanish (not an error).
    - Regulariser: checked against the reference (``EmbLoss`` of the full online user and
      item tables, un-squared norms / I): ``reg_form="norm"`` (default) is that form.
    - Cold items (no train interaction): with no edge the propagated layers of item i are 0,
      so I*_i = E_i / (L + 1) + E_i (under "forward": E_i / (L + 1) + (1/M) sum_m E_i * g_m(c_m,i));
      E_i gets gradient only from the full-table norm term (BM3 has no negatives),
      i.e. it only shrinks. Base BM3 uses content only in training (the L_m terms align
      pred(c_m) with the item's target view), so a cold item is scored from a near-initial,
      shrunk E_i: finite and ranked, but not from its content. No insertion changes that:
      "forward" gates that same shrunk E_i, "loss" and "content" change only training terms.
    - GRID {num_layers: [1, 2], dropout: [0.3, 0.5], reg: [0.1, 0.01]}: a small grid around the
      spec's defaults. P_m and the predictor: Xavier-normal weights; E_u, E_i: Xavier-uniform.

    Where an epoch goes (movielens, 22 batches, one thread, ``make bench-profile-epoch``,
    2026-12-06, commit 3f6dfe2): 0.20 s for 9.7 GFLOP, 3.3x its floor at the measured matmul
    rate: dense products (projections, predictor: 27%), then gathers and ~250 small ops a
    batch. The cosine terms run fused (``negative_cosine``; ``F.cosine_similarity``'s
    divisions were 17% of the epoch), the four content terms once per distinct item with
    its count as weight (0.234 -> 0.20 s). Live against the reference: 5.3-5.4x with
    frozen tables (target 5x), 2.6-3.1x like for like with trained tables (docs/benchmarks.md).
    """

    name = "bm3"
    uses_content = True
    accepts_befa = True
    serves_new_items = True  # see the docstring: items added after training

    class Config(ModelConfig):
        num_layers: int = Field(1, ge=0)
        dropout: float = Field(0.5, ge=0, lt=1, description="dropout of the target views")
        reg: float = Field(0.1, ge=0)
        reg_form: RegForm = Field("norm", description="'norm': ||.||_F / I (reference); 'squared': 0.5 ||.||^2 / I")
        cl_weight: float = Field(2.0, ge=0)
        uses_negatives: bool = False

    GRID: ClassVar[dict[str, list]] = {"num_layers": [1, 2], "dropout": [0.3, 0.5], "reg": [0.1, 0.01]}

    def __init__(self, data: TrainData, config: "BM3.Config | None" = None):
        config = config or BM3.Config()
        super().__init__(data, config)
        d, dev = config.embedding_dim, data.device
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.num_users, d, device=dev)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.num_items, d, device=dev)))
        self.predictor = make_projection(d, d).to(dev)
        self.adj = SparseGraph.from_csr(
            interaction_adjacency(data.num_users, data.num_items, data.train_users, data.train_items, "sym"),
            symmetric=True,
        )
        modalities = data.modalities
        self.projections = nn.ModuleDict(
            {m: FeatureProjection(data.features[m].to(dev), d, config.train_features) for m in modalities}
        )
        # where BeFA acts (None without adapters): see the class docstring
        self.insertion = config.befa.insertion if config.adapter == "befa" else None
        if config.adapter == "befa":
            self.adapters = nn.ModuleDict({m: BeFA(d, config.befa.t, config.befa.dropout) for m in modalities})

    def _forward(self) -> tuple[Tensor, Tensor, list[Tensor] | None]:
        """(U*, I*, c_m of every item per modality under "forward", else None)."""
        users, items = propagate(self.adj, [self.user_embedding, self.item_embedding], self.config.num_layers)
        if self.insertion != "forward" or not len(self.projections):
            return users, items + self.item_embedding, None
        cs = [self.projections[m]() for m in self.projections]  # every item: no gather buffer involved
        adapted = self.adapted(cs)
        return users, items + sum(adapted) / len(adapted), cs

    def adapted(self, contents: list[Tensor] | None = None) -> list[Tensor]:
        """E_i * g_m(c_m) of every item, per modality (the "forward" insertion's residual terms);
        ``contents``: c_m of every item if already computed."""
        cs = contents if contents is not None else [self.projections[m]() for m in self.projections]
        return adapt_all([self.adapters[m] for m in self.projections], cs, self.item_embedding)

    def contents(self, rows: Tensor, every_item: list[Tensor] | None = None) -> list[Tensor]:
        """What the content terms consume for the given items, per modality: c_m (base BM3,
        "forward"), E_i * g_m(c_m) ("loss") or c_m * g_m(c_m) ("content"). ``every_item``: c_m of
        every item, already computed this step (its rows are taken instead of projecting again)."""
        if every_item is not None:
            cs = [c[rows] for c in every_item]
        else:
            cs = [self.projections[m](rows) for m in self.projections]
        if self.insertion == "loss":
            # one gather of E_i for all modalities, and the adapters run together
            cs = adapt_all([self.adapters[m] for m in self.projections], cs, self.item_embedding[rows])
        elif self.insertion == "content":
            cs = [self.adapters[m](c, c) for m, c in zip(self.projections, cs)]  # c_m * g_m(c_m)
        return cs

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor | None = None) -> Tensor:
        p = self.config.dropout
        u_all, i_all, every_item = self._forward()
        # dropout on the distinct rows only (a repeated user or item shares one mask, as when the
        # reference drops out the whole table and indexes it), far cheaper than the full tables
        user_rows, user_inv = torch.unique(users, return_inverse=True)
        rows, inv = torch.unique(pos_items, return_inverse=True)
        with torch.no_grad():
            u_target = dropout(u_all[user_rows], p)[user_inv]
            i_target_rows = dropout(i_all[rows], p)
        u_online = self.predictor(u_all[users])
        i_online = self.predictor(i_all[pos_items])
        loss = negative_cosine(u_online, i_target_rows[inv]) + negative_cosine(i_online, u_target)
        loss = loss + self.config.reg * embedding_reg(u_all, i_all, form=self.config.reg_form)
        if len(self.projections) and self.config.cl_weight > 0:
            # the content terms pair an item with itself: one row per distinct item, weighted
            # by how often it is in the batch (the same mean as over the batch's rows)
            share = torch.bincount(inv, minlength=rows.numel()).to(i_target_rows.dtype) / inv.numel()
            cl = 0.0
            for c in self.contents(rows, every_item):
                c_target = dropout(c.detach(), p)  # at p = 0 dropout returns its input: detach first
                c_online = self.predictor(c)
                cl = cl + negative_cosine(c_online, i_target_rows, share) + negative_cosine(c_online, c_target, share)
            loss = loss + self.config.cl_weight * cl
        return loss

    def befa_inert(self) -> str | None:
        if self.insertion in ("loss", "content") and self.config.cl_weight == 0 and len(self.projections):
            return (
                f"under insertion {self.insertion!r} BM3's adapter enters only the content terms, "
                "which cl_weight = 0 skips"
            )
        return None

    def inference_embeddings(self) -> tuple[Tensor, Tensor]:
        u, i, _ = self._forward()
        return self.predictor(u), self.predictor(i)

    def serving_embeddings(self, user_emb: Tensor, item_emb: Tensor, trained_items: int) -> tuple[Tensor, Tensor]:
        """New items (rows >= ``trained_items``): BM3's content terms pull ``predictor`` of what
        they consume towards the item's graph embedding I*. So a new item's graph embedding is
        taken as the mean over modalities of ``predictor`` of that content and served as
        ``predictor`` of that, like every item. The content is c_m under "forward" and "loss"
        (under "loss" the terms consume E_i * g_m(c_m), zero for a new item, whose ID embedding
        is zero, so the un-gated c_m is used), and c_m * g_m(c_m) under "content"."""
        if item_emb.size(0) <= trained_items or not len(self.projections):
            return user_emb, item_emb
        rows = torch.arange(trained_items, item_emb.size(0), device=item_emb.device)
        cs = [self.projections[m](rows) for m in self.projections]
        if self.insertion == "content":
            cs = [self.adapters[m](c, c) for m, c in zip(self.projections, cs)]
        graph = torch.stack([self.predictor(c) for c in cs]).mean(0)
        item_emb = item_emb.clone()
        item_emb[trained_items:] = self.predictor(graph).float()
        return user_emb, item_emb

    def feature_table_parameters(self) -> int:
        return sum(p.num_table_entries for p in self.projections.values())
