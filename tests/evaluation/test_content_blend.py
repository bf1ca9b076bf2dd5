"""The mapped score blended with the content floor (pipeline.evaluation.content_blend)."""

from __future__ import annotations

import pytest
import torch

from models.itemknn_cbf import cbf_embeddings
from pipeline.evaluation.content_blend import BLEND_WEIGHTS, ContentBlend, blended_from_history
from pipeline.evaluation.evaluator import UserItems
from tests.training.test_mapping import _two_clusters


def _sides(weight: float):
    data = _two_clusters()
    mapped = data.item_emb + 0.3 * torch.randn(data.item_emb.shape, generator=torch.Generator().manual_seed(1))
    blend = ContentBlend(data.user_emb, mapped, data.features, data.train_users, data.train_items, data.warm)
    users, items = blend.sides(weight)
    return data, mapped, users, items


def test_weight_zero_is_the_mapper_alone():
    data, mapped, users, items = _sides(0.0)
    assert users is data.user_emb and items is mapped
    assert BLEND_WEIGHTS[0] == 0.0 and BLEND_WEIGHTS[-1] == 1.0


def test_weight_one_ranks_as_itemknn_cbf():
    data, _, users, items = _sides(1.0)
    profiles, content = cbf_embeddings(data.features, data.train_users, data.train_items, data.user_emb.size(0))
    blended, floor = users @ items.T, profiles @ content.T
    has_history = torch.bincount(data.train_users, minlength=users.size(0)) > 0
    assert bool(has_history.any())
    for u in has_history.nonzero().flatten().tolist():
        assert torch.equal(blended[u].argsort(), floor[u].argsort())


def test_each_part_has_its_share_of_the_spread_over_warm_items():
    data, mapped, users, items = _sides(0.25)
    d = data.user_emb.size(1)
    warm = data.warm
    mapper_part = (users[:, :d] @ items[warm, :d].T).std(1, unbiased=False)
    floor_part = (users[:, d:] @ items[warm, d:].T).std(1, unbiased=False)
    has_history = torch.bincount(data.train_users, minlength=users.size(0)) > 0
    assert torch.allclose(mapper_part, torch.full_like(mapper_part, 0.75), atol=1e-4)
    assert torch.allclose(floor_part[has_history], torch.full_like(floor_part[has_history], 0.25), atol=1e-4)
    assert torch.equal(items[:, :d], mapped.float())


def test_the_history_table_gives_the_same_sides_and_bad_weights_are_refused():
    data, mapped, users, items = _sides(0.5)
    table = UserItems.from_pairs(data.user_emb.size(0), data.train_users, data.train_items)
    again_users, again_items = blended_from_history(data.user_emb, mapped, data.features, table, data.warm, 0.5)
    assert torch.allclose(again_users, users, atol=1e-5) and torch.equal(again_items, items)
    with pytest.raises(ValueError, match="floor's share"):
        ContentBlend(data.user_emb, mapped, data.features, data.train_users, data.train_items, data.warm).sides(1.5)
