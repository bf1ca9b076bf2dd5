r"""The ALDI mapper: the recipe of "Aligning Distillation For Cold-start Item Recommendation"
(Huang et al., SIGIR 2023), in befa's own form. The trained recommender is the teacher;
the mapper :math:`f` (``models.content_mapper``) is the student, which sees only content.

For a mini-batch of train interactions :math:`(u, i)` (i warm) with a random warm item j per
pair, teacher scores :math:`t_{ui} = z_u \cdot h_i` and student scores
:math:`s_{ui} = z_u \cdot f(x_i)`, :math:`\Delta^t = t_{ui} - t_{uj}`,
:math:`\Delta^s = s_{ui} - s_{uj}`:

.. math::
    \mathcal{L} = \underbrace{-\log\sigma(\Delta^s)}_{\text{the student's own BPR}}
      + \lambda_{RD} \, w \, \tfrac12\left[(s_{ui} - t_{ui})^2 + (s_{uj} - t_{uj})^2\right]
      + \lambda_{RA} \, w \, \mathrm{BCE}\!\left(\sigma(\Delta^s), \sigma(\Delta^t)\right)
      + \lambda_{ID} \, \mathrm{InfoNCE}_\tau\!\left(f(x_i), h_i\right)

- **rating distribution** (RD): the student's scores sit where the teacher's do, so a
  mapped item's score is on the same scale as the warm items it will be ranked with;
- **ranking** (RA): the student orders each pair as the teacher does, the soft target
  :math:`\sigma(\Delta^t)` keeping how sure the teacher was;
- **identifiability** (ID): over the batch's positive items, :math:`f(x_i)` must be closer
  (cosine / τ) to its own :math:`h_i` than to the other items', so mapped items do not
  collapse onto a few popular directions;
- the **transfer weight** :math:`w = \tanh(\alpha \log(1 + n_i)) / \tanh(\alpha \log(1 + n_{max}))`
  (:math:`n_i` = train interactions of item i): the teacher's view of a rarely bought item is
  itself uncertain, so it is transferred with less weight (ALDI's "wider knowledge" idea).

Our simplifications, stated: one random warm negative per pair, the MSE form of RD, and the
log-popularity form of w; the paper's exact weighting and negative sampling differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from models.content_mapper import ContentMapper, MapperConfig, MapperData, sample


class ALDIConfig(MapperConfig):
    lambda_rd: float = Field(1.0, ge=0, description="weight of the rating-distribution term")
    lambda_ra: float = Field(1.0, ge=0, description="weight of the ranking term")
    lambda_id: float = Field(1.0, ge=0, description="weight of the identifiability (InfoNCE) term")
    tau: float = Field(0.1, gt=0, description="InfoNCE temperature")
    alpha: float = Field(1.0, gt=0, description="steepness of the popularity transfer weight")


class ALDIMapper(ContentMapper):
    method = "aldi"
    Config = ALDIConfig

    def batch_loss(self, data: MapperData, generator: torch.Generator) -> Tensor:
        cfg: ALDIConfig = self.config  # type: ignore[assignment]
        pick = sample(data.warm_pairs, min(cfg.batch_size, data.warm_pairs.numel()), generator)
        users, pos = data.train_users[pick], data.train_items[pick]
        neg = sample(data.warm_items, pick.numel(), generator)
        items = torch.cat([pos, neg])
        mapped = self({m: f[items] for m, f in data.features.items()})
        z, h = data.user_emb[users].float(), data.item_emb[items].float()
        f_pos, f_neg = mapped[: pos.numel()], mapped[pos.numel() :]
        s_pos, s_neg = (z * f_pos).sum(1), (z * f_neg).sum(1)
        t_pos, t_neg = (z * h[: pos.numel()]).sum(1), (z * h[pos.numel() :]).sum(1)
        counts = data.item_counts
        weight = torch.tanh(cfg.alpha * torch.log1p(counts[pos])) / torch.tanh(cfg.alpha * torch.log1p(counts.max()))
        bpr = -F.logsigmoid(s_pos - s_neg).mean()
        rd = (weight * 0.5 * ((s_pos - t_pos).pow(2) + (s_neg - t_neg).pow(2))).mean()
        ra = (
            weight * F.binary_cross_entropy_with_logits(s_pos - s_neg, torch.sigmoid(t_pos - t_neg), reduction="none")
        ).mean()
        logits = F.normalize(f_pos, dim=1) @ F.normalize(h[: pos.numel()], dim=1).T / cfg.tau
        same = pos.unsqueeze(0) == pos.unsqueeze(1)  # a repeated item is not its own negative
        logits = logits.masked_fill(same & ~torch.eye(pos.numel(), dtype=torch.bool, device=pos.device), float("-inf"))
        ident = F.cross_entropy(logits, torch.arange(pos.numel(), device=pos.device))
        return bpr + cfg.lambda_rd * rd + cfg.lambda_ra * ra + cfg.lambda_id * ident
