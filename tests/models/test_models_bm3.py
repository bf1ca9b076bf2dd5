"""BM3 (+BeFA under each insertion): dense recomputation, detached targets, no negatives, missing
modalities, trainable tables, where the adapters reach the scores, training beats random."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.base import BeFAInput
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

INSERTIONS = ["forward", "loss", "content"]
# (adapter, insertion): base BM3, then +BeFA at each insertion point
VARIANTS = [("none", None)] + [("befa", ins) for ins in INSERTIONS]


def _cfg(insertion=None, **kw) -> BM3.Config:
    base = dict(embedding_dim=4, dropout=0.0, reg=0.1, cl_weight=2.0)
    if insertion is not None:
        base.update(adapter="befa", befa={"insertion": insertion})
    base.update(kw)
    return BM3.Config(**base)


def _gate(adapter, c):
    z = torch.relu(c @ adapter.decouple.weight.double().T + adapter.decouple.bias.double())
    z = torch.relu(torch.tanh(z) @ adapter.filter.weight.double().T + adapter.filter.bias.double())
    return torch.sigmoid(z @ adapter.recombine.weight.double().T + adapter.recombine.bias.double())


def _dense(model, data, users, items, insertion=None):
    """The spec's BM3 equations in float64 torch on dense matrices (dropout p = 0: targets = outputs,
    detached), with BeFA at ``insertion`` (None: base BM3). Returns (loss, user leaf, item leaf,
    prediction matrices)."""
    e_u = model.user_embedding.detach().double().clone().requires_grad_(True)
    e_i = model.item_embedding.detach().double().clone().requires_grad_(True)
    adj = torch.from_numpy(dense_sym_adj(6, 8, TINY_EDGES))
    x = torch.cat([e_u, e_i])
    out = (x + adj @ x) / 2  # one layer, mean of H0, H1
    contents = {
        m: data.features[m].double() @ proj.proj.weight.detach().double().T + proj.proj.bias.detach().double()
        for m, proj in model.projections.items()
    }
    if insertion == "forward" and contents:  # I* = I_g + (1/M) sum_m E_i * g_m(c_m)
        residual = sum(e_i * _gate(model.adapters[m], c) for m, c in contents.items()) / len(contents)
    else:  # I* = I_g + E_i
        residual = e_i
    u_all, i_all = out[:6], out[6:] + residual
    w, b = model.predictor.weight.detach().double(), model.predictor.bias.detach().double()

    def pred(z):
        return z @ w.T + b

    def ncos(a, c):
        return 1 - F.cosine_similarity(a, c, dim=-1).mean()

    u_t, i_t = u_all.detach()[users], i_all.detach()[items]
    loss = ncos(pred(u_all[users]), i_t) + ncos(pred(i_all[items]), u_t)
    loss = loss + model.config.reg * (u_all.norm() + i_all.norm()) / 8
    for m, c in contents.items():
        if insertion == "loss":
            c = e_i * _gate(model.adapters[m], c)
        elif insertion == "content":
            c = c * _gate(model.adapters[m], c)
        c = c[items]
        loss = loss + model.config.cl_weight * (ncos(pred(c), i_t) + ncos(pred(c), c.detach()))
    return loss, e_u, e_i, (pred(u_all), pred(i_all))


@pytest.mark.parametrize(("adapter", "insertion"), VARIANTS)
def test_bm3_matches_dense_equations_and_gradients(adapter, insertion):
    torch.manual_seed(0)
    data = tiny_data()
    model = BM3(data, _cfg(insertion)).eval()  # eval: BeFA dropout off; target dropout p = 0
    assert model.config.adapter == adapter
    users, items, _ = tiny_batch()
    ref, e_u, e_i, (pu, pi) = _dense(model, data, users, items, insertion)
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


def test_forward_is_the_default_insertion():
    model = BM3(tiny_data(), BM3.Config(embedding_dim=4, adapter="befa"))
    assert model.insertion == "forward"
    assert BM3(tiny_data(), BM3.Config(embedding_dim=4)).insertion is None


def _scores_before_and_after_shifting_the_gates(insertion):
    """(scores, served rows of items 6 and 7 as new items) before, then after adding 1.5 to the
    last-layer bias b3 of every adapter (which moves every gate value)."""
    torch.manual_seed(0)
    model = BM3(tiny_data(), _cfg(insertion)).eval()

    @torch.no_grad()
    def served():
        u, i = model.inference_embeddings()
        _, grown = model.serving_embeddings(u, i, trained_items=6)  # rows 6, 7 served as new items
        return u @ i.T, grown[6:].clone()

    before = served()
    with torch.no_grad():
        for adapter in model.adapters.values():
            adapter.recombine.bias.add_(1.5)
    return before, served()


def test_forward_adapters_change_the_scores_at_inference():
    """ "forward": I* = I_g + (1/M) sum_m E_i * g_m(c_m), so the gates reach every score."""
    (scores, new_rows), (shifted, shifted_new) = _scores_before_and_after_shifting_the_gates("forward")
    assert (scores - shifted).abs().max() > 1e-3
    torch.testing.assert_close(shifted_new, new_rows, rtol=0, atol=0)  # new items: served from un-gated c_m


def test_loss_adapters_do_not_change_the_scores_at_inference():
    """ "loss" (the earlier design): the adapters only act in the content loss terms, so at
    inference the scores, and the rows served for new items, are exactly those of base BM3 with
    the same parameters, whatever the adapters' weights. Training alone carries their effect."""
    (scores, new_rows), (shifted, shifted_new) = _scores_before_and_after_shifting_the_gates("loss")
    torch.testing.assert_close(shifted, scores, rtol=0, atol=0)
    torch.testing.assert_close(shifted_new, new_rows, rtol=0, atol=0)


def test_content_adapters_change_only_new_items_at_inference():
    """ "content": the content terms use c_m * g_m(c_m) and I* is base BM3's, so the scores of
    trained items do not depend on the adapters' weights at inference (like "loss"); a new item,
    served from predictor(mean_m predictor(c_m * g_m(c_m))), does."""
    (scores, new_rows), (shifted, shifted_new) = _scores_before_and_after_shifting_the_gates("content")
    torch.testing.assert_close(shifted, scores, rtol=0, atol=0)
    assert (shifted_new - new_rows).abs().max() > 1e-3


@pytest.mark.parametrize("insertion", INSERTIONS)
def test_befa_inputs_are_what_each_insertion_gates(insertion):
    torch.manual_seed(2)
    model = BM3(tiny_data(), _cfg(insertion)).eval()
    every = torch.arange(8)
    with torch.no_grad():
        inputs = model.befa_inputs()
        consumed = model.adapted() if insertion == "forward" else model.contents(every)
        for m, (content, behaviour) in inputs.items():
            torch.testing.assert_close(content, model.projections[m]())
            assert behaviour is (content if insertion == "content" else model.item_embedding)
            torch.testing.assert_close(
                model.adapters[m](content, behaviour), consumed[list(model.projections).index(m)]
            )
        if insertion == "forward":  # the content terms stay on c_m
            for m, c in zip(model.projections, model.contents(every)):
                torch.testing.assert_close(c, model.projections[m](every))
    assert isinstance(inputs["text"], BeFAInput)


@pytest.mark.parametrize("train_features", [False, True])
@pytest.mark.parametrize("insertion", INSERTIONS)
def test_training_steps_reach_the_adapters(insertion, train_features):
    torch.manual_seed(0)
    befa = {"t": 0.5, "dropout": 0.1, "insertion": insertion}
    cfg = BM3.Config(embedding_dim=4, adapter="befa", befa=befa, train_features=train_features)
    model = BM3(tiny_data(), cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    users, items, _ = tiny_batch()
    for step in range(2):  # two steps: the feature gather buffer is reused across steps, never within one
        opt.zero_grad()
        loss = model.loss(users, items, None)
        assert torch.isfinite(loss)
        loss.backward()
        for name, p in model.adapters.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (step, name)
        opt.step()
    h = 2
    assert model.adapter_parameters() == 2 * ((4 * h + h) + (h * h + h) + (h * 4 + 4))


def test_bm3_defaults_and_no_negatives():
    cfg = BM3.Config()
    assert (cfg.num_layers, cfg.dropout, cfg.reg, cfg.cl_weight, cfg.lr) == (1, 0.5, 0.1, 2.0, 1e-3)
    assert cfg.uses_negatives is False
    torch.manual_seed(0)
    model = BM3(tiny_data(), BM3.Config(embedding_dim=4))
    users, items, _ = tiny_batch()
    a, b = float(model.loss(users, items, None)), float(model.loss(users, items, None))
    assert a != b  # dropout-corrupted target views are redrawn every batch


@pytest.mark.parametrize("insertion", INSERTIONS)
@pytest.mark.parametrize("modalities", [(), ("image",), ("text",)])
def test_bm3_runs_with_zero_or_one_modality(modalities, insertion):
    torch.manual_seed(0)
    data = tiny_data(modalities=modalities)
    model = BM3(data, _cfg(insertion)).eval()
    users, items, _ = tiny_batch()
    ref, *_ = _dense(model, data, users, items, insertion)  # no modality: I* = I_g + E_i
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


@pytest.mark.parametrize(("adapter", "insertion"), VARIANTS)
def test_bm3_trained_three_epochs_beats_random(adapter, insertion):
    data, heldout = movielens_data()
    torch.manual_seed(0)
    model = BM3(data, _cfg(insertion, embedding_dim=32, dropout=0.5))
    assert model.config.adapter == adapter
    train_epochs(model, data, epochs=3, lr=1e-2)
    assert recall_at(model, data, heldout) > 3 * random_recall(data, heldout)
