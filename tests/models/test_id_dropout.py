"""ID dropout (models.id_dropout): a share of items' ID embeddings zeroed per training batch,
never-trained items read as zero at evaluation, and nothing changes at id_dropout = 0."""

from __future__ import annotations

import pytest
import torch

from models import create_model, make_config
from models.id_dropout import item_ids_masked
from tests.evaluation.test_cold_items import _cold_data

COLD = [12, 13, 14, 15]  # _cold_data's items without train interactions


def test_a_batch_reads_the_kept_rows_only_and_only_they_get_gradients():
    data = _cold_data()
    model = create_model("lightgcn", data, {"embedding_dim": 8, "id_dropout": 0.5})
    model.train()
    keep = model.id_keep(torch.Generator().manual_seed(0))
    assert keep.dtype == torch.bool and not keep[COLD].any()  # never-trained items are never read
    assert 0 < int(keep.sum()) < 12  # about half of the 12 trained items
    weight = model.item_embedding
    with item_ids_masked(model, keep):
        assert torch.equal(model.item_embedding[~keep], torch.zeros(int((~keep).sum()), 8))
        assert torch.equal(model.item_embedding[keep], weight[keep])
        users = torch.arange(data.num_users)
        model.loss(users, torch.randint(0, 16, (30,)), torch.randint(0, 16, (30,))).backward()
    assert model.item_embedding is weight  # the parameter is back, in place
    assert torch.all(weight.grad[~keep] == 0) and weight.grad[keep].abs().sum() > 0


def test_evaluation_scores_never_trained_items_from_content_only():
    data = _cold_data()
    model = create_model("freedom", data, {"embedding_dim": 8, "knn_k": 3, "id_dropout": 0.3})
    model.eval()
    assert torch.equal(model.id_keep(), torch.bincount(data.train_items, minlength=16) > 0)
    with torch.no_grad():
        with item_ids_masked(model, model.id_keep()):
            masked = model.item_embedding.clone()
        plain = model.item_embedding
    assert torch.equal(masked[COLD], torch.zeros(4, 8)) and not torch.equal(plain[COLD], masked[COLD])


def test_off_by_default_and_left_out_of_the_config_dump():
    data = _cold_data()
    model = create_model("bm3", data, {"embedding_dim": 8})
    assert model.id_keep() is None and not hasattr(model, "id_known")
    assert "id_dropout" not in make_config("bm3").model_dump()  # run-cache keys of earlier runs stay
    assert make_config("bm3", {"id_dropout": 0.2}).model_dump()["id_dropout"] == 0.2
    with pytest.raises(ValueError):
        make_config("bm3", {"id_dropout": 1.0})
