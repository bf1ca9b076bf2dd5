"""Item groups for metrics split by item: warm, cold (when the split has cold items), long tail.

- ``warm``: every item the split does not hold out as cold (for a split without cold
  items: every item, so its metrics equal the overall ones);
- ``cold``: the split's recorded cold items (``Split.cold_items``, kind ``cold-items``):
  no train interaction by construction. Only present when the split has them;
- ``long_tail``: the least popular 80% of the catalog's items by TRAIN popularity. Items
  are ordered by train interaction count, most popular first, ties by lower item index
  (the evaluator's tie order); the first ceil(0.2 I) are the head, the other items the
  long tail. Items with no train interaction (cold ones included) are in the tail.

How a group's metric is counted (``Evaluator``): per user, only that user's held-out
items in the group count as relevant (the denominator of Recall@K and the ideal DCG use
the user's number of held-out items in the group); users with none in the group are
skipped; the ranking stays the full ranking over all items (train items masked), so a
non-group item at rank 3 still occupies rank 3.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

LONG_TAIL_SHARE = 0.8
GROUPS: tuple[str, ...] = ("warm", "cold", "long_tail")


def item_groups(
    num_items: int, train_items: np.ndarray | Tensor, cold_items: Sequence[int] | np.ndarray | None = None
) -> dict[str, Tensor]:
    """group -> (I,) bool mask (module docstring). ``cold`` only when ``cold_items`` is given."""
    items = train_items.detach().cpu().numpy() if isinstance(train_items, Tensor) else np.asarray(train_items)
    popularity = np.bincount(items.astype(np.int64), minlength=num_items)[:num_items]
    order = np.lexsort((np.arange(num_items), -popularity))  # count desc, then index asc
    # round first: (1 - 0.8) * I is not exact in floating point
    head = order[: math.ceil(round((1 - LONG_TAIL_SHARE) * num_items, 6))]
    tail = np.ones(num_items, dtype=bool)
    tail[head] = False
    cold = np.zeros(num_items, dtype=bool)
    if cold_items is not None:
        idx = np.asarray(cold_items, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= num_items):
            raise ValueError(f"cold item index out of range (catalog has {num_items} items)")
        cold[idx] = True
    groups = {"warm": torch.from_numpy(~cold)}
    if cold_items is not None:
        groups["cold"] = torch.from_numpy(cold)
    groups["long_tail"] = torch.from_numpy(tail)
    return groups
