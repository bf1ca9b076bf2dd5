"""Graphs shared by the models (spec section 2), as torch CSR tensors.

Why CSR: on CPU, CSR @ dense was measured ~8x faster than COO ``sparse.mm`` and
~15x faster than edge-list message passing at 100k edges (platform notes), so
the graphs are built as CSR and the models propagate them through
``models.sparse.SparseGraph``. PyG supplies degree and CSR conversion utils.

- ``interaction_adjacency``: A = [[0, R], [R^T, 0]] of size (U+I)^2,
  ``"sym"``: D^-1/2 A D^-1/2 (degrees + 1e-7); ``"lattice"``: D^-1 (A + I).
- ``user_item_norm``: the user-item block of the symmetric normalised adjacency (U x I).
- ``knn_graph``: cosine top-k item-item graph built in row blocks (I x I never dense),
  self included, weighted (cosine values) or binary, then D^-1/2 S D^-1/2 with row-sum D.
- ``degree_sensitive_edge_sample``: keep a fraction of user-item edges, without
  replacement, with probability proportional to 1/sqrt(d_u d_i) (FREEDOM), vectorised
  with the Gumbel top-k trick.
- ``cached``: graphs cached on disk under a key that names the feature snapshot, k,
  variant and split (never k alone: a stale graph must not survive an encoder change).
- ``original_item_graph``: the frozen weighted kNN graph of one modality's raw features
  (LATTICE's O_m, MGCN's G_m), cached under ``feature_snapshot`` (the feature-store
  snapshot id, or a content hash when the caller gave none).
- ``check_modalities``: the modalities of a model that needs at least one content graph
  (LATTICE, MGCN), validated against the item count.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from torch_geometric.utils import degree, to_torch_csr_tensor

from models.base import TrainData
from storage.atomic import atomic_path

DEGREE_EPS = 1e-7

# Largest dense similarity block built during a top-k search (floats): 32 MB. Smaller blocks
# keep the product's output in cache for the top-k pass that reads it: on amazon-baby
# (7,050 items) ~1,100-row blocks took 230 ms per modality against 320 ms for 4,760-row ones.
SIM_BLOCK_ELEMENTS = 1 << 23


def _csr(row: Tensor, col: Tensor, val: Tensor, size: tuple[int, int]) -> Tensor:
    return to_torch_csr_tensor(torch.stack([row, col]), val, size=size)


def interaction_adjacency(
    num_users: int, num_items: int, users: Tensor, items: Tensor, variant: str = "sym"
) -> Tensor:
    """Normalised bipartite adjacency over U + I nodes (users first)."""
    n = num_users + num_items
    row = torch.cat([users, items + num_users])
    col = torch.cat([items + num_users, users])
    val = torch.ones(row.numel(), dtype=torch.float32, device=users.device)
    if variant == "sym":
        deg = degree(row, n, dtype=torch.float32) + DEGREE_EPS
        dinv = deg.pow(-0.5)
        val = dinv[row] * val * dinv[col]
    elif variant == "lattice":
        loops = torch.arange(n, device=users.device)
        row, col = torch.cat([row, loops]), torch.cat([col, loops])
        val = torch.ones(row.numel(), dtype=torch.float32, device=users.device)
        deg = degree(row, n, dtype=torch.float32)
        val = val / deg[row]
    else:
        raise ValueError(f"unknown adjacency variant {variant!r}; expected 'sym' or 'lattice'")
    return _csr(row, col, val, (n, n))


def user_item_norm(num_users: int, num_items: int, users: Tensor, items: Tensor) -> Tensor:
    """U x I block of D^-1/2 A D^-1/2: entries 1/sqrt(d_u d_i)."""
    du = degree(users, num_users, dtype=torch.float32) + DEGREE_EPS
    di = degree(items, num_items, dtype=torch.float32) + DEGREE_EPS
    val = du[users].pow(-0.5) * di[items].pow(-0.5)
    return _csr(users, items, val, (num_users, num_items))


# Columns per chunk of the top-k pre-filter; rows shorter than TOPK_MIN_COLUMNS use torch.topk.
TOPK_CHUNK = 64
TOPK_MIN_COLUMNS = 1024


def row_topk(sim: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, indices) of each row's k largest entries, largest first: ``sim.topk(k, dim=1)``.

    Why not ``torch.topk`` alone: on CPU it costs ~3 ns per entry, and the kNN graphs need it
    over every item-item similarity (LATTICE rebuilds its learned graph every epoch and at
    every evaluation). Cut each row into chunks of ``TOPK_CHUNK`` columns: the row's k
    largest entries lie in the k chunks with the largest maxima (an entry of any other chunk
    is <= its chunk's maximum <= the k-th largest maximum, and those k maxima are k distinct
    entries). So one max-reduction pass, a top-k over the chunk maxima, and a top-k over
    those k chunks (plus the tail columns that fill no chunk) give the same values as
    ``torch.topk``; among tied entries a different one may be picked.
    """
    b, n = sim.shape
    chunks = n // TOPK_CHUNK
    if k <= 0 or b == 0 or n < TOPK_MIN_COLUMNS or chunks < k or sim.stride(1) != 1:
        return sim.topk(k, dim=1)
    body = sim.as_strided((b, chunks, TOPK_CHUNK), (sim.stride(0), TOPK_CHUNK, 1))
    best = body.amax(dim=2).topk(k, dim=1).indices  # (b, k) chunk ids
    within = torch.arange(TOPK_CHUNK, device=sim.device)
    cols = (best.unsqueeze(2) * TOPK_CHUNK + within).view(b, k * TOPK_CHUNK)
    if n > chunks * TOPK_CHUNK:
        tail = torch.arange(chunks * TOPK_CHUNK, n, device=sim.device).expand(b, -1)
        cols = torch.cat([cols, tail], dim=1)
    values, at = sim.gather(1, cols).topk(k, dim=1)
    return values, cols.gather(1, at)


@torch.no_grad()
def knn_graph(features: Tensor, k: int = 10, weighted: bool = True, block_size: int = 2048) -> Tensor:
    """Symmetrically normalised cosine kNN item graph, built in blocks of rows."""
    num = features.size(0)
    k = min(k, num)
    x = torch.nn.functional.normalize(features.float(), dim=1)
    rows, cols, vals = [], [], []
    for start in range(0, num, block_size):
        sim = x[start : start + block_size] @ x.T  # (block, I): the only dense piece
        top_val, top_idx = row_topk(sim, k)
        rows.append(torch.arange(start, start + sim.size(0), device=x.device).repeat_interleave(k))
        cols.append(top_idx.reshape(-1))
        vals.append(top_val.reshape(-1) if weighted else torch.ones(top_idx.numel(), device=x.device))
    row, col, val = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    rowsum = torch.zeros(num, device=x.device).index_add_(0, row, val)
    dinv = rowsum.clamp_min(DEGREE_EPS).pow(-0.5)
    val = dinv[row] * val * dinv[col]
    return _csr(row, col, val, (num, num))


def degree_sensitive_edge_sample(
    users: Tensor, items: Tensor, num_users: int, num_items: int, keep_ratio: float, generator: torch.Generator | None = None
) -> Tensor:
    """Indices of ``round(keep_ratio * E)`` edges drawn without replacement, p ∝ 1/sqrt(d_u d_i)."""
    n_keep = int(round(keep_ratio * users.numel()))
    du = degree(users, num_users, dtype=torch.float32)
    di = degree(items, num_items, dtype=torch.float32)
    logw = -0.5 * (du[users].log() + di[items].log())
    u = torch.rand(users.numel(), generator=generator, device=users.device).clamp_(1e-12, 1 - 1e-12)
    gumbel = -torch.log(-torch.log(u))
    return (logw + gumbel).topk(n_keep).indices


def cache_key(**parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def cached(cache_dir: Path | None, key_parts: dict[str, Any], build: Callable[[], Tensor]) -> Tensor:
    """Load a CSR graph cached under ``key_parts`` (must name snapshot, k, variant, split) or build it."""
    missing = {"snapshot", "k", "variant", "split"} - set(key_parts)
    if missing:
        raise ValueError(f"graph cache key lacks {sorted(missing)}: a stale graph could be reused")
    if cache_dir is None:
        return build()
    path = Path(cache_dir) / f"graph-{cache_key(**key_parts)}.pt"
    if path.exists():
        blob = torch.load(path, weights_only=True)
        return torch.sparse_csr_tensor(blob["crow"], blob["col"], blob["val"], size=tuple(blob["size"]))
    graph = build()
    with atomic_path(path) as tmp:
        torch.save(
            {
                "crow": graph.crow_indices().cpu(),
                "col": graph.col_indices().cpu(),
                "val": graph.values().cpu(),
                "size": list(graph.shape),
                "key": key_parts,
            },
            tmp,
        )
    return graph


def feature_snapshot(data: TrainData, modality: str) -> str:
    """The feature-store snapshot id, or a content hash when the caller gave none."""
    snap = data.feature_snapshots.get(modality)
    if snap:
        return snap
    x = data.features[modality].detach().to("cpu").contiguous()
    return "sha256:" + hashlib.sha256(x.numpy().tobytes()).hexdigest()[:20]


def original_item_graph(data: TrainData, modality: str, k: int) -> Tensor:
    """Frozen weighted kNN graph of the raw features (spec section 2), cached by snapshot."""
    x = data.features[modality]
    block = max(1, min(2048, SIM_BLOCK_ELEMENTS // max(x.size(0), 1)))
    key = {
        "snapshot": feature_snapshot(data, modality),
        "k": k,
        "variant": "weighted",
        "split": data.split_id,
        "modality": modality,
        "num_items": data.num_items,
    }
    return cached(data.graph_cache_dir, key, lambda: knn_graph(x, k=k, weighted=True, block_size=block))


def check_modalities(data: TrainData, model: str) -> list[str]:
    """``data.modalities``, checked for a model that needs at least one content graph: names
    non-empty without '.', tables (num_items, D). Raises ValueError otherwise."""
    mods = data.modalities
    if not mods:
        raise ValueError(f"{model}: needs at least one content modality in data.features, got none")
    for m in mods:
        x = data.features[m]
        if not m or "." in m:
            raise ValueError(f"{model}: modality name {m!r} must be non-empty and contain no '.'")
        if x.dim() != 2 or x.size(0) != data.num_items:
            raise ValueError(f"{model}: features[{m!r}] must be ({data.num_items}, D), got {tuple(x.shape)}")
    return mods
