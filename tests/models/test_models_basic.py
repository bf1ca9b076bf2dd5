"""MostPop and LightGCN: dense recomputation, training beats random, contract details."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.lightgcn import LightGCN
from models.mostpop import MostPop
from models.sparse import SparseGraph, propagate, weighted_sum
from tests._model_data import (
    TINY_EDGES,
    dense_bpr,
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


def test_mostpop_scores_are_train_popularity():
    data = tiny_data()
    model = MostPop(data, MostPop.Config())
    assert MostPop.trainable is False
    assert sum(p.numel() for p in model.parameters()) == 0
    users, items = model.inference_embeddings()
    counts = np.zeros(8)
    for _, i in TINY_EDGES:
        counts[i] += 1
    np.testing.assert_array_equal(np_(users @ items.T), np.tile(counts, (6, 1)))
    loss = model.loss(*tiny_batch())
    assert float(loss) == 0.0 and not loss.requires_grad


def test_models_without_content_reject_an_adapter():
    with pytest.raises(ValueError, match="no content"):
        LightGCN(tiny_data(), LightGCN.Config(adapter="befa"))
    with pytest.raises(ValueError, match="no content"):
        MostPop(tiny_data(), MostPop.Config(adapter="befa"))


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_lightgcn_matches_dense_equations(layers):
    torch.manual_seed(0)
    data = tiny_data(modalities=())
    cfg = LightGCN.Config(embedding_dim=4, num_layers=layers, reg=0.01)
    model = LightGCN(data, cfg)
    adj = dense_sym_adj(6, 8, TINY_EDGES)
    x = np.concatenate([np_(model.user_embedding), np_(model.item_embedding)])
    out = dense_lightgcn(adj, x, layers)
    u_e, i_e = model.inference_embeddings()
    np.testing.assert_allclose(np_(u_e), out[:6], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(i_e), out[6:], rtol=1e-5, atol=1e-6)

    users, pos, neg = tiny_batch()
    u, p, n = out[:6][users], out[6:][pos], out[6:][neg]
    eu, ep, en = x[:6][users], x[6:][pos], x[6:][neg]
    reg = 0.5 * ((eu**2).sum() + (ep**2).sum() + (en**2).sum()) / len(users)
    expected = dense_bpr(u, p, n) + 0.01 * reg
    assert float(model.loss(users, pos, neg)) == pytest.approx(expected, rel=1e-5)


def test_sparse_propagation_gradient_matches_dense():
    torch.manual_seed(1)
    dense = torch.rand(7, 7) * (torch.rand(7, 7) > 0.5)
    graph = SparseGraph.from_csr(dense.to_sparse_csr())
    x = torch.randn(7, 3, requires_grad=True)
    w = torch.randn(7, 3)
    (propagate(graph, [x], 2)[0] * w).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ((x_ref + dense @ x_ref + dense @ (dense @ x_ref)) / 3 * w).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    # declared symmetric, the backward reuses G for G^T: wrong for this non-symmetric matrix
    wrong = SparseGraph.from_csr(dense.to_sparse_csr(), symmetric=True)
    x2 = x.detach().clone().requires_grad_(True)
    (wrong @ x2 * w).sum().backward()
    assert not torch.allclose(x2.grad, dense.T @ w)
    sym = dense + dense.T
    x3 = x.detach().clone().requires_grad_(True)
    (SparseGraph.from_csr(sym.to_sparse_csr(), symmetric=True) @ x3 * w).sum().backward()
    torch.testing.assert_close(x3.grad, sym @ w)
    summed = weighted_sum([(0.25, graph), (0.75, SparseGraph.from_csr(dense.T.to_sparse_csr()))]).to_dense()
    torch.testing.assert_close(summed, 0.25 * dense + 0.75 * dense.T)
    with pytest.raises(ValueError, match="cannot be symmetric"):
        SparseGraph.from_csr(torch.ones(2, 3).to_sparse_csr(), symmetric=True)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_propagate_blocks_match_dense_mean_and_gradient(layers):
    """The one-node layer mean equals the op-by-op formula, per row block, in value and gradient."""
    torch.manual_seed(layers)
    dense = (torch.rand(9, 9, dtype=torch.float64) * (torch.rand(9, 9) > 0.5)).requires_grad_(False)
    graph = SparseGraph.from_csr(dense.to_sparse_csr())
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    top, bottom = propagate(graph, [a, b], layers)
    assert top.shape == (4, 3) and bottom.shape == (5, 3)
    x_ref = torch.cat([a, b]).detach().requires_grad_(True)
    h, ref = x_ref, x_ref
    for _ in range(layers):
        h = dense @ h
        ref = ref + h
    ref = ref / (layers + 1)
    torch.testing.assert_close(torch.cat([top, bottom]), ref)
    # only the bottom block used: the top block's gradient still flows through G^T
    w = torch.randn(5, 3, dtype=torch.float64)
    (bottom * w).sum().backward()
    (ref[4:] * w).sum().backward()
    torch.testing.assert_close(torch.cat([a.grad, b.grad]), x_ref.grad)
    assert torch.autograd.gradcheck(
        lambda p, q: propagate(graph, [p, q], layers), (a.detach().requires_grad_(), b.detach().requires_grad_())
    )
    # values that carry gradient take the op-by-op path and agree
    values = graph.values.clone().requires_grad_(True)
    top2, bottom2 = propagate(graph.with_values(values), [a, b], layers)
    torch.testing.assert_close(torch.cat([top2, bottom2]), ref)
    assert propagate(graph, [a, b], 0) == (a, b)


def test_sparse_product_value_gradient_is_each_entrys_dot_product():
    from models.sparse import SparseGraph, coo_to_csr, entry_dots

    g = torch.Generator().manual_seed(4)
    row, col = torch.randint(0, 6, (20,), generator=g), torch.randint(0, 5, (20,), generator=g)
    csr = coo_to_csr(row, col, torch.rand(20, generator=g, dtype=torch.float64), (6, 5))
    graph = SparseGraph.from_csr(csr)
    values = graph.values.clone().requires_grad_(True)
    x = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, y: graph.with_values(v) @ y, (values, x))
    a, b = torch.randn(6, 3, generator=g), torch.randn(5, 3, generator=g)
    expected = (a[graph.row] * b[graph.col]).sum(-1)
    torch.testing.assert_close(entry_dots(graph, a, b), expected)
    torch.testing.assert_close(entry_dots(graph, a.half(), b.half()).float(), expected, atol=0.05, rtol=0.01)


def test_lightgcn_needs_negatives():
    model = LightGCN(tiny_data(), LightGCN.Config(embedding_dim=4))
    users, pos, _ = tiny_batch()
    with pytest.raises(ValueError, match="negative"):
        model.loss(users, pos, None)


def test_lightgcn_and_mostpop_beat_random_on_movielens():
    data, heldout = movielens_data()
    base = random_recall(data, heldout)
    pop = recall_at(MostPop(data, MostPop.Config()), data, heldout)
    torch.manual_seed(0)
    model = LightGCN(data, LightGCN.Config(embedding_dim=32, num_layers=2))
    losses = train_epochs(model, data, epochs=3, lr=1e-2)
    assert losses[-1] < losses[0]
    rec = recall_at(model, data, heldout)
    assert pop > 3 * base, (pop, base)
    assert rec > 3 * base, (rec, base)


def test_dropout_keeps_one_minus_p_scaled_and_passes_gradient_through_the_mask():
    from models.dropout import Dropout, dropout

    torch.manual_seed(0)
    x = torch.ones(400, 250, requires_grad=True)
    y = dropout(x, 0.3)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 100k draws: sd 0.0014
    keep_probability = 1 - round(0.3 * 2**16) / 2**16  # the 16-bit draw's exact keep rate
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / keep_probability))
    assert abs(1 / keep_probability - 1 / 0.7) < 1e-4
    # no draw is biased: each of the four 16-bit lanes of a 64-bit word keeps ~0.7, and an
    # odd-sized tensor uses a partial last word
    lanes = kept.reshape(-1, 4).float().mean(0)
    assert torch.all((lanes - 0.7).abs() < 0.01), lanes
    odd = dropout(torch.ones(3, 7), 0.5)
    assert odd.shape == (3, 7) and set(odd.unique().tolist()) <= {0.0, 2.0}
    # p near the ends of its range
    assert torch.all(dropout(torch.ones(1000), 1e-9) == 1)
    assert (dropout(torch.ones(100_000), 0.99) != 0).float().mean().item() == pytest.approx(0.01, abs=0.002)
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d y / d x = mask / (1 - p)
    torch.manual_seed(5)
    a = dropout(x.detach(), 0.5)
    torch.manual_seed(5)
    torch.testing.assert_close(a, dropout(x.detach(), 0.5))  # follows the global seed
    layer = Dropout(0.5).eval()
    assert layer(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


@pytest.mark.parametrize("xtg", [True, False])  # both weight-gradient orders, whatever this CPU picks
def test_project_matches_linear_values_and_gradients(xtg, monkeypatch):
    import models.content
    from models.content import project

    monkeypatch.setattr(models.content, "weight_gradient_as_xtg", lambda: xtg)
    torch.manual_seed(0)
    x = torch.randn(9, 6)
    lin = torch.nn.Linear(6, 4)
    g = torch.randn(9, 4)
    (project(x, lin) * g).sum().backward()
    got = (lin.weight.grad.clone(), lin.bias.grad.clone())
    lin.zero_grad()
    (lin(x) * g).sum().backward()
    torch.testing.assert_close(got[0], lin.weight.grad)
    torch.testing.assert_close(got[1], lin.bias.grad)
    torch.testing.assert_close(project(x, lin), lin(x))


def test_negligible_feature_entries_are_zeroed_in_the_models_copy_only(monkeypatch):
    from models.content import FeatureProjection, without_negligible

    torch.manual_seed(0)
    table = torch.randn(6, 5)
    table[:, 3] = 1e-33  # as all-MiniLM-L6-v2's two dead dimensions
    clean = without_negligible(table)
    assert torch.all(clean[:, 3] == 0) and torch.equal(clean[:, :3], table[:, :3])
    assert torch.all(table[:, 3] == 1e-33)  # the caller's table is not modified
    normal = torch.randn(6, 5)
    assert without_negligible(normal) is normal  # nothing to clean: no copy
    frozen, trained = FeatureProjection(table, 4), FeatureProjection(table, 4, trainable=True)
    assert torch.equal(frozen.table, clean) and torch.equal(trained.table.detach(), clean)
    torch.testing.assert_close(frozen(), frozen.proj(table))  # no product changes
    small = table * 1e-25  # a table of tiny scale keeps its entries: the bound is relative
    assert torch.equal(without_negligible(small)[:, :3], small[:, :3])
    import models.content

    monkeypatch.setattr(models.content, "CLEAN_CHUNK_ELEMENTS", 7)  # one row per chunk: the chunked passes
    torch.testing.assert_close(without_negligible(table), clean, rtol=0, atol=0)
    assert without_negligible(normal) is normal


@pytest.mark.parametrize("share", [0.3, 0.9])  # below and above FULL_TABLE_SHARE: both paths
def test_trained_table_projection_paths_agree(share):
    from models.content import FULL_TABLE_SHARE, FeatureProjection

    torch.manual_seed(0)
    table = torch.randn(20, 6)
    rows = torch.randperm(20)[: int(share * 20)].sort().values
    assert (rows.numel() >= FULL_TABLE_SHARE * 20) == (share > FULL_TABLE_SHARE)
    proj = FeatureProjection(table, 4, trainable=True)
    g = torch.randn(rows.numel(), 4)
    (proj(rows) * g).sum().backward()
    got = [p.grad.clone() for p in (proj.table, proj.proj.weight, proj.proj.bias)]
    reference = proj.proj(proj.table[rows])  # the plain gathered product
    for p in proj.parameters():
        p.grad = None
    (reference * g).sum().backward()
    torch.testing.assert_close(proj(rows), reference)
    for a, p in zip(got, (proj.table, proj.proj.weight, proj.proj.bias)):
        torch.testing.assert_close(a, p.grad)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[rows] = False
    assert torch.all(got[0][untouched] == 0)  # rows outside the batch: an exact zero gradient


def test_row_topk_equals_torch_topk():
    from models.graphs import TOPK_CHUNK, row_topk

    g = torch.Generator().manual_seed(3)
    sim = torch.randn(37, 5000, generator=g)
    values, indices = row_topk(sim, 10)
    ref_values, ref_indices = sim.topk(10, dim=1)
    torch.testing.assert_close(values, ref_values)
    assert torch.equal(indices, ref_indices)  # no ties in continuous data
    # a row whose top entries all sit in one chunk: the bound must not cut them off
    sim[0, :TOPK_CHUNK] = 100 + torch.arange(TOPK_CHUNK, dtype=torch.float32)
    values, indices = row_topk(sim, 10)
    assert torch.equal(indices[0], torch.arange(TOPK_CHUNK - 1, TOPK_CHUNK - 11, -1))
    # the best entries in the tail columns that fill no whole chunk
    sim[1, -3:] = torch.tensor([50.0, 60.0, 70.0])
    values, indices = row_topk(sim, 10)
    assert indices[1, :3].tolist() == [4999, 4998, 4997]
    # heavy ties: same values as topk, each index a real column holding its value, no repeats
    tied = torch.randint(0, 3, (12, 3000), generator=g).float()
    values, indices = row_topk(tied, 10)
    torch.testing.assert_close(values, tied.topk(10, dim=1).values)
    torch.testing.assert_close(tied.gather(1, indices), values)
    assert all(len(set(r.tolist())) == 10 for r in indices)
    # short rows, more chunks needed than exist, and non-contiguous rows all fall back to topk
    for case, k in ((torch.randn(5, 300), 4), (torch.randn(5, 2000), 40), (torch.randn(2000, 6).T, 3)):
        torch.testing.assert_close(row_topk(case, k)[0], case.topk(k, dim=1).values)
