"""Content features as the models consume them: c_m = P_m x_m (spec section 3).

:class:`FeatureProjection` holds one modality's raw table X_m (I x D_m) and the linear
map P_m: D_m -> d. The table is a frozen, non-persistent buffer by default (it is data:
checkpoints stay small and are rebuilt from the feature store), or an ``nn.Parameter``
initialised from X_m when ``trainable=True`` (the reference toolbox's behaviour).

Why gather into a reused buffer: the models only need c_m for the items of a batch, but
a fresh (rows x 4096) float32 gather each batch was measured ~10x slower than the same
gather into a preallocated buffer on this kind of machine (every new 50 MB block is
page-faulted in again). Autograd keeps the buffer for P_m's gradient; the buffer is
written with ``out=``, which bumps its version counter, so reusing it before that
backward ran raises an error instead of giving a wrong gradient.

Why a trained table is projected whole once a batch needs most of its rows
(``FULL_TABLE_SHARE``): the gathered path's backward writes the table's gradient as a zero
table plus a scatter of the gathered rows' gradients (a D_m-wide fill and index_put per
step); projecting every row and gathering the d-wide outputs gets that gradient from one
product, grad_c W. Measured on movielens (1,682 items, D 1280 + 384, one thread): FREEDOM's
batches touch ~82% of the items and its trained-table epoch fell from 0.395 to 0.332 s;
BM3's touch ~40%, where the whole table was slower (0.355 vs 0.414 s). Per-call
microbenchmarks put the crossover at 58-70% of the rows. The same values and gradient
either way (rows outside the batch get an exact zero).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# A trained table is projected whole when a batch needs at least this share of its rows
# (the module docstring says why and what was measured).
FULL_TABLE_SHARE = 0.6
# Entries of a feature table below this times its largest magnitude are set to 0 (``without_negligible``).
NEGLIGIBLE = 1e-20
CLEAN_CHUNK_ELEMENTS = 1 << 22  # entries per chunk of that check (16 MB of float32): tables reach GBs


class _FrozenInputLinear(torch.autograd.Function):
    """x W^T + b for a constant x: the weight gradient as (x^T g)^T."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.has_bias = bias is not None
        return torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        grad_w = (x.t() @ grad).t().contiguous() if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return None, grad_w, grad_b


def project(x: Tensor, linear: nn.Linear) -> Tensor:
    """``linear(x)`` for a frozen feature table x (no gradient to x).

    The weight gradient is one (N x D) by (N x d) product, and which operand order MKL runs
    faster depends on the CPU (:func:`weight_gradient_as_xtg`). Same values, same gradient
    to float rounding (tested), and the same order every time on a given machine."""
    if (
        x.requires_grad
        or x.device.type != "cpu"
        or not torch.is_grad_enabled()
        or x.dim() != 2
        or not weight_gradient_as_xtg()
    ):
        return F.linear(x, linear.weight, linear.bias)
    return _FrozenInputLinear.apply(x, linear.weight, linear.bias)


@functools.cache
def weight_gradient_as_xtg() -> bool:
    """Whether the frozen-table projection's weight gradient runs as (x^T g)^T (on AVX2 CPUs)
    instead of ``F.linear``'s g^T x.

    Measured on this project's 2-core VMs, whose host CPU changes between sittings: on an
    AVX2 host x^T g was ~15-30% faster for N x 4096 tables; on an AVX-512 host (2026-12-06,
    one thread) g^T x was faster at every shape tried: 1.76 vs 2.73 ms for 1,682 x 1,280,
    37.9 vs 63.6 ms for 7,050 x 4,096, and movielens epochs with F.linear ran 7.5% (MGCN),
    5% (FREEDOM) and 3% (BM3) faster. A fixed rule per CPU keeps a run's arithmetic the same
    from one call to the next (no timing-dependent choice)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX2"


def without_negligible(table: Tensor) -> Tensor:
    """``table`` with entries below ``NEGLIGIBLE`` times its largest magnitude set to 0 (a copy
    when there are any, else the same tensor).

    Why: such entries change no product in float32, but multiplied by a gradient (~1e-8 and
    below) they give denormal numbers, which x86 CPUs process in microcode at ~100x the cost.
    all-MiniLM-L6-v2 has two dimensions that are always ~1e-33: every row of befa's default
    text features has them. Measured 2026-12-06 (movielens, one thread, real EfficientNet-Lite2
    + MiniLM features): the text projection's weight gradient took 6.6-8.3 ms a batch instead
    of 0.4-0.9 ms. With these entries set to 0, FREEDOM's frozen-table epoch fell from 0.33 to
    0.19 s and MGCN's from 0.66 to 0.47 s (flushing the process's denormals gave the same).
    Flushing (``torch.set_flush_denormal``) is per thread and does not reach OpenMP workers
    that already exist, so the cause is removed here instead. The feature store and the
    fingerprints are untouched: this is the models' copy of the table."""
    if not table.is_floating_point() or not table.numel():
        return table
    low, high = torch.aminmax(table)  # one pass, no table-sized temporary
    bound = NEGLIGIBLE * max(abs(float(low)), abs(float(high)))
    step = max(1, CLEAN_CHUNK_ELEMENTS // max(table[0].numel(), 1))  # rows per chunk: bounded temporaries

    def tiny(part: Tensor) -> Tensor:
        return (part != 0) & (part.abs() < bound)

    if not any(bool(tiny(table[s : s + step]).any()) for s in range(0, table.size(0), step)):
        return table
    out = table.clone()
    for s in range(0, out.size(0), step):
        part = out[s : s + step]
        part.masked_fill_(tiny(part), 0.0)
    return out


def make_projection(in_dim: int, out_dim: int) -> nn.Linear:
    """P_m with Xavier-normal weights (as the reference toolbox initialises these maps)."""
    linear = nn.Linear(in_dim, out_dim)
    nn.init.xavier_normal_(linear.weight)
    return linear


class FeatureProjection(nn.Module):
    """rows -> P_m X_m[rows] (all items when rows is None).

    ``init``: "xavier_normal" (BM3, FREEDOM, as their reference code) or "default" (PyTorch's
    ``nn.Linear`` initialisation: LATTICE, MGCN, as theirs)."""

    def __init__(self, table: Tensor, dim: int, trainable: bool = False, init: str = "xavier_normal"):
        super().__init__()
        if table.dim() != 2:
            raise ValueError(f"feature table must be (items, D), got shape {tuple(table.shape)}")
        if init not in ("xavier_normal", "default"):
            raise ValueError(f"FeatureProjection init must be 'xavier_normal' or 'default', got {init!r}")
        table = without_negligible(table.detach().float())
        if trainable:
            self.table = nn.Parameter(table.clone())
        else:
            self.register_buffer("table", table, persistent=False)  # the caller's storage, unless cleaned
        if init == "xavier_normal":
            self.proj = make_projection(table.size(1), dim).to(table.device)
        else:
            self.proj = nn.Linear(table.size(1), dim, device=table.device)
        self._gather: Tensor | None = None

    @property
    def num_table_entries(self) -> int:
        return self.table.numel()

    def forward(self, rows: Tensor | None = None) -> Tensor:
        if rows is None:
            return project(self.table, self.proj)
        if self.table.requires_grad:
            if rows.numel() >= FULL_TABLE_SHARE * self.table.size(0):
                return self.proj(self.table)[rows]
            return self.proj(self.table[rows])
        n = rows.numel()
        buf = self._gather
        if buf is None or buf.size(0) < n or buf.device != self.table.device:
            buf = self._gather = torch.empty(max(n, 1), self.table.size(1), device=self.table.device)
        x = torch.index_select(self.table, 0, rows, out=buf[:n])
        return project(x, self.proj)
