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
"""

from __future__ import annotations

from torch import Tensor, nn

import torch


def make_projection(in_dim: int, out_dim: int) -> nn.Linear:
    """P_m with Xavier-normal weights (as the reference toolbox initialises these maps)."""
    linear = nn.Linear(in_dim, out_dim)
    nn.init.xavier_normal_(linear.weight)
    return linear


class FeatureProjection(nn.Module):
    """rows -> P_m X_m[rows] (all items when rows is None)."""

    def __init__(self, table: Tensor, dim: int, trainable: bool = False):
        super().__init__()
        if table.dim() != 2:
            raise ValueError(f"feature table must be (items, D), got shape {tuple(table.shape)}")
        if trainable:
            self.table = nn.Parameter(table.detach().clone().float())
        else:
            self.register_buffer("table", table.detach().float(), persistent=False)
        self.proj = make_projection(table.size(1), dim)
        self._gather: Tensor | None = None

    @property
    def num_table_entries(self) -> int:
        return self.table.numel()

    def forward(self, rows: Tensor | None = None) -> Tensor:
        if rows is None:
            return self.proj(self.table)
        if self.table.requires_grad:
            return self.proj(self.table[rows])
        n = rows.numel()
        buf = self._gather
        if buf is None or buf.size(0) < n or buf.device != self.table.device:
            buf = self._gather = torch.empty(max(n, 1), self.table.size(1), device=self.table.device)
        x = torch.index_select(self.table, 0, rows, out=buf[:n])
        return self.proj(x)
