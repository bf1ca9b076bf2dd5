"""Sparse graph products with cheap backward passes: the one propagation primitive of ``models/``.

Every model propagates through a :class:`SparseGraph` (rows sorted, CSR arrays plus the
CSR structure of its transpose, built once):

- ``graph @ x`` is a CSR product with autograd. The gradient for x is ``G^T grad``: one
  more CSR product through the transpose kept in the graph (for a symmetric graph, the
  graph itself). The gradient for the values, when they require it (LATTICE's learned
  graph), is one dot product per entry (:func:`entry_dots`, torch's sampled dense-dense
  product).
- ``propagate(graph, [E_u, E_i], L)`` is LightGCN's mean of H^(0..L), H^(l+1) = G H^(l),
  as one autograd node (its backward is the same mean through G^T).
- ``coalesce_sum`` sums duplicate entries differentiably (mixing several graphs).

Why not torch's own ``csr @ x`` with autograd (measured on this project's 2-core CPU
machines, amazon-baby: 26k x 26k adjacency, 240k non-zeros, 64 columns):

- its backward with respect to x transposes the matrix on every call: ~5-10x the forward;
- its backward with respect to the sparse values densifies the matrix (20 GB and two
  minutes for a 63k x 63k graph with 2.5 M entries);
- on CPU its forward is ~2x slower than ``F.embedding_bag`` over the same CSR arrays (row r
  of the result is the weighted sum of the rows ``col[crow[r]:crow[r+1]]`` of x), so the
  CPU product runs as an embedding bag; CUDA keeps cuSPARSE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

# Largest temporary (floats) of the value-gradient gather: 128 MB.
GATHER_ELEMENTS = 1 << 25


def _crow(row: Tensor, n: int) -> Tensor:
    crow = torch.zeros(n + 1, dtype=torch.long, device=row.device)
    crow[1:] = torch.bincount(row, minlength=n).cumsum(0)
    return crow


def csr_tensor(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """``torch.sparse_csr_tensor``, opting out of its invariant checks explicitly (befa's
    arrays are sorted by construction): without the choice, PyTorch warns on every build."""
    return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def degree(index: Tensor, num_nodes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """How often each of ``num_nodes`` ids occurs in ``index`` (PyG's ``degree``, the same op)."""
    out = torch.zeros(num_nodes, dtype=dtype, device=index.device)
    return out.scatter_add_(0, index, torch.ones(index.numel(), dtype=dtype, device=index.device))


def coo_to_csr(row: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A CSR tensor from (row, col, value) entries in any order: sorted by row, then column,
    duplicates summed. The same tensor as PyG's ``to_torch_csr_tensor`` (a test holds them
    equal), without importing PyG (which imports torch._dynamo and transformers: seconds
    before ``befa recommend`` could score)."""
    key = row * max(size) + col
    key, perm = torch.sort(key)
    row, col, values = row[perm], col[perm], values[perm]
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] > key[:-1]
    if not bool(first.all()):
        group = first.cumsum(0) - 1
        summed = torch.zeros(int(first.sum()), dtype=values.dtype, device=values.device)
        values = summed.scatter_add_(0, group, values)
        row, col = row[first], col[first]
    return csr_tensor(_crow(row, size[0]), col, values, size)


def csr_product(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int], x: Tensor) -> Tensor:
    """(CSR matrix) @ x without autograd, computed in float32 (also under autocast)."""
    x = x.detach().to(values.dtype)
    if x.device.type == "cpu":
        return F.embedding_bag(col, x, crow, mode="sum", per_sample_weights=values.detach(), include_last_offset=True)
    return csr_tensor(crow, col, values.detach(), shape) @ x


@dataclass
class SparseGraph:
    """A fixed-structure sparse matrix (entries sorted by row, then column) whose values may carry gradient."""

    num_rows: int
    num_cols: int
    row: Tensor
    col: Tensor
    crow: Tensor
    values: Tensor
    t_perm: Tensor | None  # entry order of the transpose (by column, then row); None when symmetric
    t_crow: Tensor
    t_col: Tensor
    t_values: Tensor | None = None  # values in transposed order, kept for constant graphs

    @classmethod
    def from_sorted(
        cls, row: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int], symmetric: bool = False
    ) -> "SparseGraph":
        """From entries already sorted by (row, col). ``symmetric=True`` promises G = G^T (values included)."""
        n, m = shape
        crow = _crow(row, n)
        if symmetric:
            if n != m:
                raise ValueError(f"SparseGraph: a {n} x {m} matrix cannot be symmetric")
            return cls(n, m, row, col, crow, values, None, crow, col)
        t_perm = torch.argsort(col * n + row)
        t_values = None if values.requires_grad else values[t_perm]
        return cls(n, m, row, col, crow, values, t_perm, _crow(col[t_perm], m), row[t_perm], t_values)

    @classmethod
    def from_csr(cls, csr: Tensor, symmetric: bool = False) -> "SparseGraph":
        crow, col = csr.crow_indices().long(), csr.col_indices().long()
        row = torch.repeat_interleave(torch.arange(csr.size(0), device=crow.device), crow.diff())
        return cls.from_sorted(row, col, csr.values(), (csr.size(0), csr.size(1)), symmetric)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_rows, self.num_cols)

    def with_values(self, values: Tensor) -> "SparseGraph":
        t_values = None if self.t_perm is None or values.requires_grad else values[self.t_perm]
        return SparseGraph(
            **{f.name: getattr(self, f.name) for f in fields(self)} | {"values": values, "t_values": t_values}
        )

    def detach(self) -> "SparseGraph":
        return self.with_values(self.values.detach())

    def transposed_values(self) -> Tensor:
        """The values in the transpose's entry order (a gather per call only while they carry gradient)."""
        if self.t_perm is None:
            return self.values.detach()
        if self.t_values is not None:
            return self.t_values
        return self.values.detach()[self.t_perm]

    def csr(self) -> Tensor:
        return csr_tensor(self.crow, self.col, self.values.detach(), self.shape)

    def to_dense(self) -> Tensor:
        return self.csr().to_dense()

    def __matmul__(self, x: Tensor) -> Tensor:
        if not (self.values.requires_grad or x.requires_grad):
            return csr_product(self.crow, self.col, self.values, self.shape, x)
        return _SpMM.apply(self.values, x, self)


def entry_dots(graph: SparseGraph, a: Tensor, b: Tensor) -> Tensor:
    """<a_i, b_j> for every entry (i, j) of ``graph``, in its entry order: dL/dG_ij for G @ b
    with dL/d(G @ b) = a (a sampled dense-dense product, SDDMM).

    Why ``torch.sparse.sampled_addmm``: the gathered form, (a[row] * b[col]).sum(-1), moves
    two (entries x d) tables through memory; measured on LATTICE's learned graph of movielens
    (1,682 items, 60,679 entries, d 64, one thread) 7.5 ms against 0.36 ms for the native
    kernel. The gathered form stays for the rest (other dtypes; CUDA, where the kernel was not
    measured), in chunks that bound its temporaries."""
    cpu_float = a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64) and a.dtype == b.dtype
    if cpu_float and graph.values.numel():
        pattern = csr_tensor(
            graph.crow, graph.col, torch.zeros(graph.col.numel(), dtype=a.dtype, device=a.device), graph.shape
        )
        return torch.sparse.sampled_addmm(pattern, a.contiguous(), b.t(), beta=0.0).values()
    out = torch.empty(graph.col.numel(), dtype=a.dtype, device=a.device)
    step = max(1, GATHER_ELEMENTS // max(b.size(1), 1))
    for s in range(0, out.numel(), step):
        r, c = graph.row[s : s + step], graph.col[s : s + step]
        out[s : s + step] = (a[r] * b[c]).sum(-1)
    return out


class _SpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, x: Tensor, graph: SparseGraph) -> Tensor:  # type: ignore[override]
        ctx.graph = graph
        ctx.save_for_backward(values, x)
        return csr_product(graph.crow, graph.col, values, graph.shape, x)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        values, x = ctx.saved_tensors
        g: SparseGraph = ctx.graph
        grad_values = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_values = entry_dots(g, grad_out, x.to(grad_out.dtype)).to(values.dtype)
        if ctx.needs_input_grad[1]:
            grad_x = csr_product(g.t_crow, g.t_col, g.transposed_values(), (g.num_cols, g.num_rows), grad_out)
        return grad_values, grad_x, None


def _mean_of_powers(
    crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int], x: Tensor, num_layers: int
) -> Tensor:
    """(1 / (L + 1)) sum_{l=0..L} G^l x for L >= 1, with the 1 / (L + 1) folded into the last product."""
    scale = 1.0 / (num_layers + 1)
    x = x.to(values.dtype)
    h, acc = x, x
    for _ in range(num_layers - 1):
        h = csr_product(crow, col, values, shape, h)
        acc = acc + h if acc is x else acc.add_(h)
    return csr_product(crow, col, values * scale, shape, h).add_(acc, alpha=scale)


class _MeanPropagation(torch.autograd.Function):
    """LightGCN's layer mean as one linear operator: its gradient is the same mean through G^T.

    Why one autograd node: the op-by-op graph (cat, L products, L adds, a division, then a
    slice per row block) makes a full (U + I) x d pass per op in both directions, and each
    slice's backward writes a zero table of the full size. A profile put the division and
    the slice-backward fills at ~7 ms of a ~60 ms BM3 batch on amazon-baby; end-to-end A/B
    runs on this project's shared 2-core host could not separate the gain from its noise.
    A linear map also needs nothing saved for its backward (less memory)."""

    @staticmethod
    def forward(ctx, graph: SparseGraph, num_layers: int, *blocks: Tensor):  # type: ignore[override]
        ctx.graph, ctx.num_layers = graph, num_layers
        ctx.sizes = [b.size(0) for b in blocks]
        x = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
        out = _mean_of_powers(graph.crow, graph.col, graph.values.detach(), graph.shape, x, num_layers)
        return tuple(out.split(ctx.sizes))

    @staticmethod
    def backward(ctx, *grads: Tensor):  # type: ignore[override]
        g: SparseGraph = ctx.graph
        ref = next(gr for gr in grads if gr is not None)
        parts = [ref.new_zeros(n, ref.size(1)) if gr is None else gr for n, gr in zip(ctx.sizes, grads)]
        grad = torch.cat(parts) if len(parts) > 1 else parts[0]
        grad_x = _mean_of_powers(
            g.t_crow, g.t_col, g.transposed_values(), (g.num_cols, g.num_rows), grad, ctx.num_layers
        )
        return (None, None, *grad_x.split(ctx.sizes))


def propagate(graph: SparseGraph, blocks: Sequence[Tensor], num_layers: int) -> tuple[Tensor, ...]:
    """LightGCN: mean of H^(0), ..., H^(L) with H^(l+1) = G @ H^(l), H^(0) = the blocks stacked by rows.

    Returns the mean split into the same row blocks (e.g. ``users, items = propagate(adj,
    [E_u, E_i], L)``). A graph whose values carry gradient goes op by op through ``graph @``."""
    blocks = list(blocks)
    if num_layers == 0:
        return tuple(blocks)
    if not graph.values.requires_grad:
        return _MeanPropagation.apply(graph, num_layers, *blocks)
    x = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    out, h = x, x
    for _ in range(num_layers):
        h = graph @ h
        out = out + h
    return tuple((out / (num_layers + 1)).split([b.size(0) for b in blocks]))


def coalesce_sum(row: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> SparseGraph:
    """Sum duplicate (row, col) entries, differentiably in ``values``."""
    key = row * shape[1] + col
    uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
    summed = torch.zeros(uniq.numel(), dtype=values.dtype, device=values.device).index_add(0, inverse, values)
    return SparseGraph.from_sorted(uniq // shape[1], uniq % shape[1], summed, shape)


def weighted_sum(terms: list[tuple[float, SparseGraph]]) -> SparseGraph:
    """sum_m w_m G_m for graphs of one shape (FREEDOM's G = 0.1 G_v + 0.9 G_t)."""
    if not terms:
        raise ValueError("weighted_sum needs at least one graph")
    shape = terms[0][1].shape
    for _, graph in terms:
        if graph.shape != shape:
            raise ValueError(f"weighted_sum: graph shapes differ ({graph.shape} vs {shape})")
    row = torch.cat([g.row for _, g in terms])
    col = torch.cat([g.col for _, g in terms])
    values = torch.cat([w * g.values for w, g in terms])
    return coalesce_sum(row, col, values, shape)
