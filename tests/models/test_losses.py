"""models.losses: the fused pieces (negative cosine, gathered BPR, counted regulariser) against the plain forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.losses import bpr_from_embeddings, bpr_gathered, counted_reg, embedding_reg, negative_cosine


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


def test_weighted_negative_cosine_equals_the_mean_over_repeated_rows():
    torch.manual_seed(2)
    a = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    inv = torch.tensor([0, 2, 2, 3, 0, 2, 1])  # a batch in which distinct row j appears count_j times
    share = torch.bincount(inv, minlength=4).double() / inv.numel()
    ours = negative_cosine(a, b, share)
    g_ours = torch.autograd.grad(ours, (a, b))
    ref = negative_cosine(a[inv], b[inv])
    g_ref = torch.autograd.grad(ref, (a, b))
    torch.testing.assert_close(ours, ref)
    for x, y in zip(g_ours, g_ref):
        torch.testing.assert_close(x, y)
    assert torch.autograd.gradcheck(lambda x, y: negative_cosine(x, y, share), (a, b))
    # the fallback path (not 2-d) weighs the same way
    torch.testing.assert_close(negative_cosine(a[None], b[None], share[None]), ours.detach(), check_dtype=False)


def test_gathered_bpr_matches_the_gathered_rows_form_with_repeated_rows():
    torch.manual_seed(1)
    users_t = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    items_t = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    u, p, n = torch.tensor([0, 0, 3, 5, 3]), torch.tensor([1, 2, 2, 8, 1]), torch.tensor([2, 7, 1, 1, 0])
    ours = bpr_gathered(users_t, items_t, u, p, n)
    ref = bpr_from_embeddings(users_t[u], items_t[p], items_t[n])
    assert torch.allclose(ours, ref)
    for x, y in zip(torch.autograd.grad(ours, (users_t, items_t)), torch.autograd.grad(ref, (users_t, items_t))):
        assert torch.allclose(x, y)
    assert torch.autograd.gradcheck(lambda a, b: bpr_gathered(a, b, u, p, n), (users_t, items_t))


@pytest.mark.parametrize("form", ["squared", "norm"])
def test_counted_reg_matches_the_gathered_rows_form(form):
    torch.manual_seed(2)
    a = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    u, p, n = torch.tensor([0, 0, 4, 2]), torch.tensor([6, 6, 6, 1]), torch.tensor([0, 3, 3, 2])
    ours = counted_reg([(a, u), (b, p), (b, n)], form=form, batch_size=16)
    ref = embedding_reg(a[u], b[p], b[n], form=form, batch_size=16)
    assert torch.allclose(ours, ref)
    for x, y in zip(torch.autograd.grad(ours, (a, b)), torch.autograd.grad(ref, (a, b))):
        assert torch.allclose(x, y)
