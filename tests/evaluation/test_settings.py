"""The three evaluation settings of a cold-items split (pipeline.evaluation.settings): cold
(warm items masked), warm (cold items masked) and hybrid (every item), and the share of
cold items in the hybrid top 20; recorded by a training run."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from models import MODELS, make_config
from pipeline.evaluation.evaluator import Evaluator, UserItems
from pipeline.evaluation.groups import item_groups
from pipeline.evaluation.settings import evaluate_settings, setting_column, setting_evaluators
from pipeline.training.record import PER_USER, RunRecord
from pipeline.training.trainer import TrainerConfig, fit
from tests.evaluation.test_cold_items import cold_prepared

N_ITEMS, COLD = 100, np.arange(60, 100)  # items 0-59 warm, 60-99 cold


def _evaluator(test_items: list[int]) -> Evaluator:
    """Two users, train item 0 each; one held-out test item per user."""
    users = torch.tensor([0, 1])
    train = UserItems.from_pairs(2, users, torch.tensor([0, 0]))
    held = UserItems.from_pairs(2, users, torch.tensor(test_items))
    empty = UserItems.from_pairs(2, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    groups = item_groups(N_ITEMS, np.array([0, 0]), COLD)
    return Evaluator(train, {"valid": empty, "test": held}, N_ITEMS, item_groups=groups)


def _by_index(sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every user scores item i as sign * i."""
    return torch.ones(2, 1), sign * torch.arange(N_ITEMS, dtype=torch.float32).unsqueeze(1)


def test_the_cold_setting_masks_every_warm_item():
    ev = _evaluator([60, 61])  # both held-out items cold, ranked below all 59 unmasked warm items
    user, item = _by_index(-1.0)
    hybrid = ev.evaluate(user, item, ["test"])["test"]
    assert hybrid.metrics["recall@20"] == 0.0
    cold = setting_evaluators(ev)["cold"]
    res = cold.evaluate(user, item, ["test"])["test"]
    assert res.metrics["recall@20"] == 1.0  # the best cold items once warm ones are gone
    # every listed item is cold: no warm item survives the mask whatever its score
    plan = cold._plan(("test",), torch.device("cpu"))
    assert set(plan.excluded.tolist()) == set(range(60))
    assert cold.depth == 40  # the 40 cold items, fewer than K_max = 50: the list is all of them


def test_the_warm_setting_masks_every_cold_item_and_skips_users_without_warm_heldout():
    ev = _evaluator([59, 70])  # user 0: warm held-out item, user 1: cold
    user, item = _by_index(1.0)  # cold items (60-99) fill the hybrid top 40
    hybrid = ev.evaluate(user, item, ["test"])["test"]
    assert hybrid.groups["warm"].metrics["recall@20"] == 0.0
    assert hybrid.groups["cold"].top_share == 1.0  # the hybrid top 20 is all cold
    warm = setting_evaluators(ev)["warm"].evaluate(user, item, ["test"])["test"]
    assert warm.users.tolist() == [0] and warm.metrics["recall@20"] == 1.0 and warm.heldout == 1


def test_no_settings_without_cold_items():
    users = torch.tensor([0])
    ui = UserItems.from_pairs(1, users, torch.tensor([1]))
    ev = Evaluator(ui, {"test": ui}, 5, item_groups=item_groups(5, np.array([1])))
    assert setting_evaluators(ev) == {}


def test_a_cold_split_run_records_the_three_settings(tmp_path):
    split, prepared = cold_prepared()
    cls = MODELS["freedom"]
    result = fit(
        cls,
        make_config(cls, {"embedding_dim": 8, "knn_k": 3}),
        prepared,
        tmp_path / "run",
        TrainerConfig(max_epochs=2, patience=1, quiet=True, num_threads=1),
    )
    rec = RunRecord.load(tmp_path / "run")
    assert set(rec.settings) == {"cold", "warm"} and set(rec.settings["cold"]) == {"valid", "test"}
    direct = evaluate_settings(result.model, prepared.evaluator, ("valid", "test"))
    assert rec.settings["cold"]["test"].metrics == pytest.approx(direct["cold"]["test"].metrics)
    test = split.part(2)
    assert rec.settings["cold"]["test"].heldout == int(test["item_idx"].isin(split.cold_items).sum())
    share = rec.item_groups["test"]["cold"].top_share
    assert share is not None and 0.0 <= share <= 1.0
    table = pq.read_table(tmp_path / "run" / PER_USER).to_pandas()
    column = table.loc[table["part"] == "test", setting_column("cold", "recall@20")]
    # users with a held-out cold item have a value, the others NaN; the mean is the recorded one
    assert column.notna().sum() == rec.settings["cold"]["test"].users
    assert column.mean() == pytest.approx(rec.settings["cold"]["test"].metrics["recall@20"])
