"""Graphs shared by the models (spec section 2), as torch CSR tensors.

Why CSR: on CPU, CSR @ dense was measured ~8x faster than COO ``sparse.mm`` and
~15x faster than edge-list message passing at 100k edges (platform notes), so
the graphs are built as CSR and the models propagate them through
``models.sparse.SparseGraph``. Degrees and the CSR conversion are ``models.sparse``'s (the
same tensors as PyG's utils, which a test holds; PyG itself is not imported: its import
alone took seconds of every ``befa recommend``).

- ``interaction_adjacency``: A = [[0, R], [R^T, 0]] of size (U+I)^2,
  ``"sym"``: D^-1/2 A D^-1/2 (degrees + 1e-7); ``"lattice"``: D^-1 (A + I).
- ``user_item_norm``: the user-item block of the symmetric normalised adjacency (U x I).
- ``knn_graph``: cosine top-k item-item graph built in row blocks (I x I never dense),
  self included, weighted (cosine values) or binary, then D^-1/2 S D^-1/2 with row-sum D.
  ``method="approx"`` finds the neighbours with :func:`approx_topk` instead (faiss IVF);
  ``knn_method`` picks it automatically from ``APPROX_KNN_MIN_ITEMS`` items up.
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
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import faiss
import numpy as np
import torch
from torch import Tensor

from models.base import TrainData
from models.sparse import coo_to_csr, csr_tensor, degree
from storage.atomic import atomic_path

DEGREE_EPS = 1e-7
log = logging.getLogger(__name__)

# Largest dense similarity block built during a top-k search (floats): 32 MB. Smaller blocks
# keep the product's output in cache for the top-k pass that reads it: on amazon-baby
# (7,050 items) ~1,100-row blocks took 230 ms per modality against 320 ms for 4,760-row ones.
SIM_BLOCK_ELEMENTS = 1 << 23


def _csr(row: Tensor, col: Tensor, val: Tensor, size: tuple[int, int]) -> Tensor:
    return coo_to_csr(row, col, val, size)


def interaction_adjacency(num_users: int, num_items: int, users: Tensor, items: Tensor, variant: str = "sym") -> Tensor:
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


# -- kNN: exact or approximate --------------------------------------------------------
KnnMethod = Literal["auto", "exact", "approx"]
KNN_METHODS: tuple[str, ...] = ("auto", "exact", "approx")
# From this many items up, "auto" finds the kNN neighbours approximately. The exact search costs
# 2 I^2 D flops: 0.4 TFLOP at amazon-baby's 7,050 items and 4,096-d (seconds), 33 TFLOP at 63k
# (662 s measured). Why 50,000: measured on a shared 2-core host (4,096-d synthetic features),
# the approximate build was slower than the exact one at 20k items (95 s vs 55 s) and ~3x
# faster at 63k (58.5 s vs 175 s, both modalities); its re-rank gathers are memory-bound.
APPROX_KNN_MIN_ITEMS = 50_000
# query rows per exact re-rank product (at most RERANK_ROWS x candidates x k distinct candidates)
RERANK_ROWS = 256
# the shared product re-ranks a block when its candidates repeat at least this often on average
RERANK_SHARED = 3
# Rows of an approximate graph checked against the exact search after the build (logged).
RECALL_CHECK_ROWS = 128


def knn_method(method: str, num_items: int) -> str:
    """'exact' or 'approx': ``method`` itself, or for 'auto' the choice by catalog size."""
    if method not in KNN_METHODS:
        raise ValueError(f"knn_method must be one of {', '.join(KNN_METHODS)}, got {method!r}")
    if method == "auto":
        return "approx" if num_items >= APPROX_KNN_MIN_ITEMS else "exact"
    return method


@dataclass(frozen=True)
class ApproxKnn:
    """Settings of the approximate neighbour search; every one of them enters the graph cache key.

    An inverted-file (IVF) search on L2-normalised vectors, L2 metric: on unit vectors
    |a - b|^2 = 2 - 2 cos(a, b), so the L2 order is the cosine order, and L2 distances survive
    the mean-centring of the PCA, where inner products would not.
    1. Vectors of D >= 192 are projected on their top min(``pca_dim``, D / 3) principal
       directions (seeded randomised PCA, ``torch.svd_lowrank``, on ``train_sample`` rows).
    2. faiss k-means (``faiss.Kmeans``, seeded, the IVF coarse quantiser) cuts the items into
       ``nlist`` cells; every item goes to its nearest centroid.
    3. The items of one cell are searched together, with one matrix product, against the items
       of the ``nprobe`` cells whose centroids are nearest that cell's centroid; each keeps its
       ``candidates * k`` nearest in the projected space.
    4. Of those, the k with the largest exact cosine in the full space (``_rerank``): every kept
       similarity (the graph's weight) is exact, so an error is a missed neighbour, never a
       wrong weight.

    Why the search is not faiss's ``IndexIVFFlat.search``: it scans one query at a time and was
    measured at 1.1 GFLOP/s for k = 80 here (20k x 256-d, two cores), while one product per cell
    runs at BLAS speed (~50x). Why not HNSW: a multi-threaded HNSW build is not deterministic,
    and it keeps a second full-width copy of the vectors. Why torch for the PCA: faiss's
    ``PCAMatrix`` does a full eigendecomposition of the D x D covariance, measured at 227 s for
    4,096-d on two cores, against 4.5 s for a randomised SVD of 8,192 rows.
    """

    pca_dim: int = 256  # at most; and at most a third of the width
    nlist: int | None = None  # cells; None: about 2 sqrt(I), at least 39 training rows each
    nprobe: int | None = None  # cells searched per cell; None: a quarter of them (at least 8)
    candidates: int = 3  # nearest items kept per neighbour wanted, re-ranked exactly (8 gave the same recall, measured)
    train_sample: int = 4096  # rows the PCA is fitted on (all of them when fewer)
    kmeans_iters: int = 10
    seed: int = 0

    def cells(self, num: int) -> int:
        return self.nlist or max(1, min(num // 39, int(2 * num**0.5)))

    def probes(self, cells: int) -> int:
        # a fraction, not a fixed number: on weakly clustered features a neighbour often lies in a
        # cell far down the centroid order (64 of 502 cells gave recall 0.77 at 63k items, measured),
        # so the search stays ~ I^2 / 4 in the projected width: 1/64 of the exact flops at 4,096-d
        return min(cells, self.nprobe or max(8, -(-cells // 4)))

    def key(self) -> dict[str, Any]:
        return {"method": "approx", **asdict(self), "faiss": faiss.__version__}


def knn_key(method: str, num_items: int, approx: ApproxKnn | None = None) -> str | dict[str, Any]:
    """The part of a graph cache key that names how the neighbours were found."""
    if knn_method(method, num_items) == "approx":
        return (approx or ApproxKnn()).key()
    return "exact"


def exact_topk(x: Tensor, k: int, block_size: int = 2048) -> tuple[Tensor, Tensor]:
    """(values, indices) of each row's k largest cosines, for unit rows ``x``, in row blocks."""
    vals, idx = [], []
    for start in range(0, x.size(0), block_size):
        v, i = row_topk(x[start : start + block_size] @ x.T, k)  # (block, I): the only dense piece
        vals.append(v)
        idx.append(i)
    return torch.cat(vals), torch.cat(idx)


def _pca(x: Tensor, dim: int, sample: int, seed: int) -> np.ndarray:
    """x projected on its top ``dim`` principal directions (fitted on a seeded row sample)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(x.size(0), generator=g)[:sample]
    fit = x[rows]
    mean = fit.mean(0, keepdim=True)
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):  # svd_lowrank draws from the global generator
        torch.manual_seed(seed)
        # one thread: its QR factorisations took 6.3 s on two threads of a loaded 2-core host
        # against 0.15 s on one (measured); the products around them are small
        torch.set_num_threads(1)
        try:
            _, _, v = torch.svd_lowrank(fit - mean, q=dim, niter=1)
        finally:
            torch.set_num_threads(threads)
    return np.ascontiguousarray(((x - mean) @ v).numpy(), dtype=np.float32)


def _cells(z: np.ndarray, s: ApproxKnn) -> tuple[Tensor, Tensor]:
    """(cell of every row, the ``nprobe`` cells nearest each cell's centroid, nearest first)."""
    num, dim = z.shape
    nlist = s.cells(num)
    g = torch.Generator().manual_seed(s.seed + 1)
    sample = z[torch.randperm(num, generator=g)[: 39 * nlist].numpy()]  # 39 rows per cell: faiss's minimum
    km = faiss.Kmeans(dim, nlist, niter=s.kmeans_iters, seed=s.seed, verbose=False)
    km.train(sample)
    _, cell = km.index.search(z, 1)
    centroids = torch.from_numpy(km.centroids)
    probes = torch.cdist(centroids, centroids).topk(s.probes(nlist), dim=1, largest=False).indices
    return torch.from_numpy(cell[:, 0]).long(), probes


@torch.no_grad()
def approx_topk(x: Tensor, k: int, settings: ApproxKnn | None = None) -> tuple[Tensor, Tensor]:
    """(values, indices) like :func:`exact_topk` for unit rows ``x``, by the IVF search of ApproxKnn."""
    s = settings or ApproxKnn()
    device, num = x.device, x.size(0)
    xc = x.detach().float().cpu().contiguous()
    faiss.omp_set_num_threads(torch.get_num_threads())  # respect the trainer's thread setting
    # project to at most pca_dim and at most a third of the width (384-d text: 128-d); not
    # below 64 dimensions (LATTICE's 64-d learned-graph embeddings are searched as they are)
    width = min(s.pca_dim, xc.size(1) // 3)
    z = _pca(xc, width, s.train_sample, s.seed) if width >= 64 else xc.numpy()
    cell, probes = _cells(z, s)
    zt = torch.from_numpy(z)
    sq = zt.pow(2).sum(1)
    order = torch.argsort(cell, stable=True)
    bounds = torch.zeros(probes.size(0) + 1, dtype=torch.long)
    bounds[1:] = torch.bincount(cell, minlength=probes.size(0)).cumsum(0)
    members = [order[bounds[c] : bounds[c + 1]] for c in range(probes.size(0))]
    width_kept = s.candidates * k
    values = torch.full((num, k), float("-inf"))
    indices = torch.zeros((num, k), dtype=torch.long)
    for c, q in enumerate(members):
        if q.numel() == 0:
            continue
        pool = torch.cat([members[p] for p in probes[c].tolist()])
        if pool.numel() < k:
            continue  # searched exactly below
        # |z_q - z_p|^2 up to the query's own norm, which does not change its order
        near = row_topk(2 * zt[q] @ zt.index_select(0, pool).T - sq[pool], min(pool.numel(), width_kept))[1]
        for r in range(0, q.numel(), RERANK_ROWS):
            cand = pool[near[r : r + RERANK_ROWS]]
            values[q[r : r + RERANK_ROWS]], indices[q[r : r + RERANK_ROWS]] = _rerank(
                xc, q[r : r + RERANK_ROWS], cand, k
            )
    short = torch.nonzero(torch.isinf(values[:, -1])).flatten()
    if short.numel():  # rows whose probed cells held fewer than k items: search them exactly
        values[short], indices[short] = row_topk(xc[short] @ xc.T, k)
    return values.to(device), indices.to(device)


def _rerank(x: Tensor, rows: Tensor, cand: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, indices) of the k largest exact full-width cosines of each row with its own candidates.

    Two ways to the same cosines, whichever moves fewer bytes: when the block's rows share
    most candidates (items of one cell usually do), one BLAS product against the block's
    distinct candidates, read back at each row's own; otherwise each row's candidates
    gathered and dotted with it (a memory-bound gather of candidates x width floats per row).
    Measured at 63k items, 4096-d: the product took the re-rank from 40 s to 11 s on clustered
    features, and was slower than the gather where candidates overlap little."""
    distinct, at_distinct = torch.unique(cand, return_inverse=True)
    if distinct.numel() * RERANK_SHARED <= cand.numel():
        sim = (x[rows] @ x.index_select(0, distinct).T).gather(1, at_distinct)
    else:
        # index_select copies whole rows (x[cand] with a 2-d index indexes element-wise)
        gathered = x.index_select(0, cand.reshape(-1)).view(*cand.shape, -1)
        sim = torch.bmm(gathered, x[rows].unsqueeze(2)).squeeze(2)
    v, at = sim.topk(k, dim=1)
    return v, cand.gather(1, at)


def knn_recall(x: Tensor, indices: Tensor, rows: Tensor) -> float:
    """Mean overlap of ``indices[rows]`` with the exact top-k of those rows (unit rows ``x``)."""
    k = indices.size(1)
    exact = row_topk(x[rows] @ x.T, k)[1]
    found = indices[rows]
    hit = (exact.unsqueeze(2) == found.unsqueeze(1)).any(2)
    return float(hit.float().mean())


def topk_neighbours(
    x: Tensor, k: int, method: str = "exact", approx: ApproxKnn | None = None, block_size: int = 2048
) -> tuple[Tensor, Tensor]:
    """(values, indices) of each row's k most cosine-similar rows, self included (k <= rows)."""
    xn = torch.nn.functional.normalize(x.detach().float(), dim=1)
    if knn_method(method, xn.size(0)) == "exact":
        return exact_topk(xn, k, block_size)
    settings = approx or ApproxKnn()
    values, indices = approx_topk(xn, k, settings)
    g = torch.Generator().manual_seed(settings.seed + 2)
    rows = torch.randperm(xn.size(0), generator=g)[:RECALL_CHECK_ROWS].to(xn.device)
    recall = knn_recall(xn, indices, rows)
    (log.warning if recall < 0.9 else log.info)(
        "approximate kNN over %d items (%d-d): recall@%d %.3f on %d sampled rows",
        xn.size(0),
        xn.size(1),
        k,
        recall,
        rows.numel(),
    )
    return values, indices


@torch.no_grad()
def knn_graph(
    features: Tensor,
    k: int = 10,
    weighted: bool = True,
    block_size: int = 2048,
    method: str = "exact",
    approx: ApproxKnn | None = None,
) -> Tensor:
    """Symmetrically normalised cosine kNN item graph; ``method``: 'exact', 'approx' or 'auto'."""
    num = features.size(0)
    k = min(k, num)
    top_val, top_idx = topk_neighbours(features, k, method, approx, block_size)
    dev = top_idx.device
    row = torch.arange(num, device=dev).repeat_interleave(k)
    col = top_idx.reshape(-1)
    val = top_val.reshape(-1) if weighted else torch.ones(col.numel(), device=dev)
    rowsum = torch.zeros(num, device=dev).index_add_(0, row, val)
    dinv = rowsum.clamp_min(DEGREE_EPS).pow(-0.5)
    val = dinv[row] * val * dinv[col]
    return _csr(row, col, val, (num, num))


def degree_sensitive_edge_sample(
    users: Tensor,
    items: Tensor,
    num_users: int,
    num_items: int,
    keep_ratio: float,
    generator: torch.Generator | None = None,
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
        return csr_tensor(blob["crow"], blob["col"], blob["val"], tuple(blob["size"]))
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


def original_item_graph(data: TrainData, modality: str, k: int, method: str = "auto") -> Tensor:
    """Frozen weighted kNN graph of the raw features (spec section 2), cached by snapshot
    and by how the neighbours were found (``knn_key``: exact, or the approximate settings)."""
    x = data.features[modality]
    block = max(1, min(2048, SIM_BLOCK_ELEMENTS // max(x.size(0), 1)))
    key = {
        "snapshot": feature_snapshot(data, modality),
        "k": k,
        "variant": "weighted",
        "split": data.split_id,
        "modality": modality,
        "num_items": data.num_items,
        "knn": knn_key(method, data.num_items),
    }
    return cached(data.graph_cache_dir, key, lambda: knn_graph(x, k=k, weighted=True, block_size=block, method=method))


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
