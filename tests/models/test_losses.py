"""models.losses: the fused negative cosine against torch's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.losses import negative_cosine


def test_negative_cosine_matches_torch_values_and_gradients_including_zero_rows():
    torch.manual_seed(0)
    a = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(negative_cosine, (a, b))
    with torch.no_grad():
        a[2] = 0.0
        b[4] = 0.0
    ours = negative_cosine(a, b)
    g_ours = torch.autograd.grad(ours, (a, b))
    ref = 1 - F.cosine_similarity(a, b, dim=-1).mean()
    g_ref = torch.autograd.grad(ref, (a, b))
    assert torch.allclose(ours, ref)
    for x, y in zip(g_ours, g_ref):
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-6)


def test_negative_cosine_gives_no_gradient_to_a_detached_target():
    a = torch.randn(5, 4, requires_grad=True)
    b = torch.randn(5, 4)
    negative_cosine(a, b).backward()
    assert a.grad is not None and b.grad is None
