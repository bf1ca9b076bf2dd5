"""The three evaluation settings of an item cold-start split, as the cold-start literature
defines them (DropoutNet, Heater, CLCRec, ALDI, GAR):

- **hybrid**: every item is a candidate and every held-out item counts. This is befa's
  main evaluation (``Evaluator`` as ``prepare_data`` builds it); its ``cold`` and ``warm``
  item groups (``pipeline.evaluation.groups``) give the cold and warm Recall@20 *inside*
  the mixed ranking, and ``GroupResult.top_share`` the share of cold items in the users'
  top 20.
- **cold**: the candidates are the cold items only (every warm item scores -inf), and only
  held-out cold items count; users without one are not evaluated. This is the published
  protocol of the cold-start papers: their cold figures never rank a cold item against a
  warm one.
- **warm**: the candidates are the warm items only, and only held-out warm items count.

The cold and warm settings exist only for a split with cold items (kind ``cold-items``).
They are computed from the model's inference embeddings at the best valid epoch, not every
epoch: the selection metric stays the hybrid valid Recall@20.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from models.id_dropout import item_ids_masked
from pipeline.evaluation.evaluator import EvalResult, Evaluator

SETTINGS: tuple[str, ...] = ("cold", "warm")  # the restricted settings; hybrid is the main result


def setting_evaluators(evaluator: Evaluator) -> dict[str, Evaluator]:
    """setting -> its evaluator (built once per evaluator, then reused); empty without cold items."""
    cold = evaluator.item_groups.get("cold")
    if cold is None:
        return {}
    if not evaluator.restricted_views:
        evaluator.restricted_views = {"cold": evaluator.restricted(cold), "warm": evaluator.restricted(~cold)}
    return evaluator.restricted_views


@torch.no_grad()
def evaluate_settings(
    model: torch.nn.Module, evaluator: Evaluator, parts: Sequence[str] = ("valid", "test")
) -> dict[str, dict[str, EvalResult]]:
    """setting -> part -> result, from one pass of the model's inference embeddings."""
    views = setting_evaluators(evaluator)
    if not views:
        return {}
    was_training = model.training
    model.eval()
    try:
        with item_ids_masked(model, model.id_keep()):
            user_emb, item_emb = model.inference_embeddings()
    finally:
        model.train(was_training)
    return {name: view.evaluate(user_emb, item_emb, parts) for name, view in views.items()}


def setting_column(setting: str, metric: str) -> str:
    """The per-user column of one setting's metric (``per_user.parquet``)."""
    return f"{setting}_setting/{metric}"


def merge_per_user(results: dict[str, EvalResult], settings: dict[str, dict[str, EvalResult]]) -> None:
    """Add each setting's per-user values to the hybrid results (NaN for users it skips), so
    one per-user table carries all three settings."""
    for setting, per_part in settings.items():
        for part, res in per_part.items():
            main = results.get(part)
            if main is None:
                continue
            pos = np.searchsorted(main.users, res.users)
            for metric, values in res.per_user.items():
                column = np.full(main.users.size, np.nan)
                column[pos] = values
                main.per_user[setting_column(setting, metric)] = column
