"""The behaviour-driven feature adapter, BeFA (spec section 4; arXiv 2406.00323).

For one modality m, with c_m = P_m X_m the content feature as the base model consumes it
(N x d) and E_i the item's behaviour (ID) embedding (N x d):

    z1 = Dropout(ReLU(W1 c_m + b1))          W1: d -> h   "decoupling" into a space of size h
    z2 = Dropout(ReLU(W2 tanh(z1) + b2))     W2: h -> h   "filtering"
    g_m = sigmoid(W3 z2 + b3)                W3: h -> d   "recombining" into a gate in (0, 1)^d
    adapted_m = E_i * g_m                                 the gate selects from the behaviour

h = max(1, round(d * t)). The authors' code accepts only integer t; any positive t works
here (t = 0.125 at d = 64 gives h = 8). ``round`` is Python's (half to even), which only
matters when d * t ends in exactly .5.

Parameters per modality: (d h + h) + (h^2 + h) + (h d + d); d = 64: t = 1 -> 12,480,
t = 8 -> 328,768 (see :func:`befa_parameter_count`).

Cold items (no train interaction): the gate g_m(c_m) is computed from content every
item has, but adapted_m = E_i * g_m multiplies the item's behaviour embedding, which a
cold item never trained (its E_i only ever gets BPR-negative and regulariser gradients),
so for cold items BeFA passes on little more than a gated, near-initial E_i. Each base
model's docstring says what that means at its insertion point.

Choices where the spec is silent: the three linear maps keep PyTorch's default
``nn.Linear`` initialisation (Kaiming-uniform weights, uniform biases), so an untrained
gate is close to 0.5 everywhere and the adapter starts as a mild, input-dependent
shrinkage of E_i rather than as zero; dropout is the standard inverted dropout
(``models.dropout``: ``nn.Dropout``'s distribution, faster on CPU), active only in ``train()`` mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.dropout import Dropout


def befa_hidden_size(dim: int, t: float) -> int:
    """Size h of the decoupling space: max(1, round(dim * t))."""
    if dim < 1:
        raise ValueError(f"BeFA: embedding dim must be >= 1, got {dim}")
    if not t > 0:
        raise ValueError(f"BeFA: t must be a positive number, got {t}")
    return max(1, int(round(dim * t)))


def befa_parameter_count(dim: int, t: float) -> int:
    """(d h + h) + (h^2 + h) + (h d + d): the adapter's size for one modality."""
    h = befa_hidden_size(dim, t)
    return (dim * h + h) + (h * h + h) + (h * dim + dim)


class BeFA(nn.Module):
    """One adapter per modality: ``forward(content, behaviour) = behaviour * gate(content)``."""

    def __init__(self, dim: int, t: float = 1.0, dropout: float = 0.3):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"BeFA: dropout must be in [0, 1), got {dropout}")
        self.dim = dim
        self.t = t
        self.hidden = befa_hidden_size(dim, t)
        self.decouple = nn.Linear(dim, self.hidden)  # W1, b1
        self.filter = nn.Linear(self.hidden, self.hidden)  # W2, b2
        self.recombine = nn.Linear(self.hidden, dim)  # W3, b3
        self.dropout = Dropout(dropout)

    def gate(self, content: Tensor) -> Tensor:
        """g in (0, 1)^(N x d), the selection gate (exposed for the study's heatmaps)."""
        if content.dim() != 2 or content.size(-1) != self.dim:
            raise ValueError(f"BeFA: content must be (N, {self.dim}), got {tuple(content.shape)}")
        z = self.dropout(self.decouple(content).relu())
        z = self.dropout(self.filter(z.tanh()).relu())
        return self.recombine(z).sigmoid()

    def forward(self, content: Tensor, behaviour: Tensor) -> Tensor:
        if behaviour.shape != content.shape:
            raise ValueError(
                f"BeFA: content {tuple(content.shape)} and behaviour {tuple(behaviour.shape)} must have the same shape"
            )
        return behaviour * self.gate(content)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, t={self.t}, hidden={self.hidden}"


def adapt_all(adapters: Sequence[BeFA], contents: Sequence[Tensor], behaviour: Tensor) -> list[Tensor]:
    """``[adapters[j](contents[j], behaviour) for j]``, the modalities run as one batched chain.

    Why: on CPU one adapter is ~25 small ops over (N x d) tensors, and with BM3's ~1,500
    rows per batch their fixed costs dominate; stacking the modalities' weights and running
    ``baddbmm`` halves the op count for two modalities (measured ~25% less adapter time on
    this project's 2-core machines). Same maths and same dropout distribution (the draws
    differ from running the adapters one by one). Adapters of different sizes, dropout or
    mode, or fewer than two: one by one (which also raises the shape errors)."""
    if len(adapters) < 2:
        return [a(c, behaviour) for a, c in zip(adapters, contents)]
    first = adapters[0]
    key = (first.dim, first.hidden, first.dropout.p, first.training)
    if (
        any((a.dim, a.hidden, a.dropout.p, a.training) != key for a in adapters)
        or any(c.shape != behaviour.shape for c in contents)
        or behaviour.dim() != 2
        or behaviour.size(-1) != first.dim
    ):
        return [a(c, behaviour) for a, c in zip(adapters, contents)]

    def stacked(layer: str) -> tuple[Tensor, Tensor]:
        weight = torch.stack([getattr(a, layer).weight for a in adapters]).transpose(1, 2)
        bias = torch.stack([getattr(a, layer).bias for a in adapters]).unsqueeze(1)
        return weight, bias

    (w1, b1), (w2, b2), (w3, b3) = stacked("decouple"), stacked("filter"), stacked("recombine")
    z = first.dropout(torch.baddbmm(b1, torch.stack(list(contents)), w1).relu())
    z = first.dropout(torch.baddbmm(b2, z.tanh(), w2).relu())
    gates = torch.baddbmm(b3, z, w3).sigmoid()
    return list((behaviour * gates).unbind(0))
