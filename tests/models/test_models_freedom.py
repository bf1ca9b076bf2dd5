"""FREEDOM (+BeFA under its three insertions): dense recomputation of the spec's equations,
what the adapters change at inference, edge dropout, graph cache, modality weights, missing
modalities, trainable tables, training beats random."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.freedom import FREEDOM, freedom_modality_weights
from tests._model_data import (
    TINY_EDGES,
    dense_bpr,
    dense_knn,
    dense_lightgcn,
    dense_sym_adj,
    movielens_data,
    np_,
    random_recall,
    recall_at,
    tiny_batch,
    tiny_data,
    train_epochs,
)


def _cfg(**kw) -> FREEDOM.Config:
    base = dict(embedding_dim=4, knn_k=3, reg=0.5, edge_dropout=0.0)
    base.update(kw)
    return FREEDOM.Config(**base)


def _dense_gate(adapter, c: np.ndarray) -> np.ndarray:
    lin = [(np_(layer.weight), np_(layer.bias)) for layer in (adapter.decouple, adapter.filter, adapter.recombine)]
    z = np.maximum(c @ lin[0][0].T + lin[0][1], 0)
    z = np.maximum(np.tanh(z) @ lin[1][0].T + lin[1][1], 0)
    return 1 / (1 + np.exp(-(z @ lin[2][0].T + lin[2][1])))


INSERTIONS = ["forward", "loss", "content"]
# (adapter, insertion) of every configuration: base, then +BeFA at each insertion
VARIANTS = [("none", "forward")] + [("befa", ins) for ins in INSERTIONS]


def _cfg_of(adapter: str, insertion: str, **kw) -> FREEDOM.Config:
    return _cfg(adapter=adapter, befa={"insertion": insertion, **kw.pop("befa", {})}, **kw)


def _dense_content(model, data, m: str) -> np.ndarray:
    proj = model.projections[m]
    return np_(data.features[m]) @ np_(proj.proj.weight).T + np_(proj.proj.bias)


def _dense_forward(model, data, adj, weights=None, hops: int = 1):
    """Base / loss / content: h = G^hops E_i with G = sum_m w_m G_m. Forward insertion:
    h = sum_m w_m G_m^hops (E_i * g_m(c_m))."""
    weights = weights or {"image": 0.1, "text": 0.9}
    e_u, e_i = np_(model.user_embedding), np_(model.item_embedding)
    out = dense_lightgcn(adj, np.concatenate([e_u, e_i]), 2)
    nu = e_u.shape[0]
    present = {m: w for m, w in weights.items() if m in data.features}
    graphs = {m: dense_knn(np_(data.features[m]), 3, weighted=False) for m in present}
    h = 0.0
    if getattr(model, "insertion", None) == "forward":
        for m, w in present.items():
            z = e_i * _dense_gate(model.adapters[m], _dense_content(model, data, m))
            h = h + w * np.linalg.matrix_power(graphs[m], hops) @ z
    elif present:
        h = np.linalg.matrix_power(sum(w * graphs[m] for m, w in present.items()), hops) @ e_i
    return out[:nu], out[nu:] + h


def _dense_loss(model, data, adj, users, pos, neg) -> float:
    """BPR on (U*, I*) + reg * content terms on c_m (base, forward), E_i * g_m(c_m) (loss)
    or c_m * g_m(c_m) (content)."""
    u_all, i_all = _dense_forward(model, data, adj)
    u = u_all[users]
    loss = dense_bpr(u, i_all[pos], i_all[neg])
    content = 0.0
    insertion = getattr(model, "insertion", None)
    for m in model.projections:
        c = _dense_content(model, data, m)
        if insertion == "loss":
            c = np_(model.item_embedding) * _dense_gate(model.adapters[m], c)
        elif insertion == "content":
            c = c * _dense_gate(model.adapters[m], c)
        content += dense_bpr(u, c[pos], c[neg])
    return loss + model.config.reg * content


@pytest.mark.parametrize(("adapter", "insertion"), VARIANTS)
def test_freedom_matches_dense_equations_full_graph(adapter, insertion):
    torch.manual_seed(0)
    data = tiny_data()
    model = FREEDOM(data, _cfg_of(adapter, insertion)).eval()  # eval: BeFA dropout off
    assert model.insertion == (insertion if adapter == "befa" else None)
    adj = dense_sym_adj(6, 8, TINY_EDGES)
    u_ref, i_ref = _dense_forward(model, data, adj)
    u_e, i_e = model.inference_embeddings()
    np.testing.assert_allclose(np_(u_e), u_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(i_e), i_ref, rtol=1e-5, atol=1e-6)
    users, pos, neg = tiny_batch()
    expected = _dense_loss(model, data, adj, users.numpy(), pos.numpy(), neg.numpy())
    assert float(model.loss(users, pos, neg).detach()) == pytest.approx(expected, rel=1e-5)


def test_forward_insertion_repeats_each_modality_graph_per_hop_and_keeps_graphs_apart():
    """h = sum_m w_m G_m^2 (E_i * g_m(c_m)) at two hops: each G_m is applied per hop, which is
    not (sum_m w_m G_m)^2 applied to anything; the merged G is not built."""
    torch.manual_seed(1)
    data = tiny_data()
    model = FREEDOM(data, _cfg_of("befa", "forward", item_graph_hops=2)).eval()
    assert model.item_graph is None and sorted(model.modality_graphs) == ["image", "text"]
    for m, graph in model.modality_graphs.items():
        np.testing.assert_allclose(np_(graph.to_dense()), dense_knn(np_(data.features[m]), 3, False), atol=1e-7)
    _, i_ref = _dense_forward(model, data, dense_sym_adj(6, 8, TINY_EDGES), hops=2)
    np.testing.assert_allclose(np_(model.inference_embeddings()[1]), i_ref, rtol=1e-5, atol=1e-6)
    # no hop: no item view, so the adapters are unused and the model is LightGCN + content terms
    flat = FREEDOM(data, _cfg_of("befa", "forward", item_graph_hops=0)).eval()
    flat.load_state_dict(model.state_dict())
    out = dense_lightgcn(
        dense_sym_adj(6, 8, TINY_EDGES), np.concatenate([np_(model.user_embedding), np_(model.item_embedding)]), 2
    )
    np.testing.assert_allclose(np_(flat.inference_embeddings()[1]), out[6:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("insertion", INSERTIONS)
def test_adapter_weights_change_the_scores_only_under_forward(insertion):
    """forward: the adapters sit on the scoring path, so perturbing one (here the last layer's
    bias b3 of the image adapter) changes the scores at inference. loss and content: the
    adapters act only in the content loss terms (training-only), so the scores at inference
    do not change; they do change the training loss (reg > 0)."""
    torch.manual_seed(2)
    data = tiny_data()
    model = FREEDOM(data, _cfg_of("befa", insertion)).eval()
    batch = tiny_batch()
    with torch.no_grad():
        u0, i0 = model.inference_embeddings()
        loss0 = model.loss(*batch)
        model.adapters["image"].recombine.bias.add_(1.5)
        u1, i1 = model.inference_embeddings()
        loss1 = model.loss(*batch)
    torch.testing.assert_close(u1, u0)  # users never see the item graph
    changed = not torch.allclose(u1 @ i1.T, u0 @ i0.T, atol=1e-6)
    assert changed == (insertion == "forward")
    assert float(loss1) != pytest.approx(float(loss0), rel=1e-6)


@pytest.mark.parametrize(("adapter", "insertion"), VARIANTS)
def test_a_training_step_under_each_insertion(adapter, insertion):
    torch.manual_seed(0)
    data = tiny_data()
    model = FREEDOM(data, _cfg_of(adapter, insertion, befa={"t": 2.0, "dropout": 0.1})).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(2):  # two steps: no stale buffer or graph between steps
        loss = model.loss(*tiny_batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses))
    assert model.item_embedding.grad.abs().sum() > 0
    for m, proj in model.projections.items():
        assert proj.proj.weight.grad.abs().sum() > 0, m
    if adapter == "befa":
        for name, p in model.adapters.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        h = 8  # round(4 * 2)
        assert model.parameter_report()["params_adapter"] == 2 * ((4 * h + h) + (h * h + h) + (h * 4 + 4))


def test_insertions_share_one_checkpoint_layout():
    """The insertion adds no parameter: a checkpoint of any of them (runs recorded before the
    option are mapped to 'loss') loads into the others."""
    data = tiny_data()
    keys = {ins: sorted(FREEDOM(data, _cfg_of("befa", ins)).state_dict()) for ins in INSERTIONS}
    assert keys["forward"] == keys["loss"] == keys["content"]


def test_befa_inputs_name_what_each_insertion_gates():
    torch.manual_seed(4)
    data = tiny_data()
    with torch.no_grad():
        for insertion in INSERTIONS:
            model = FREEDOM(data, _cfg_of("befa", insertion)).eval()
            inputs = model.befa_inputs()
            for m, (content, behaviour) in inputs.items():
                torch.testing.assert_close(content, model.projections[m]())
                assert behaviour is model.item_embedding if insertion != "content" else behaviour is content
            if insertion == "forward":
                adapted = model.adapted(model.content())
                for m, a in zip(model.projections, adapted):
                    torch.testing.assert_close(model.adapters[m](*inputs[m]), a)
            else:
                rows = torch.arange(8)
                for m, c in zip(model.projections, model.contents(rows)):
                    torch.testing.assert_close(model.adapters[m](*inputs[m]), c)


def test_forward_new_item_with_zero_id_embedding_gets_its_gated_neighbours():
    """What serving gives an item added after training (its E_i row is 0): under forward,
    h_i = sum_m w_m sum_j G_m[i, j] E_j * g_m(c_j); its own gate multiplies its zero E_i."""
    torch.manual_seed(6)
    data = tiny_data()
    model = FREEDOM(data, _cfg_of("befa", "forward")).eval()
    with torch.no_grad():
        model.item_embedding[7] = 0.0  # item 7 has no edge: I_g row is 0 too
        _, items = model.inference_embeddings()
        e_i = np_(model.item_embedding)
        expected = 0.0
        for m, w in {"image": 0.1, "text": 0.9}.items():
            g = dense_knn(np_(data.features[m]), 3, False)
            gate = _dense_gate(model.adapters[m], _dense_content(model, data, m))
            expected = expected + w * g[7] @ (e_i * gate)
        np.testing.assert_allclose(np_(items[7]), expected, rtol=1e-5, atol=1e-6)
        assert np.abs(expected).sum() > 0  # content-derived, not zero
        model.adapters["image"].recombine.bias.add_(2.0)  # the gates of its neighbours matter
        assert not torch.allclose(model.inference_embeddings()[1][7], items[7])


def test_freedom_edge_dropout_keeps_a_renormalised_subgraph_and_prediction_uses_full_graph():
    torch.manual_seed(3)
    data = tiny_data()
    model = FREEDOM(data, _cfg(edge_dropout=0.6)).eval()
    model.pre_epoch(0)
    train = model.train_adj.to_dense().double().numpy()
    block = train[:6, 6:]
    kept = [(int(u), int(i)) for u, i in zip(*np.nonzero(block))]
    assert len(kept) == round(0.4 * len(TINY_EDGES))
    assert set(kept) <= set(TINY_EDGES)
    np.testing.assert_allclose(train, dense_sym_adj(6, 8, kept), rtol=1e-5, atol=1e-7)
    users, pos, neg = tiny_batch()
    expected = _dense_loss(model, data, dense_sym_adj(6, 8, kept), users.numpy(), pos.numpy(), neg.numpy())
    assert float(model.loss(users, pos, neg).detach()) == pytest.approx(expected, rel=1e-5)
    # prediction ignores the dropped graph
    u_ref, _ = _dense_forward(model, data, dense_sym_adj(6, 8, TINY_EDGES))
    np.testing.assert_allclose(np_(model.inference_embeddings()[0]), u_ref, rtol=1e-5, atol=1e-6)
    # a new epoch draws a new subgraph
    draws = set()
    for epoch in range(1, 6):
        model.pre_epoch(epoch)
        draws.add(tuple(model.train_adj.col.tolist()))
    assert len(draws) > 1


def test_edge_sampling_prefers_low_degree_edges():
    torch.manual_seed(0)
    data = tiny_data()
    model = FREEDOM(data, _cfg(edge_dropout=0.5))
    # edge (2, 2): user 2 has degree 3, item 2 degree 3 -> weight 1/3; edge (1, 1): degrees 2, 2 -> 1/2
    hits = {(2, 2): 0, (1, 1): 0}
    for epoch in range(400):
        model.pre_epoch(epoch)
        block = model.train_adj.to_dense()[:6, 6:]
        for u, i in hits:
            hits[(u, i)] += int(block[u, i] > 0)
    assert hits[(1, 1)] > hits[(2, 2)]


def test_modality_weights_rule():
    assert freedom_modality_weights(["image", "text"]) == pytest.approx({"image": 0.1, "text": 0.9})
    assert freedom_modality_weights(["text"]) == {"text": 1.0}
    assert freedom_modality_weights(["image"]) == {"image": 1.0}
    assert freedom_modality_weights([]) == {}
    assert freedom_modality_weights(["audio", "image", "text"]) == pytest.approx(
        {"audio": 0.45, "image": 0.1, "text": 0.45}
    )
    assert freedom_modality_weights(["audio", "text"]) == pytest.approx({"audio": 0.5, "text": 0.5})
    assert freedom_modality_weights(["image", "text"], explicit={"image": 1, "text": 3, "video": 5}) == pytest.approx(
        {"image": 0.25, "text": 0.75}
    )
    with pytest.raises(ValueError, match="lacks a weight"):
        freedom_modality_weights(["image", "text"], explicit={"image": 1})


@pytest.mark.parametrize("modalities", [(), ("text",), ("image",)])
def test_freedom_runs_with_zero_or_one_modality(modalities):
    torch.manual_seed(0)
    data = tiny_data(modalities=modalities)
    model = FREEDOM(data, _cfg(adapter="befa")).eval()  # the forward insertion
    users, pos, neg = tiny_batch()
    loss = model.loss(users, pos, neg)
    loss.backward()
    u_e, i_e = model.inference_embeddings()
    adj = dense_sym_adj(6, 8, TINY_EDGES)
    weights = {m: 1.0 for m in modalities}
    u_ref, i_ref = _dense_forward(model, data, adj, weights)
    np.testing.assert_allclose(np_(i_e), i_ref, rtol=1e-5, atol=1e-6)
    assert len(model.adapters) == len(modalities)


def test_train_features_toggles_trainable_tables():
    data = tiny_data()
    frozen = FREEDOM(data, _cfg())
    trained = FREEDOM(data, _cfg(train_features=True))
    names_frozen = {n for n, _ in frozen.named_parameters()}
    names_trained = {n for n, _ in trained.named_parameters()}
    assert names_trained - names_frozen == {"projections.image.table", "projections.text.table"}
    assert frozen.feature_table_parameters() == trained.feature_table_parameters() == 8 * 5 + 8 * 3
    trained.loss(*tiny_batch()).backward()
    assert trained.projections["text"].table.grad.abs().sum() > 0
    # the data's own tensor is never modified through the trainable copy
    assert trained.projections["text"].table.data_ptr() != data.features["text"].data_ptr()
    rep_f, rep_t = frozen.parameter_report(), trained.parameter_report()
    assert rep_f["params_base_without_feature_tables"] == rep_t["params_base_without_feature_tables"]
    assert rep_t["params_trainable"] - rep_f["params_trainable"] == 64


def test_knn_graph_cache_is_keyed_by_snapshot(tmp_path):
    data = tiny_data()
    data.graph_cache_dir = tmp_path
    data.feature_snapshots = {"image": "img-v1", "text": "txt-v1"}
    first = FREEDOM(data, _cfg())
    files = sorted(p.name for p in tmp_path.glob("graph-*.pt"))
    assert len(files) == 2
    again = FREEDOM(data, _cfg())
    torch.testing.assert_close(first.item_graph.to_dense(), again.item_graph.to_dense())
    assert sorted(p.name for p in tmp_path.glob("graph-*.pt")) == files
    # new text features under a new snapshot: a new graph, not the stale cached one
    data.features["text"] = torch.randn(8, 3, generator=torch.Generator().manual_seed(9))
    data.feature_snapshots = {"image": "img-v1", "text": "txt-v2"}
    changed = FREEDOM(data, _cfg())
    assert len(list(tmp_path.glob("graph-*.pt"))) == 3
    expected = 0.1 * dense_knn(np_(data.features["image"]), 3, False) + 0.9 * dense_knn(
        np_(data.features["text"]), 3, False
    )
    np.testing.assert_allclose(np_(changed.item_graph.to_dense()), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("adapter", "insertion"), VARIANTS)
def test_freedom_trained_three_epochs_beats_random(adapter, insertion):
    data, heldout = movielens_data()
    torch.manual_seed(0)
    config = FREEDOM.Config(embedding_dim=32, adapter=adapter, befa={"insertion": insertion}, reg=1e-3)
    model = FREEDOM(data, config)
    losses = train_epochs(model, data, epochs=3, lr=1e-2)
    assert losses[-1] < losses[0]
    assert recall_at(model, data, heldout) > 3 * random_recall(data, heldout)
