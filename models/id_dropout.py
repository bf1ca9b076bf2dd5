r"""ID dropout, after DropoutNet (Volkovs, Yu and Poutanen, NeurIPS 2017): teach a content
model to score an item whose ID (behaviour) embedding is missing, as a new item's is.

With ``id_dropout = p``, each training batch draws a keep mask over the items that have
train interactions, :math:`k_i \sim \mathrm{Bernoulli}(1 - p)`, and the model reads

.. math::
    \tilde E_i = k_i \, E_i

everywhere it reads :math:`E_i` (propagation, BeFA's gate input, the loss), so for a share p
of the items the content path alone must carry the score. Unlike inverted dropout nothing is
rescaled: a dropped item must look exactly like a cold one, whose ID embedding is zero. At
evaluation and serving :math:`k_i = 1` for every trained item and 0 for items that never had
a train interaction (cold and new items), which are then scored from content only instead of
from a never-trained embedding that negative sampling pushed away from every user.

``item_ids_masked`` swaps ``model.item_embedding`` for :math:`k \odot E` inside a block (the
optimiser keeps the parameter; gradients reach it through the product).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

ID_EMBEDDING = "item_embedding"


@contextlib.contextmanager
def item_ids_masked(model: nn.Module, keep: Tensor | None) -> Iterator[None]:
    """Inside the block ``model.item_embedding`` reads ``E_i * keep[i]``; nothing changes when
    ``keep`` is None or the model has no ID embedding."""
    params = model._parameters  # noqa: SLF001 - the one place a parameter is read through a mask
    param = params.get(ID_EMBEDDING)
    if keep is None or param is None:
        yield
        return
    params[ID_EMBEDDING] = param * keep.to(device=param.device, dtype=param.dtype).unsqueeze(1)  # type: ignore[assignment]
    try:
        yield
    finally:
        params[ID_EMBEDDING] = param
