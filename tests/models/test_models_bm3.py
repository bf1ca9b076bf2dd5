"""BM3 (+BeFA): dense recomputation, detached targets, no negatives, missing modalities,
trainable tables, training beats random."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.bm3 import BM3
from tests._model_data import (
    TINY_EDGES,
    dense_sym_adj,
    movielens_data,
    np_,
    random_recall,
    recall_at,
    tiny_batch,
    tiny_data,
    train_epochs,
)


def _cfg(**kw) -> BM3.Config:
    base = dict(embedding_dim=4, dropout=0.0, reg=0.1, cl_weight=2.0)
    base.update(kw)
    return BM3.Config(**base)


def _gate(adapter, c):
    z = torch.relu(c @ adapter.decouple.weight.double().T + adapter.decouple.bias.double())
    z = torch.relu(torch.tanh(z) @ adapter.filter.weight.double().T + adapter.filter.bias.double())
    return torch.sigmoid(z @ adapter.recombine.weight.double().T + adapter.recombine.bias.double())


def _dense(model, data, users, items, adapted=False):
    """The spec's BM3 equations in float64 torch on dense matrices (dropout p = 0: targets = outputs,
    detached). Returns (loss, user leaf, item leaf, prediction matrices)."""
    e_u = model.user_embedding.detach().double().clone().requires_grad_(True)
    e_i = model.item_embedding.detach().double().clone().requires_grad_(True)
    adj = torch.from_numpy(dense_sym_adj(6, 8, TINY_EDGES))
    x = torch.cat([e_u, e_i])
    out = (x + adj @ x) / 2  # one layer, mean of H0, H1
    u_all, i_all = out[:6], out[6:] + e_i
    w, b = model.predictor.weight.detach().double(), model.predictor.bias.detach().double()

    def pred(z):
        return z @ w.T + b

    def ncos(a, c):
        return 1 - F.cosine_similarity(a, c, dim=-1).mean()

    u_t, i_t = u_all.detach()[users], i_all.detach()[items]
    loss = ncos(pred(u_all[users]), i_t) + ncos(pred(i_all[items]), u_t)
    loss = loss + model.config.reg * (u_all.norm() + i_all.norm()) / 8
    for m, proj in model.projections.items():
        c = data.features[m].double() @ proj.proj.weight.detach().double().T + proj.proj.bias.detach().double()
        if adapted:
            c = e_i * _gate(model.adapters[m], c)
        c = c[items]
        loss = loss + model.config.cl_weight * (ncos(pred(c), i_t) + ncos(pred(c), c.detach()))
    return loss, e_u, e_i, (pred(u_all), pred(i_all))


@pytest.mark.parametrize("adapter", ["none", "befa"])
def test_bm3_matches_dense_equations_and_gradients(adapter):
    torch.manual_seed(0)
    data = tiny_data()
    model = BM3(data, _cfg(adapter=adapter)).eval()  # eval: BeFA dropout off; target dropout p = 0
    users, items, _ = tiny_batch()
    ref, e_u, e_i, (pu, pi) = _dense(model, data, users, items, adapted=adapter == "befa")
    loss = model.loss(users, items, None)
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)
    # same gradients as the dense version with detached targets: targets carry no gradient
    loss.backward()
    ref.backward()
    np.testing.assert_allclose(np_(model.user_embedding.grad), np_(e_u.grad), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np_(model.item_embedding.grad), np_(e_i.grad), rtol=1e-4, atol=1e-7)
    u_e, i_e = model.inference_embeddings()
    np.testing.assert_allclose(np_(u_e), np_(pu), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(i_e), np_(pi), rtol=1e-5, atol=1e-6)


def test_bm3_defaults_and_no_negatives():
    cfg = BM3.Config()
    assert (cfg.num_layers, cfg.dropout, cfg.reg, cfg.cl_weight, cfg.lr) == (1, 0.5, 0.1, 2.0, 1e-3)
    assert cfg.uses_negatives is False
    torch.manual_seed(0)
    model = BM3(tiny_data(), BM3.Config(embedding_dim=4))
    users, items, _ = tiny_batch()
    a, b = float(model.loss(users, items, None)), float(model.loss(users, items, None))
    assert a != b  # dropout-corrupted target views are redrawn every batch


def test_gradients_reach_the_adapters():
    torch.manual_seed(0)
    model = BM3(tiny_data(), BM3.Config(embedding_dim=4, adapter="befa", befa={"t": 0.5, "dropout": 0.1})).train()
    users, items, _ = tiny_batch()
    model.loss(users, items, None).backward()
    for name, p in model.adapters.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    h = 2
    assert model.adapter_parameters() == 2 * ((4 * h + h) + (h * h + h) + (h * 4 + 4))


@pytest.mark.parametrize("modalities", [(), ("image",), ("text",)])
def test_bm3_runs_with_zero_or_one_modality(modalities):
    torch.manual_seed(0)
    data = tiny_data(modalities=modalities)
    model = BM3(data, _cfg(adapter="befa")).eval()
    users, items, _ = tiny_batch()
    ref, *_ = _dense(model, data, users, items, adapted=True)
    loss = model.loss(users, items, None)
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)
    loss.backward()
    assert model.inference_embeddings()[1].shape == (8, 4)


def test_train_features_toggles_trainable_tables():
    data = tiny_data()
    frozen, trained = BM3(data, _cfg()), BM3(data, _cfg(train_features=True))
    extra = {n for n, _ in trained.named_parameters()} - {n for n, _ in frozen.named_parameters()}
    assert extra == {"projections.image.table", "projections.text.table"}
    users, items, _ = tiny_batch()
    trained.loss(users, items, None).backward()
    assert trained.projections["image"].table.grad.abs().sum() > 0
    assert frozen.parameter_report()["params_feature_tables"] == 8 * 5 + 8 * 3


@pytest.mark.parametrize("adapter", ["none", "befa"])
def test_bm3_trained_three_epochs_beats_random(adapter):
    data, heldout = movielens_data()
    torch.manual_seed(0)
    model = BM3(data, BM3.Config(embedding_dim=32, adapter=adapter))
    train_epochs(model, data, epochs=3, lr=1e-2)
    assert recall_at(model, data, heldout) > 3 * random_recall(data, heldout)
