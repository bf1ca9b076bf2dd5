"""models.sparse's degree and CSR conversion give PyG's tensors, so the graphs did not change
when models stopped importing PyG (its import alone took seconds of every `befa recommend`)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from models import graphs
from models.graphs import interaction_adjacency, knn_graph, user_item_norm
from models.sparse import coo_to_csr, degree

pyg_utils = pytest.importorskip("torch_geometric.utils")


def _same_csr(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.equal(a.crow_indices(), b.crow_indices())
    assert torch.equal(a.col_indices(), b.col_indices())
    assert torch.equal(a.values(), b.values())  # bit for bit, not approximately


def _entries(seed: int, n: int, m: int, nnz: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, n, (nnz,), generator=g),
        torch.randint(0, m, (nnz,), generator=g),
        torch.rand(nnz, generator=g),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coo_to_csr_and_degree_equal_pygs(seed):
    row, col, val = _entries(seed, 37, 53, 400)
    # unique entries in random order (what befa's graphs hold): the same arrays exactly
    keys = torch.unique(row * 53 + col)
    keys = keys[torch.randperm(keys.numel(), generator=torch.Generator().manual_seed(seed))]
    r, c, v = keys // 53, keys % 53, torch.rand(keys.numel())
    _same_csr(coo_to_csr(r, c, v, (37, 53)), pyg_utils.to_torch_csr_tensor(torch.stack([r, c]), v, size=(37, 53)))
    # duplicates are summed as PyG sums them
    ours = coo_to_csr(row, col, val, (37, 53))
    theirs = pyg_utils.to_torch_csr_tensor(torch.stack([row, col]), val, size=(37, 53))
    assert ours._nnz() < row.numel()  # there were duplicates
    assert torch.equal(ours.crow_indices(), theirs.crow_indices())
    assert torch.equal(ours.col_indices(), theirs.col_indices())
    assert torch.allclose(ours.values(), theirs.values(), rtol=0, atol=1e-6)
    assert torch.equal(degree(row, 37), pyg_utils.degree(row, 37, dtype=torch.float32))


def test_the_models_graphs_equal_the_ones_built_with_pyg(monkeypatch):
    users, items = _entries(5, 40, 60, 500)[:2]
    pairs = torch.unique(users * 60 + items)
    users, items = pairs // 60, pairs % 60
    ours = [interaction_adjacency(40, 60, users, items, v) for v in ("sym", "lattice")]
    ours.append(user_item_norm(40, 60, users, items))
    feats = torch.randn(60, 16, generator=torch.Generator().manual_seed(3))
    ours.append(knn_graph(feats, k=5))

    def pyg_csr(row, col, val, size):
        return pyg_utils.to_torch_csr_tensor(torch.stack([row, col]), val, size=size)

    monkeypatch.setattr(graphs, "coo_to_csr", pyg_csr)
    monkeypatch.setattr(graphs, "degree", lambda index, n, dtype: pyg_utils.degree(index, n, dtype=dtype))
    theirs = [interaction_adjacency(40, 60, users, items, v) for v in ("sym", "lattice")]
    theirs.append(user_item_norm(40, 60, users, items))
    theirs.append(knn_graph(feats, k=5))
    for a, b in zip(ours, theirs):
        _same_csr(a, b)


def test_building_a_graph_warns_nothing():
    users, items = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = interaction_adjacency(2, 2, users, items)
        graph @ torch.ones(4, 2)
    assert graph.shape == (4, 4)
    assert not [w for w in caught if "invariant" in str(w.message)], [str(w.message) for w in caught]


def test_models_do_not_import_pyg():
    code = "import sys, models, models.graphs, pipeline.serving.servable; print('torch_geometric' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
