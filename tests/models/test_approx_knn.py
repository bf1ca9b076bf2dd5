"""The approximate item-kNN path (models.graphs): recall, selection, cache key, determinism."""

from __future__ import annotations

import pytest
import torch

from models import graphs
from models.base import TrainData
from models.freedom import FREEDOM


def clustered(num: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Seeded items around num / 16 random centres: neighbourhoods a search can find."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(1, num // 16), dim, generator=g)
    pick = torch.randint(0, centres.size(0), (num,), generator=g)
    return centres[pick] + 0.7 * torch.randn(num, dim, generator=g)


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def test_approx_recall_on_a_seeded_case():
    # 2,000 items, 640-d: wide enough that the PCA step runs (to 213-d)
    x = unit(clustered(2000, 640))
    exact_v, exact_i = graphs.exact_topk(x, 10)
    approx_v, approx_i = graphs.approx_topk(x, 10, graphs.ApproxKnn(nlist=24, nprobe=6))
    recall = (exact_i.unsqueeze(2) == approx_i.unsqueeze(1)).any(2).float().mean().item()
    assert recall >= 0.95, recall
    # every kept similarity is the exact cosine of that pair (the re-rank), and self is found
    assert torch.allclose(approx_v, (x.unsqueeze(1) * x[approx_i]).sum(-1), atol=1e-5)
    assert (approx_i == torch.arange(2000).unsqueeze(1)).any(1).float().mean() > 0.99
    # the sampled-row estimate the build logs agrees with the full figure
    assert abs(graphs.knn_recall(x, approx_i, torch.arange(0, 2000, 7)) - recall) < 0.05


def test_automatic_selection_threshold():
    t = graphs.APPROX_KNN_MIN_ITEMS
    assert graphs.knn_method("auto", t - 1) == "exact"
    assert graphs.knn_method("auto", t) == "approx"
    assert graphs.knn_method("exact", 10 * t) == "exact"
    assert graphs.knn_method("approx", 50) == "approx"
    try:
        graphs.knn_method("hnsw", 50)
    except ValueError as exc:
        assert "knn_method" in str(exc)
    else:
        raise AssertionError("an unknown knn_method was accepted")


def test_cache_key_differs_between_exact_and_approx(tmp_path):
    n = 300
    data = TrainData(
        num_users=5,
        num_items=n,
        train_users=torch.tensor([0, 1, 2, 3, 4]),
        train_items=torch.tensor([0, 1, 2, 3, 4]),
        features={"text": clustered(n, 32)},
        feature_snapshots={"text": "snap-1"},
        split_id="s",
        graph_cache_dir=tmp_path,
    )
    assert graphs.knn_key("exact", n) == "exact"
    assert graphs.knn_key("approx", n)["method"] == "approx"
    assert graphs.knn_key("auto", n) == graphs.knn_key("exact", n)
    assert graphs.knn_key("auto", graphs.APPROX_KNN_MIN_ITEMS) == graphs.knn_key("approx", n)
    exact = graphs.original_item_graph(data, "text", 5, "exact")
    approx = graphs.original_item_graph(data, "text", 5, "approx")
    assert len(list(tmp_path.glob("graph-*.pt"))) == 2  # two entries: neither reused the other's graph
    # FREEDOM's binary graph: its own two entries as well
    for method in ("exact", "approx"):
        FREEDOM(data, FREEDOM.Config(embedding_dim=4, knn_k=5, knn_method=method))
    assert len(list(tmp_path.glob("graph-*.pt"))) == 4
    # a reload returns the cached graph of the method asked for
    again = graphs.original_item_graph(data, "text", 5, "approx")
    assert torch.equal(again.col_indices(), approx.col_indices())
    assert exact.shape == approx.shape == (n, n)


def test_approx_is_deterministic_for_a_seed():
    x = unit(clustered(1500, 200, seed=3))  # 200-d: the seeded PCA runs too
    a = graphs.approx_topk(x, 8, graphs.ApproxKnn(seed=7))
    b = graphs.approx_topk(x, 8, graphs.ApproxKnn(seed=7))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    g1 = graphs.knn_graph(x, 8, method="approx", approx=graphs.ApproxKnn(seed=7))
    g2 = graphs.knn_graph(x, 8, method="approx", approx=graphs.ApproxKnn(seed=7))
    assert torch.equal(g1.col_indices(), g2.col_indices()) and torch.equal(g1.values(), g2.values())


def test_lattice_learned_graph_search_can_be_approximate():
    from models.lattice import topk_cosine_edges

    x = clustered(1200, 64, seed=5)  # 64-d, as LATTICE's learned-graph embeddings: no PCA
    row_e, col_e = topk_cosine_edges(x, 10, "exact")
    row_a, col_a = topk_cosine_edges(x, 10, "approx")
    assert torch.equal(row_e, row_a)
    hit = (col_e.view(-1, 10).unsqueeze(2) == col_a.view(-1, 10).unsqueeze(1)).any(2).float().mean().item()
    assert hit >= 0.95, hit


@pytest.mark.parametrize("shared", [True, False])
def test_rerank_takes_each_rows_best_exact_cosines_among_its_own_candidates(shared):
    """Both re-rank paths (one product over the block's distinct candidates when they repeat,
    per-row gathers when they do not) return the brute-force answer."""
    g = torch.Generator().manual_seed(5)
    x = torch.nn.functional.normalize(torch.randn(400, 48, generator=g), dim=1)
    rows = torch.arange(0, 40)
    if shared:  # 40 rows x 12 candidates drawn from 20 items: each repeats ~24 times
        cand = torch.stack([torch.randperm(20, generator=g)[:12] + 100 for _ in rows])
    else:  # distinct candidates everywhere
        cand = torch.stack([torch.randperm(360, generator=g)[:12] + 40 for _ in rows])
    distinct = torch.unique(cand).numel()
    assert (distinct * graphs.RERANK_SHARED <= cand.numel()) == shared  # the path under test
    values, indices = graphs._rerank(x, rows, cand, 5)
    brute = torch.einsum("rd,rcd->rc", x[rows], x[cand])
    want_v, at = brute.topk(5, dim=1)
    torch.testing.assert_close(values, want_v)
    assert torch.equal(indices, cand.gather(1, at))
