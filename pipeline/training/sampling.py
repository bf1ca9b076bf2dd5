"""Training batches: shuffled train interactions plus vectorised BPR negatives.

An epoch visits every train interaction once, in a seeded random order, in batches of
``batch_size`` (2048). For BPR models each positive gets one negative item drawn
uniformly over the items seen in train, re-drawn while the user has it in train.

Vectorised (the reference draws negatives in a Python loop): draw all negatives at
once, find the collisions with a lookup of ``user * I + item`` in the sorted train
keys (``torch.searchsorted``), redraw only the collisions, repeat until none remain.
Each redraw round keeps a fraction <= (max user degree / #candidates) of the previous
round, so it ends in a few rounds; a user who has every candidate item in train could
never get a negative and is rejected up front with a clear error.

All randomness comes from one ``torch.Generator`` (seeded by the trainer and saved
in its checkpoints), so an epoch's batches and negatives are reproducible and a
resumed run draws exactly what an uninterrupted one would have drawn.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


class NegativeSampler:
    """Uniform negatives over train-seen items, never an item of the user's train set."""

    def __init__(self, num_items: int, train_users: Tensor, train_items: Tensor, generator: torch.Generator):
        if train_users.numel() == 0:
            raise ValueError("NegativeSampler: the train split has no interactions")
        self.num_items = int(num_items)
        self.generator = generator
        self.candidates = torch.unique(train_items)  # sorted item ids seen in train
        self.keys = torch.unique(train_users * self.num_items + train_items)  # sorted, deduplicated
        # A user whose train set covers all candidates can never receive a negative.
        users_of_keys = self.keys // self.num_items
        degree = torch.bincount(users_of_keys)
        full = torch.nonzero(degree >= self.candidates.numel()).flatten()
        if full.numel():
            raise ValueError(
                f"NegativeSampler: user_idx {int(full[0])} (and {full.numel() - 1} more) has every one of the "
                f"{self.candidates.numel()} train items in train, so no negative item exists for it"
            )

    def contains(self, users: Tensor, items: Tensor) -> Tensor:
        """Bool mask: (user, item) pair is a train interaction."""
        query = users * self.num_items + items
        pos = torch.searchsorted(self.keys, query).clamp_(max=self.keys.numel() - 1)
        return self.keys[pos] == query

    def draw(self, n: int) -> Tensor:
        pick = torch.randint(self.candidates.numel(), (n,), generator=self.generator, device=self.candidates.device)
        return self.candidates[pick]

    def sample(self, users: Tensor) -> Tensor:
        neg = self.draw(users.numel())
        todo = torch.nonzero(self.contains(users, neg)).flatten()
        while todo.numel():
            neg[todo] = self.draw(todo.numel())
            still = self.contains(users[todo], neg[todo])
            todo = todo[still]
        return neg


def epoch_batches(
    train_users: Tensor,
    train_items: Tensor,
    batch_size: int,
    generator: torch.Generator,
    sampler: NegativeSampler | None,
) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """(users, positive items, negative items or None) for one shuffled pass over train."""
    n = train_users.numel()
    perm = torch.randperm(n, generator=generator, device=generator.device)
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        users, pos = train_users[idx], train_items[idx]
        neg = sampler.sample(users) if sampler is not None else None
        yield users, pos, neg
