"""Test helpers for the model tests: tiny graphs, dense reference maths, a real small data set,
a minimal training loop and a full-ranking recall. Nothing here imports model code besides
``models.base.TrainData``, so the dense recomputations stay independent of the models."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from models.base import TrainData

# 6 users x 8 items; every user and item has at least one edge except item 7 (tests the 1e-7 rule)
TINY_EDGES = [
    (0, 0),
    (0, 1),
    (0, 3),
    (1, 1),
    (1, 2),
    (2, 2),
    (2, 3),
    (2, 4),
    (3, 4),
    (3, 5),
    (4, 5),
    (4, 6),
    (5, 0),
    (5, 6),
    (5, 2),
]
TINY_DIMS = {"image": 5, "text": 3}


def tiny_data(modalities=("image", "text"), seed: int = 0) -> TrainData:
    g = torch.Generator().manual_seed(seed)
    users = torch.tensor([u for u, _ in TINY_EDGES])
    items = torch.tensor([i for _, i in TINY_EDGES])
    feats = {m: torch.randn(8, TINY_DIMS[m], generator=g) for m in modalities}
    return TrainData(6, 8, users, items, feats, {m: torch.ones(8, dtype=torch.bool) for m in modalities})


def tiny_batch():
    users = torch.tensor([0, 2, 3, 5, 0])
    pos = torch.tensor([1, 4, 5, 6, 1])
    neg = torch.tensor([7, 0, 2, 3, 6])
    return users, pos, neg


def dense_sym_adj(num_users: int, num_items: int, edges) -> np.ndarray:
    """D^-1/2 A D^-1/2 of A = [[0, R], [R^T, 0]], degrees + 1e-7."""
    n = num_users + num_items
    a = np.zeros((n, n))
    for u, i in edges:
        a[u, num_users + i] = a[num_users + i, u] = 1.0
    dinv = (a.sum(1) + 1e-7) ** -0.5
    return dinv[:, None] * a * dinv[None, :]


def dense_lightgcn(adj: np.ndarray, x: np.ndarray, layers: int) -> np.ndarray:
    out, h = x.copy(), x.copy()
    for _ in range(layers):
        h = adj @ h
        out = out + h
    return out / (layers + 1)


def dense_knn(x: np.ndarray, k: int, weighted: bool) -> np.ndarray:
    """Cosine top-k per row (self included), binary or weighted, D^-1/2 S D^-1/2 (D = row sums)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    s = np.zeros_like(sim)
    for r in range(sim.shape[0]):
        top = np.argsort(-sim[r])[:k]
        s[r, top] = sim[r, top] if weighted else 1.0
    dinv = s.sum(1) ** -0.5
    return dinv[:, None] * s * dinv[None, :]


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0, -x)


def dense_bpr(u: np.ndarray, p: np.ndarray, n: np.ndarray) -> float:
    return float(-log_sigmoid((u * p).sum(1) - (u * n).sum(1)).mean())


def datasets_root() -> Path:
    return Path(os.environ.get("BEFA_DATASETS_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def movielens_data(seed: int = 0) -> tuple[TrainData, dict[int, list[int]]]:
    """MovieLens-100k, ratings >= 4, one random held-out item per user with >= 5 items.

    Content: 'text' = the 19 genre flags of u.item (real), 'image' = 16 random dims (noise)."""
    root = datasets_root() / "movielens-100k-posters" / "ml-100k"
    if not (root / "u.data").exists():
        pytest.skip(f"MovieLens-100k not found under {root} (set BEFA_DATASETS_ROOT)")
    raw = np.loadtxt(root / "u.data", dtype=np.int64)
    raw = raw[raw[:, 2] >= 4]
    users, items = raw[:, 0] - 1, raw[:, 1] - 1
    num_users, num_items = 943, 1682
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(users))
    users, items = users[order], items[order]
    heldout: dict[int, list[int]] = {}
    keep = np.ones(len(users), dtype=bool)
    seen: dict[int, int] = {}
    counts = np.bincount(users, minlength=num_users)
    for idx, u in enumerate(users):
        if counts[u] >= 5 and u not in seen:
            seen[u] = idx
            heldout[int(u)] = [int(items[idx])]
            keep[idx] = False
    genres = np.zeros((num_items, 19), dtype=np.float32)
    with open(root / "u.item", encoding="latin-1") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("|")
            genres[int(parts[0]) - 1] = [float(v) for v in parts[-19:]]
    g = torch.Generator().manual_seed(seed)
    feats = {"text": torch.from_numpy(genres) + 0.01, "image": torch.randn(num_items, 16, generator=g)}
    data = TrainData(
        num_users,
        num_items,
        torch.from_numpy(users[keep]),
        torch.from_numpy(items[keep]),
        feats,
        split_id="test-ml100k",
    )
    return data, heldout


@contextlib.contextmanager
def single_thread():
    """Run torch on one thread, then restore. Why: when other jobs share the 2 cores, two
    spinning OpenMP threads were measured 10-20x slower than one on these small tensors
    (BM3, 3 MovieLens epochs: 153 s vs 8 s wall); on an idle machine one thread costs little."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_epochs(model, data: TrainData, epochs: int, lr: float, batch_size: int = 2048, seed: int = 0) -> list[float]:
    with single_thread():
        return _train_epochs(model, data, epochs, lr, batch_size, seed)


def _train_epochs(model, data: TrainData, epochs: int, lr: float, batch_size: int, seed: int) -> list[float]:
    """A minimal trainer: shuffled batches, one uniform negative per positive (None if unused)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for epoch in range(epochs):
        model.pre_epoch(epoch)
        perm = torch.randperm(data.train_users.numel())
        for start in range(0, perm.numel(), batch_size):
            b = perm[start : start + batch_size]
            neg = torch.randint(0, data.num_items, (b.numel(),)) if model.config.uses_negatives else None
            loss = model.loss(data.train_users[b], data.train_items[b], neg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
    model.eval()
    return losses


@torch.no_grad()
def recall_at(model, data: TrainData, heldout: dict[int, list[int]], k: int = 20) -> float:
    users_e, items_e = model.inference_embeddings()
    scores = users_e @ items_e.T
    scores[data.train_users, data.train_items] = -float("inf")
    top = scores.topk(k, dim=1).indices
    hits = [len(set(top[u].tolist()) & set(items)) / len(items) for u, items in heldout.items()]
    return float(np.mean(hits))


def random_recall(data: TrainData, heldout: dict[int, list[int]], k: int = 20) -> float:
    """Expected Recall@k of a uniformly random ranking of each user's non-train items."""
    train_count = torch.bincount(data.train_users, minlength=data.num_users)
    return float(np.mean([k / (data.num_items - int(train_count[u])) for u in heldout]))
