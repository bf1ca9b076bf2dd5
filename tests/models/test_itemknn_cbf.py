"""ItemKNN-CBF, the content floor (models.itemknn_cbf): the mean cosine similarity to the
user's history, per modality and combined; nothing trained, new items scored from content."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import CONTENT_MODELS, MODELS, create_model, make_config
from models.itemknn_cbf import ItemKNNCBF
from pipeline.training.record import RunRecord
from pipeline.training.trainer import TrainerConfig, fit
from tests.evaluation.test_cold_items import _cold_data, cold_prepared


def test_the_score_is_the_mean_cosine_to_the_history_per_modality_and_combined():
    data = _cold_data()
    model = create_model("itemknn_cbf", data)
    users, items = model.inference_embeddings()
    scores = users @ items.T
    per_modality = []
    for m in ("image", "text"):
        x = F.normalize(data.features[m] - data.features[m].mean(0), dim=1)
        sims = x @ x.T
        hist = [data.train_items[data.train_users == u] for u in range(data.num_users)]
        per_modality.append(torch.stack([sims[h].mean(0) for h in hist]))
    assert torch.allclose(scores, (per_modality[0] + per_modality[1]) / 2, atol=1e-5)
    image_only = create_model("itemknn_cbf", data, {"modalities": ["image"]})
    u, i = image_only.inference_embeddings()
    assert torch.allclose(u @ i.T, per_modality[0], atol=1e-5)


def test_cold_items_reach_the_users_of_their_content_cluster():
    data = _cold_data()  # users of cluster u % 2 only bought warm items of that cluster
    users, items = create_model("itemknn_cbf", data).inference_embeddings()
    scores = users @ items.T
    for cold in (12, 13, 14, 15):
        same = scores[torch.arange(data.num_users) % 2 == cold % 2, cold]
        other = scores[torch.arange(data.num_users) % 2 != cold % 2, cold]
        assert bool(same.min() > other.max())


def test_it_is_a_floor_not_a_befa_arm():
    assert "itemknn_cbf" not in CONTENT_MODELS and MODELS["itemknn_cbf"].serves_new_items
    with pytest.raises(ValueError, match="no behaviour embedding"):
        create_model("itemknn_cbf", _cold_data(), {"adapter": "befa"})
    with pytest.raises(ValueError, match="audio"):
        create_model("itemknn_cbf", _cold_data(), {"modalities": ["audio"]})


def test_it_runs_once_and_records_the_cold_setting(tmp_path):
    _, prepared = cold_prepared()
    fit(ItemKNNCBF, make_config(ItemKNNCBF), prepared, tmp_path / "run", TrainerConfig(max_epochs=5, quiet=True))
    rec = RunRecord.load(tmp_path / "run")
    assert rec.status == "evaluated_only" and len(rec.epochs) == 1
    cold = rec.settings["cold"]["test"]
    assert cold.users > 0 and 0 <= cold.metrics["recall@20"] <= 1
