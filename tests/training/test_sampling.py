"""Vectorised BPR negative sampling and epoch batching."""

from __future__ import annotations

import pytest
import torch

from pipeline.training.sampling import NegativeSampler, epoch_batches


def _graph(num_users=50, num_items=40, per_user=30, seed=0):
    """Dense-ish train graph: each user has 30 of the 40 items, so collisions are frequent."""
    g = torch.Generator().manual_seed(seed)
    users, items = [], []
    for u in range(num_users):
        chosen = torch.randperm(num_items, generator=g)[:per_user]
        users.append(torch.full((per_user,), u))
        items.append(chosen)
    return torch.cat(users), torch.cat(items)


def test_negatives_never_in_users_train_set():
    users, items = _graph()
    sampler = NegativeSampler(40, users, items, torch.Generator().manual_seed(1))
    train = {(int(u), int(i)) for u, i in zip(users, items)}
    for _ in range(5):
        neg = sampler.sample(users)
        assert neg.shape == users.shape
        assert not any((int(u), int(n)) in train for u, n in zip(users, neg))
    assert not sampler.contains(users, sampler.sample(users)).any()
    assert sampler.contains(users, items).all()


def test_negatives_only_items_seen_in_train_and_uniform():
    # items 0..9 are never in train: they must never be drawn
    num_users, num_items = 200, 30
    g = torch.Generator().manual_seed(0)
    users = torch.arange(num_users).repeat_interleave(2)
    items = 10 + torch.randint(0, 20, (2 * num_users,), generator=g)
    items[:20] = torch.arange(10, 30)  # every item 10..29 appears at least once
    sampler = NegativeSampler(num_items, users, items, torch.Generator().manual_seed(3))
    many_users = users.repeat(200)
    neg = sampler.sample(many_users)
    assert int(neg.min()) >= 10
    counts = torch.bincount(neg - 10, minlength=20).float()
    # Each user excludes at most 2 of 20 items, so the draw is close to uniform over 20 items:
    # expected ~4000 per item; a chi-square-like spread check with a loose bound.
    expected = neg.numel() / 20
    assert float(((counts - expected).abs() / expected).max()) < 0.1


def test_seeded_and_reproducible():
    users, items = _graph()
    a = NegativeSampler(40, users, items, torch.Generator().manual_seed(5)).sample(users)
    b = NegativeSampler(40, users, items, torch.Generator().manual_seed(5)).sample(users)
    c = NegativeSampler(40, users, items, torch.Generator().manual_seed(6)).sample(users)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_user_with_every_item_is_rejected():
    users = torch.tensor([0, 0, 0, 1])
    items = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="user_idx 0"):
        NegativeSampler(3, users, items, torch.Generator())


def test_epoch_visits_every_interaction_once_in_batches():
    users, items = _graph()
    gen = torch.Generator().manual_seed(0)
    sampler = NegativeSampler(40, users, items, gen)
    seen_u, seen_i, sizes = [], [], []
    for u, i, n in epoch_batches(users, items, 128, gen, sampler):
        sizes.append(u.numel())
        seen_u.append(u)
        seen_i.append(i)
        assert n is not None and n.shape == u.shape
    assert sizes[:-1] == [128] * (len(sizes) - 1) and sum(sizes) == users.numel()
    key = lambda u, i: sorted((u * 1000 + i).tolist())  # noqa: E731
    assert key(torch.cat(seen_u), torch.cat(seen_i)) == key(users, items)
    # shuffled: not the input order
    assert not torch.equal(torch.cat(seen_u), users)
    # pair batches (BM3): no negatives
    assert all(n is None for _, _, n in epoch_batches(users, items, 512, gen, None))
