"""FREEDOM (+BeFA): dense recomputation of the spec's equations, edge dropout, graph cache,
modality weights, missing modalities, trainable tables, training beats random."""

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


def _dense_forward(model, data, adj, weights=None):
    weights = weights or {"image": 0.1, "text": 0.9}
    e_u, e_i = np_(model.user_embedding), np_(model.item_embedding)
    out = dense_lightgcn(adj, np.concatenate([e_u, e_i]), 2)
    g = sum(w * dense_knn(np_(data.features[m]), 3, weighted=False) for m, w in weights.items() if m in data.features)
    items = out[6:] + (g @ e_i if data.features else 0)
    return out[:6], items


def _dense_loss(model, data, adj, users, pos, neg, adapted: bool = False) -> float:
    u_all, i_all = _dense_forward(model, data, adj)
    u = u_all[users]
    loss = dense_bpr(u, i_all[pos], i_all[neg])
    content = 0.0
    for m, proj in model.projections.items():
        c = np_(data.features[m]) @ np_(proj.proj.weight).T + np_(proj.proj.bias)
        if adapted:
            c = np_(model.item_embedding) * _dense_gate(model.adapters[m], c)
        content += dense_bpr(u, c[pos], c[neg])
    return loss + model.config.reg * content


@pytest.mark.parametrize("adapter", ["none", "befa"])
def test_freedom_matches_dense_equations_full_graph(adapter):
    torch.manual_seed(0)
    data = tiny_data()
    model = FREEDOM(data, _cfg(adapter=adapter)).eval()  # eval: BeFA dropout off
    adj = dense_sym_adj(6, 8, TINY_EDGES)
    u_ref, i_ref = _dense_forward(model, data, adj)
    u_e, i_e = model.inference_embeddings()
    np.testing.assert_allclose(np_(u_e), u_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(i_e), i_ref, rtol=1e-5, atol=1e-6)
    users, pos, neg = tiny_batch()
    expected = _dense_loss(model, data, adj, users.numpy(), pos.numpy(), neg.numpy(), adapted=adapter == "befa")
    assert float(model.loss(users, pos, neg).detach()) == pytest.approx(expected, rel=1e-5)


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
    model = FREEDOM(data, _cfg(adapter="befa")).eval()
    users, pos, neg = tiny_batch()
    loss = model.loss(users, pos, neg)
    loss.backward()
    u_e, i_e = model.inference_embeddings()
    adj = dense_sym_adj(6, 8, TINY_EDGES)
    weights = {m: 1.0 for m in modalities}
    u_ref, i_ref = _dense_forward(model, data, adj, weights)
    np.testing.assert_allclose(np_(i_e), i_ref, rtol=1e-5, atol=1e-6)
    assert len(model.adapters) == len(modalities)


def test_gradients_reach_the_adapters():
    torch.manual_seed(0)
    data = tiny_data()
    model = FREEDOM(data, _cfg(adapter="befa", befa={"t": 2.0, "dropout": 0.1})).train()
    model.loss(*tiny_batch()).backward()
    for name, p in model.adapters.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    report = model.parameter_report()
    h = 8  # round(4 * 2)
    assert report["params_adapter"] == 2 * ((4 * h + h) + (h * h + h) + (h * 4 + 4))


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


@pytest.mark.parametrize("adapter", ["none", "befa"])
def test_freedom_trained_three_epochs_beats_random(adapter):
    data, heldout = movielens_data()
    torch.manual_seed(0)
    model = FREEDOM(data, FREEDOM.Config(embedding_dim=32, adapter=adapter, reg=1e-3))
    losses = train_epochs(model, data, epochs=3, lr=1e-2)
    assert losses[-1] < losses[0]
    assert recall_at(model, data, heldout) > 3 * random_recall(data, heldout)
