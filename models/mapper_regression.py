r"""The regression mapper (DeepMusic style: van den Oord, Dieleman and Schrauwen, NeurIPS 2013,
who regressed a trained collaborative model's item factors from audio).

Over the warm items W (items with train interactions), with the model's trained item
representations :math:`h_i` and the mapper's input :math:`x_i` (``models.content_mapper``):

.. math::
    \min_f \; \frac{1}{|B|} \sum_{i \in B} \lVert f(x_i) - h_i \rVert_2^2, \qquad B \subset W

one mini-batch B of warm items per Adam step. The mapped :math:`f(x_c)` then stands in for
a cold or new item's :math:`h_c`. It learns the centre of the behaviour that content
predicts: it knows nothing of how users rank items, which is what ALDI adds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.content_mapper import ContentMapper, MapperData, sample


class RegressionMapper(ContentMapper):
    method = "regression"

    def batch_loss(self, data: MapperData, generator: torch.Generator) -> Tensor:
        items = sample(data.warm_items, min(self.config.batch_size, data.warm_items.numel()), generator)
        mapped = self({m: f[items] for m, f in data.features.items()})
        return (mapped - data.item_emb[items].float()).pow(2).sum(1).mean()
