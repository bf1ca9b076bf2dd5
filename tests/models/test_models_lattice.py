"""LATTICE: dense re-computation of the equations (base and the three BeFA insertions),
sparse = dense learned graph, gradients, where the adapters reach the scores, modality
counts, feature tables, a short training run that must beat random ranking."""

from __future__ import annotations

import math

import pytest
import torch

import models.graphs as graphs
import models.sparse as sparse_mod
from models.base import TrainData
from models.lattice import LATTICE

N_USERS, N_ITEMS = 6, 8
USERS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 0])
ITEMS = torch.tensor([0, 1, 1, 2, 3, 5, 4, 5, 6, 3, 7, 0, 6])


def tiny_data(dims=(("image", 5), ("text", 3)), seed=0) -> TrainData:
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(N_ITEMS, d, generator=g) for m, d in dims}
    return TrainData(N_USERS, N_ITEMS, USERS.clone(), ITEMS.clone(), features=feats)


# -- an independent dense implementation of the spec's equations ----------------
def dense_topk_graph(x: torch.Tensor, k: int) -> torch.Tensor:
    xn = x / x.norm(dim=1, keepdim=True)
    sim = xn @ xn.T
    val, idx = sim.topk(k, dim=1)
    return torch.zeros_like(sim).scatter(1, idx, val)


def sym_norm(s: torch.Tensor) -> torch.Tensor:
    d = s.sum(1).pow(-0.5)
    return d[:, None] * s * d[None, :]


def dense_adj_lattice(users, items, nu, ni) -> torch.Tensor:
    n = nu + ni
    a = torch.zeros(n, n)
    a[users, items + nu] = 1
    a[items + nu, users] = 1
    a = a + torch.eye(n)
    return a / a.sum(1, keepdim=True)


def dense_gate(adapter, c):
    z = torch.relu(c @ adapter.decouple.weight.T + adapter.decouple.bias)
    z = torch.relu(torch.tanh(z) @ adapter.filter.weight.T + adapter.filter.bias)
    return torch.sigmoid(z @ adapter.recombine.weight.T + adapter.recombine.bias)


def dense_lattice(model: LATTICE, data: TrainData, cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(users, items, G) straight from the equations, with dense matrices."""
    k = cfg.knn_k
    w = torch.softmax(model.modal_logits, 0)
    eu, ei = model.user_embedding, model.item_embedding
    contents = [
        data.features[m] @ model.projections[m].proj.weight.T + model.projections[m].proj.bias for m in data.modalities
    ]
    insertion = cfg.befa.insertion if cfg.adapter == "befa" else None
    gates = [dense_gate(model.adapters[m], c) for m, c in zip(data.modalities, contents)] if insertion else []
    gated_ids = [ei * g_ for g_ in gates]  # E_i * g_m(c_m)
    if insertion == "loss":  # the earlier design: graph from the gated ID embeddings, h mixes them with w
        basis, view = gated_ids, sum(w[j] * a for j, a in enumerate(gated_ids))
    elif insertion == "content":  # graph from c_m * g_m(c_m); h = G E_i
        basis, view = [c * g_ for c, g_ in zip(contents, gates)], ei
    elif insertion == "forward":  # graph from c_m; h = G (1/M) sum_m E_i * g_m(c_m)
        basis, view = contents, sum(gated_ids) / len(gated_ids)
    else:
        basis, view = contents, ei
    learned = sym_norm(sum(w[j] * dense_topk_graph(b, k) for j, b in enumerate(basis)))
    original = sum(w[j] * sym_norm(dense_topk_graph(data.features[m], k)) for j, m in enumerate(data.modalities))
    g = (1 - cfg.lambda_coeff) * learned + cfg.lambda_coeff * original
    h = g @ view
    adj = dense_adj_lattice(data.train_users, data.train_items, N_USERS, N_ITEMS)
    x = torch.cat([eu, ei])
    layers = [x]
    for _ in range(cfg.n_ui_layers):
        layers.append(adj @ layers[-1])
    out = torch.stack(layers).mean(0)
    return out[:N_USERS], out[N_USERS:] + h / h.norm(dim=1, keepdim=True), g


def dense_loss(users_e, items_e, u, p, n, reg, batch_size):
    us, ps, ns = users_e[u], items_e[p], items_e[n]
    bpr = -torch.log(torch.sigmoid((us * ps).sum(1) - (us * ns).sum(1))).mean()
    return bpr + reg * 0.5 * (us.pow(2).sum() + ps.pow(2).sum() + ns.pow(2).sum()) / batch_size


BATCH = (torch.tensor([0, 1, 2, 3, 5]), torch.tensor([1, 2, 3, 5, 7]), torch.tensor([4, 6, 0, 2, 1]))


INSERTIONS = ("forward", "loss", "content")


def befa_config(insertion: str | None, t: float = 2.0, dropout: float = 0.0, **kw) -> LATTICE.Config:
    """LATTICE's config, +BeFA at ``insertion`` (None: base); dropout 0 by default, so the
    training loss is the equations' (no random masks)."""
    if insertion is None:
        return LATTICE.Config(**kw)
    return LATTICE.Config(adapter="befa", befa={"t": t, "dropout": dropout, "insertion": insertion}, **kw)


@pytest.mark.parametrize("insertion", [None, *INSERTIONS])
def test_inference_and_loss_match_dense_equations(insertion, monkeypatch):
    monkeypatch.setattr(sparse_mod, "GATHER_ELEMENTS", 8)  # several chunks in the value-gradient gather
    torch.manual_seed(0)
    data = tiny_data()
    cfg = befa_config(insertion, embedding_dim=4, knn_k=3, reg=1e-2, batch_size=5)
    model = LATTICE(data, cfg)
    model.eval()
    users_e, items_e = model.inference_embeddings()
    with torch.no_grad():
        du, di, _ = dense_lattice(model, data, cfg)
    torch.testing.assert_close(users_e, du, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items_e, di, rtol=1e-5, atol=1e-6)

    model.train()
    model.pre_epoch(0)
    u, p, n = BATCH
    loss = model.loss(u, p, n)
    du, di, _ = dense_lattice(model, data, cfg)
    expected = dense_loss(du, di, u, p, n, cfg.reg, cfg.batch_size)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)

    # First batch: the gradient through the (sparse) learned graph equals the dense one.
    params = [p_ for p_ in model.parameters() if p_.requires_grad]
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad(expected, params, allow_unused=True)
    for (name, param), a, b in zip(model.named_parameters(), got, want):
        a = torch.zeros_like(param) if a is None else a
        b = torch.zeros_like(param) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")
    assert want[[n for n, _ in model.named_parameters()].index("projections.image.proj.weight")].abs().sum() > 0


def test_sparse_learned_graph_equals_dense_topk(monkeypatch):
    # Force several similarity blocks in the top-k search (2 rows per block).
    monkeypatch.setattr(graphs, "SIM_BLOCK_ELEMENTS", 2 * N_ITEMS)
    torch.manual_seed(1)
    data = tiny_data(seed=3)
    cfg = LATTICE.Config(embedding_dim=4, knn_k=3)
    model = LATTICE(data, cfg)
    with torch.no_grad():
        model.modal_logits.copy_(torch.tensor([0.3, -0.4]))  # unequal modality weights
        graph = model.build_item_graph(model.content())
        _, _, g_dense = dense_lattice(model, data, cfg)
    torch.testing.assert_close(graph.to_dense(), g_dense, rtol=1e-5, atol=1e-7)
    # Row k-sparsity: at most k learned + k original entries per modality and row.
    assert int((graph.to_dense() != 0).sum(1).max()) <= 2 * 2 * cfg.knn_k


# parameters that keep getting gradient after the rebuild batch (the graph is then detached)
LATER_BATCH_GRADIENTS = {
    None: {"user_embedding", "item_embedding"},
    "forward": {"user_embedding", "item_embedding", "adapters"},  # h = G mean_m E_i * g_m(c_m), every batch
    "loss": {"user_embedding", "item_embedding", "adapters", "modal_logits"},  # h = G sum_m w_m a_m
    "content": {"user_embedding", "item_embedding"},  # the adapters reach the scores only through G
}


@pytest.mark.parametrize("insertion", [None, *INSERTIONS])
def test_learned_graph_gradient_only_on_rebuild_batch_and_adapter_gets_gradients(insertion):
    """A training step under each insertion: finite loss, every parameter (the adapters
    included) gets gradient on the epoch's rebuild batch, an optimiser step keeps the model
    finite, and on later batches exactly the parameters the equations say keep theirs."""
    torch.manual_seed(0)
    data = tiny_data()
    model = LATTICE(data, befa_config(insertion, dropout=0.3, embedding_dim=4, knn_k=3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    model.pre_epoch(0)
    u, p, n = BATCH
    loss = model.loss(u, p, n)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p_ in model.named_parameters():
        assert p_.grad is not None and p_.grad.abs().sum() > 0, f"{name} got no gradient on the rebuild batch"
    opt.step()
    model.zero_grad(set_to_none=True)
    loss = model.loss(u, p, n)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p_ in model.named_parameters():
        if name.split(".")[0] in LATER_BATCH_GRADIENTS[insertion]:
            assert p_.grad is not None and p_.grad.abs().sum() > 0, f"{name} lost its gradient after batch 1"
        else:
            assert p_.grad is None or not p_.grad.any(), f"{name}: the detached graph must not feed it after batch 1"
    model.eval()
    assert all(torch.isfinite(x).all() for x in model.inference_embeddings())
    if insertion:
        assert model.parameter_report()["params_adapter"] == 2 * (4 * 8 + 8 + 8 * 8 + 8 + 8 * 4 + 4)


@pytest.mark.parametrize("insertion", INSERTIONS)
def test_where_the_adapters_reach_the_scores(insertion):
    """Perturbing one adapter's last bias (b3 of the image gate) after training-free init:
    the inference scores move under every LATTICE insertion. "forward" by construction
    (h = G mean_m E_i * g_m(c_m)); "content" through the learned graph G, rebuilt from
    c_m * g_m(c_m) at every evaluation; and "loss" too: unlike BM3's and FREEDOM's
    "loss" (content loss terms only, no effect on scores), LATTICE's earlier design already
    put the gate into the learned graph and the item view, so the adapters change its scores.
    The LightGCN user rows never read the item view, so users stay put in every case."""
    torch.manual_seed(0)
    data = tiny_data()
    model = LATTICE(data, befa_config(insertion, embedding_dim=4, knn_k=3)).eval()
    users0, items0 = model.inference_embeddings()
    with torch.no_grad():
        model.adapters["image"].recombine.bias.add_(torch.tensor([1.5, -2.0, 0.7, -0.9]))
    users1, items1 = model.inference_embeddings()
    torch.testing.assert_close(users1, users0)
    assert not torch.allclose(users1 @ items1.T, users0 @ items0.T, atol=1e-4)
    # the base model's scores do not depend on anything named adapter (it has none)
    assert not hasattr(LATTICE(data, befa_config(None, embedding_dim=4, knn_k=3)), "adapters")


def test_forward_keeps_base_lattices_learned_graph():
    """Under "forward" the learned graph is base LATTICE's (built from c_m), whatever the
    adapters are; under "loss" and "content" it is built from the adapted a_m."""
    torch.manual_seed(0)
    data = tiny_data()
    graphs_by = {}
    for insertion in (None, *INSERTIONS):
        torch.manual_seed(0)  # same E, P_m and omega in every model (the adapters are made last)
        model = LATTICE(data, befa_config(insertion, embedding_dim=4, knn_k=3)).eval()
        with torch.no_grad():
            graphs_by[insertion] = model.build_item_graph(model.content()).to_dense()
    torch.testing.assert_close(graphs_by["forward"], graphs_by[None])
    assert not torch.allclose(graphs_by["loss"], graphs_by[None])
    assert not torch.allclose(graphs_by["content"], graphs_by[None])


def test_zero_one_two_modalities():
    with pytest.raises(ValueError, match="at least one content modality"):
        LATTICE(tiny_data(dims=()), LATTICE.Config(embedding_dim=4, knn_k=3))
    for dims in ((("text", 3),), (("image", 5), ("text", 3))):
        for insertion in (None, *INSERTIONS):
            data = tiny_data(dims=dims)
            model = LATTICE(data, befa_config(insertion, embedding_dim=4, knn_k=3))
            model.train()
            model.pre_epoch(0)
            loss = model.loss(*BATCH)
            loss.backward()
            assert torch.isfinite(loss)
            model.eval()
            ue, ie = model.inference_embeddings()
            assert ue.shape == (N_USERS, 4) and ie.shape == (N_ITEMS, 4) and torch.isfinite(ie).all()


def test_authors_variant_is_rejected_for_lattice():
    with pytest.raises(ValueError, match="only for MGCN"):
        LATTICE(tiny_data(), LATTICE.Config(embedding_dim=4, adapter="befa", befa={"variant": "authors"}))


def test_train_features_toggles_trainable_tables():
    data = tiny_data()
    frozen = LATTICE(data, LATTICE.Config(embedding_dim=4, knn_k=3))
    assert not any(n.endswith(".table") for n, _ in frozen.named_parameters())
    assert not any(n.endswith(".table") for n in frozen.state_dict())  # data, not weights: checkpoints stay small
    assert frozen.feature("image").data_ptr() == data.features["image"].data_ptr()  # shared, not copied
    assert frozen.feature_table_parameters() == N_ITEMS * (5 + 3)
    trained = LATTICE(data, LATTICE.Config(embedding_dim=4, knn_k=3, train_features=True))
    names = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert {"projections.image.table", "projections.text.table"} <= names
    trained.train()
    trained.pre_epoch(0)
    trained.loss(*BATCH).backward()
    assert trained.feature("image").grad.abs().sum() > 0
    rep = trained.parameter_report()
    assert rep["params_feature_tables"] == N_ITEMS * 8
    assert rep["params_base_with_feature_tables"] == rep["params_trainable"]


def test_original_graph_cache_is_keyed_by_snapshot(tmp_path):
    data = tiny_data()
    data.graph_cache_dir = tmp_path
    data.feature_snapshots = {"image": "snap-a", "text": "snap-b"}
    LATTICE(data, LATTICE.Config(embedding_dim=4, knn_k=3))
    files = sorted(tmp_path.glob("graph-*.pt"))
    assert len(files) == 2
    data.feature_snapshots = {"image": "snap-a2", "text": "snap-b"}
    m2 = LATTICE(data, LATTICE.Config(embedding_dim=4, knn_k=3))
    assert len(list(tmp_path.glob("graph-*.pt"))) == 3
    torch.testing.assert_close(m2.original_graphs[0].to_dense(), sym_norm(dense_topk_graph(data.features["image"], 3)))


def clustered_data(seed=0, groups=4, users_per=15, items_per=10, per_user=6):
    """Users of group g interact only with items of group g; features reveal the group."""
    g = torch.Generator().manual_seed(seed)
    nu, ni = groups * users_per, groups * items_per
    train_u, train_i, test = [], [], {}
    for u in range(nu):
        grp = u // users_per
        items = grp * items_per + torch.randperm(items_per, generator=g)[: per_user + 1]
        train_u += [u] * per_user
        train_i += items[:per_user].tolist()
        test[u] = int(items[per_user])
    centres = torch.randn(groups, 16, generator=g)
    feats = {
        "image": centres.repeat_interleave(items_per, 0) + 0.3 * torch.randn(ni, 16, generator=g),
        "text": centres[:, :8].repeat_interleave(items_per, 0) + 0.3 * torch.randn(ni, 8, generator=g),
    }
    data = TrainData(nu, ni, torch.tensor(train_u), torch.tensor(train_i), features=feats)
    return data, test


def recall_at(model, data, test, k=5) -> float:
    model.eval()
    ue, ie = model.inference_embeddings()
    scores = ue @ ie.T
    scores[data.train_users, data.train_items] = -math.inf
    top = scores.topk(k, dim=1).indices
    return sum(float(test[u] in top[u].tolist()) for u in test) / len(test)


@pytest.mark.parametrize("insertion", [None, *INSERTIONS])
def test_three_epochs_beat_random_ranking(insertion):
    torch.manual_seed(0)
    data, test = clustered_data()
    model = LATTICE(data, befa_config(insertion, t=1.0, dropout=0.3, embedding_dim=16, knn_k=5, batch_size=32))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(3):
        model.train()
        model.pre_epoch(epoch)
        perm = torch.randperm(data.train_users.numel(), generator=gen)
        for s in range(0, perm.numel(), 32):
            idx = perm[s : s + 32]
            neg = torch.randint(data.num_items, (idx.numel(),), generator=gen)
            opt.zero_grad()
            model.loss(data.train_users[idx], data.train_items[idx], neg).backward()
            opt.step()
    random_recall = 5 / (data.num_items - 6)  # expected Recall@5 of a random ranking
    assert recall_at(model, data, test) > 3 * random_recall


@pytest.mark.parametrize("insertion", [None, "content"])  # forward reuses as base does (the basis is c_m)
def test_knn_edges_are_reused_only_for_the_same_basis_and_training_is_unchanged(insertion, monkeypatch):
    """The trainer evaluates after each epoch and the next pre_epoch rebuilds G from the same
    parameters: the kNN search is reused then (base, forward), never with a changed basis, and
    the training is bit for bit what it is without the reuse (a fused Adam step does not bump
    parameter versions, so the check is on values)."""
    import models.lattice as lattice_mod

    calls = []
    search = lattice_mod.topk_cosine_edges
    monkeypatch.setattr(lattice_mod, "topk_cosine_edges", lambda *a, **k: calls.append(1) or search(*a, **k))
    data, _ = clustered_data()
    runs = {}
    for reuse in (True, False):
        torch.manual_seed(0)
        cfg = befa_config(insertion, t=1.0, dropout=0.3, embedding_dim=16, knn_k=5, batch_size=32)
        model = LATTICE(data, cfg)
        if not reuse:
            model._knn_edges = lambda basis, k: [search(x, k, cfg.knn_method) for x in basis]
        opt = torch.optim.Adam(model.parameters(), lr=0.02, fused=True)
        gen, losses, searched = torch.Generator().manual_seed(0), [], []
        for epoch in range(3):
            calls.clear()
            model.train()
            model.pre_epoch(epoch)
            searched.append(len(calls))
            perm = torch.randperm(data.train_users.numel(), generator=gen)
            for s in range(0, perm.numel(), 32):
                idx = perm[s : s + 32]
                neg = torch.randint(data.num_items, (idx.numel(),), generator=gen)
                opt.zero_grad()
                loss = model.loss(data.train_users[idx], data.train_items[idx], neg)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            model.eval()
            users, items = model.inference_embeddings()  # as the trainer evaluates
        runs[reuse] = (losses, users, items, searched)
    assert runs[True][0] == runs[False][0]
    assert torch.equal(runs[True][1], runs[False][1]) and torch.equal(runs[True][2], runs[False][2])
    if insertion == "content":  # the adapters' dropout: the training basis is never the evaluation one
        assert runs[True][3] == [2, 2, 2]
    else:  # after the first epoch, pre_epoch reuses the evaluation's search
        assert runs[True][3] == [2, 0, 0]
