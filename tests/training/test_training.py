"""Trainer, run folder, resume, early stopping and valid-only grid selection.

Models here are tiny ones defined in this file (plain MF/BPR), so the trainer is
tested independently of the real models. Data: a slice of MovieLens-100k (ratings >= 4,
first 150 users), split with ``pipeline.data.splits.split_random``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from models import make_config
from models.base import ModelConfig, Recommender, TrainData
from models.losses import bpr_from_embeddings
from pipeline.data.catalog import build_catalog
from pipeline.data.splits import split_random
from pipeline.features.bundle import FeatureBundle
from pipeline.reporting.console import metrics_table
from pipeline.study.search import grid_search, select_on_valid
from pipeline.training.api import evaluate_run, train_model
from pipeline.training.prepare import prepare_data
from pipeline.training.record import BEST, LAST, PER_USER, RECORD_VERSION, RunRecord
from pipeline.training.trainer import TrainerConfig, TrainingInterrupted, fit


class TinyMF(Recommender):
    """MF + BPR with dropout on users (so resume must restore the global RNG) and an
    optional content term that reads the input features through a frozen buffer."""

    name = "tiny_mf"

    class Config(ModelConfig):
        embedding_dim: int = 16
        lr: float = 0.01
        batch_size: int = 512
        dropout: float = 0.1

    def __init__(self, data: TrainData, config: Config):
        super().__init__(data, config)
        d = config.embedding_dim
        self.user = nn.Embedding(data.num_users, d)
        self.item = nn.Embedding(data.num_items, d)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        self.drop = nn.Dropout(config.dropout)
        self.modalities = data.modalities
        for m in self.modalities:
            self.register_buffer(f"feat_{m}", data.features[m])  # aliases the input tensor
        self.proj = nn.ModuleDict({m: nn.Linear(data.features[m].size(1), d) for m in self.modalities})

    def item_table(self):
        items = self.item.weight
        for m in self.modalities:
            items = items + 0.1 * self.proj[m](getattr(self, f"feat_{m}"))
        return items

    def loss(self, users, pos, neg):
        assert neg is not None
        items = self.item_table()
        u = self.drop(self.user(users))
        return bpr_from_embeddings(u, items[pos], items[neg]) + 1e-4 * u.pow(2).sum() / users.numel()

    def inference_embeddings(self):
        return self.user.weight, self.item_table()


class PairModel(TinyMF):
    """BM3-like: no negatives; the trainer must pass neg=None."""

    name = "pair_model"

    class Config(TinyMF.Config):
        uses_negatives: bool = False

    def loss(self, users, pos, neg):
        assert neg is None, "trainer passed negatives to a uses_negatives=False model"
        u, i = self.user(users), self.item_table()[pos]
        return (1 - torch.nn.functional.cosine_similarity(u, i).mean()) + 1e-3 * u.pow(2).mean()


class Frozen(TinyMF):
    """Parameters that never change: valid Recall@20 is constant, so it never strictly improves."""

    name = "frozen"

    def loss(self, users, pos, neg):
        return (self.user.weight * 0).sum() + (self.item.weight * 0).sum()


class Diverging(TinyMF):
    name = "diverging"

    def loss(self, users, pos, neg):
        return super().loss(users, pos, neg) * float("nan")


class Popularity(Recommender):
    """trainable = False: the trainer must only evaluate it."""

    name = "popularity"
    trainable = False

    def __init__(self, data, config):
        super().__init__(data, config)
        self.register_buffer("pop", torch.bincount(data.train_items, minlength=data.num_items).float())
        self.dummy = nn.Parameter(torch.zeros(1))  # present but must not be optimised

    def loss(self, users, pos, neg):  # pragma: no cover - must never be called
        raise AssertionError("trainer optimised a trainable=False model")

    def inference_embeddings(self):
        return torch.ones(self.num_users, 1), self.pop[:, None]


@pytest.fixture(scope="module")
def ml_slice(datasets_root, tmp_path_factory):
    raw = pd.read_csv(
        datasets_root / "movielens-100k-posters" / "ml-100k" / "u.data",
        sep="\t",
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    raw = raw[(raw["rating"] >= 4) & (raw["user_id"] <= 150)]
    ids = sorted(raw["item_id"].unique())
    items = pd.DataFrame({"item_id": [str(i) for i in ids], "title": "", "text": "", "image": None, "image_hash": None})
    raw = raw.assign(rating=1.0)
    catalog = build_catalog("ml-slice", items, raw)
    folder = tmp_path_factory.mktemp("catalog")
    catalog.save(folder)
    split = split_random(catalog, seed=2024)
    split_path = split.save(folder / "splits")
    g = torch.Generator().manual_seed(0)
    feats = {"text": torch.randn(catalog.num_items, 8, generator=g)}
    masks = {"text": torch.ones(catalog.num_items, dtype=torch.bool)}
    snaps = {"text": "snap-test-1"}
    return {
        "catalog": catalog,
        "catalog_dir": folder,
        "split": split,
        "split_path": split_path,
        "features": FeatureBundle(feats, masks, snaps),
    }


def _prepared(ml, with_features=True):
    return prepare_data(
        ml["split"],
        ml["catalog"].num_items,
        ml["features"] if with_features else None,
        num_users=ml["catalog"].num_users,
    )


def _fit(ml, tmp, model=TinyMF, overrides=None, **trainer):
    trainer = TrainerConfig(**{"max_epochs": 4, "patience": 10, "seed": 7, "quiet": True, "num_threads": 1, **trainer})
    return fit(model, make_config(model, overrides), _prepared(ml), tmp, trainer)


def test_trained_mf_beats_random_and_writes_run_folder(ml_slice, tmp_path):
    res = _fit(ml_slice, tmp_path / "run", max_epochs=5)
    rec = RunRecord.load(tmp_path / "run")
    num_items = ml_slice["catalog"].num_items
    # random ranking: expected Recall@20 ~ 20 / #items (~2%); trained MF must be well above
    assert rec.best_valid["recall@20"] > 3 * 20 / num_items
    assert rec.status == "max_epochs" and len(rec.epochs) == 5
    assert rec.test and set(rec.test) >= {"recall@20", "ndcg@20", "precision@5", "map@50"}
    assert rec.split_id == ml_slice["split"].id and rec.feature_snapshots == {"text": "snap-test-1"}
    assert rec.code_version["kind"] in {"git", "package", "unknown"}
    assert rec.memory["peak_rss_mb"] > 0 and rec.parameters["params_trainable"] > 0
    assert all(e.train_s > 0 and e.eval_s > 0 for e in rec.epochs)
    # best checkpoint: safetensors, without the aliased input feature table
    tensors = load_file(str(tmp_path / "run" / BEST))
    assert "user.weight" in tensors and "feat_text" not in tensors
    assert (tmp_path / "run" / LAST).exists()
    per_user = pd.read_parquet(tmp_path / "run" / PER_USER)
    valid_pu = per_user[per_user["part"] == "valid"]
    assert valid_pu["recall@20"].mean() == pytest.approx(rec.best_valid["recall@20"])
    assert len(per_user[per_user["part"] == "test"]) == len(res.test.users)
    # returned model holds the best weights
    assert torch.equal(res.model.user.weight.detach(), tensors["user.weight"])
    # refuses to overwrite an existing run silently
    with pytest.raises(FileExistsError):
        _fit(ml_slice, tmp_path / "run")


def test_the_thread_count_is_restored_after_a_run(ml_slice, tmp_path):
    before = torch.get_num_threads()
    seen = []
    trainer = TrainerConfig(max_epochs=1, patience=10, seed=7, quiet=True, num_threads=1 if before > 1 else 2)
    fit(
        TinyMF,
        make_config(TinyMF),
        _prepared(ml_slice),
        tmp_path / "run",
        trainer,
        on_epoch_end=lambda e, r: seen.append(torch.get_num_threads()),
    )
    assert seen == [trainer.num_threads]  # the run used what it was told
    assert torch.get_num_threads() == before  # and gave the process its own setting back


def test_the_run_record_keeps_where_its_features_came_from(ml_slice, tmp_path):
    bundle = FeatureBundle(
        ml_slice["features"].features,
        ml_slice["features"].masks,
        ml_slice["features"].snapshots,
        {"text": "fp-text-1"},
        {"text": False},
    )
    trainer = TrainerConfig(max_epochs=1, patience=10, seed=7, quiet=True, num_threads=1)
    prepared = prepare_data(
        ml_slice["split"], ml_slice["catalog"].num_items, bundle, num_users=ml_slice["catalog"].num_users
    )
    fit(TinyMF, make_config(TinyMF), prepared, tmp_path / "run", trainer)
    rec = RunRecord.load(tmp_path / "run")
    assert rec.record_version == RECORD_VERSION == 3
    assert rec.feature_sets == {"text": {"snapshot": "snap-test-1", "fingerprint": "fp-text-1", "random_init": False}}


def test_same_seed_same_metrics_different_seed_differs(ml_slice, tmp_path):
    a = RunRecord.load(_fit(ml_slice, tmp_path / "a", max_epochs=3).run_dir)
    b = RunRecord.load(_fit(ml_slice, tmp_path / "b", max_epochs=3).run_dir)
    c = RunRecord.load(_fit(ml_slice, tmp_path / "c", max_epochs=3, seed=8).run_dir)
    assert [e.loss for e in a.epochs] == [e.loss for e in b.epochs]
    assert [e.valid for e in a.epochs] == [e.valid for e in b.epochs]
    assert a.test == b.test
    assert [e.loss for e in a.epochs] != [e.loss for e in c.epochs]


def test_resume_after_kill_matches_uninterrupted(ml_slice, tmp_path):
    full = RunRecord.load(_fit(ml_slice, tmp_path / "full", max_epochs=4).run_dir)

    def kill_after_epoch_2(epoch, record):
        if epoch == 2:
            raise TrainingInterrupted("simulated kill")

    trainer = TrainerConfig(max_epochs=4, patience=10, seed=7, quiet=True, num_threads=1)
    with pytest.raises(TrainingInterrupted):
        fit(
            TinyMF,
            make_config(TinyMF),
            _prepared(ml_slice),
            tmp_path / "part",
            trainer,
            on_epoch_end=kill_after_epoch_2,
        )
    partial = RunRecord.load(tmp_path / "part")
    assert len(partial.epochs) == 3 and partial.status == "running"
    resumed = fit(TinyMF, make_config(TinyMF), _prepared(ml_slice), tmp_path / "part", trainer, resume=True)
    rec = resumed.record
    assert len(rec.resumed_at) == 1
    assert [e.loss for e in rec.epochs] == [e.loss for e in full.epochs]
    assert [e.valid for e in rec.epochs] == [e.valid for e in full.epochs]
    assert rec.test == full.test and rec.best_epoch == full.best_epoch
    a = load_file(str(tmp_path / "full" / BEST))
    b = load_file(str(tmp_path / "part" / BEST))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_needs_strict_improvement(ml_slice, tmp_path):
    res = _fit(ml_slice, tmp_path / "run", model=Frozen, max_epochs=50, patience=3)
    rec = res.record
    # epoch 0 sets the best; epochs 1, 2, 3 tie it (not an improvement) -> stop after epoch 3
    assert rec.status == "early_stopped"
    assert [e.epoch for e in rec.epochs] == [0, 1, 2, 3]
    assert rec.best_epoch == 0
    assert len({e.valid["recall@20"] for e in rec.epochs}) == 1


def test_lr_decay_schedule(ml_slice, tmp_path):
    res = _fit(ml_slice, tmp_path / "run", overrides={"lr_decay": (0.5, 2)}, max_epochs=3)
    lrs = [e.lr for e in res.record.epochs]
    assert lrs == pytest.approx([0.01 * 0.5 ** (e / 2) for e in range(3)])


def test_non_finite_loss_fails_the_run_with_a_record(ml_slice, tmp_path):
    with pytest.raises(FloatingPointError, match="diverging: loss became nan in epoch 0"):
        _fit(ml_slice, tmp_path / "run", model=Diverging)
    rec = RunRecord.load(tmp_path / "run")
    assert rec.status == "failed" and "FloatingPointError" in rec.error


def test_pairs_without_negatives(ml_slice, tmp_path):
    res = _fit(ml_slice, tmp_path / "run", model=PairModel, max_epochs=2)
    assert len(res.record.epochs) == 2 and math.isfinite(res.record.epochs[-1].loss)


def test_untrainable_model_is_evaluated_once(ml_slice, tmp_path):
    res = _fit(ml_slice, tmp_path / "run", model=Popularity)
    rec = res.record
    assert rec.status == "evaluated_only" and len(rec.epochs) == 1 and rec.epochs[0].loss is None
    assert res.model.dummy.item() == 0.0
    assert rec.test["recall@20"] > 0  # popularity is a real baseline on MovieLens


def test_train_model_api_and_evaluate_run(ml_slice, tmp_path):
    ml = ml_slice
    res = train_model(
        ml["catalog_dir"],
        ml["split_path"],
        ml["features"],
        TinyMF,
        overrides={"embedding_dim": 8},
        run_dir=tmp_path / "run",
        seed=3,
        device="cpu",
        max_epochs=2,
        quiet=True,
        num_threads=1,
    )
    assert res.record.config["embedding_dim"] == 8
    again = evaluate_run(tmp_path / "run", features=ml["features"], model=TinyMF)
    assert again["valid"] == pytest.approx(res.record.best_valid)
    assert again["test"] == pytest.approx(res.record.test)
    feats, masks = ml["features"].features, ml["features"].masks
    with pytest.raises(ValueError, match="snapshot"):
        evaluate_run(tmp_path / "run", features=FeatureBundle(feats, masks, {"text": "another-snapshot"}), model=TinyMF)
    with pytest.raises(ValueError, match="pass them"):
        evaluate_run(tmp_path / "run", model=TinyMF)
    table = metrics_table({"tiny": res.record.test})
    assert table.row_count == 1


def test_bad_inputs_name_the_problem(ml_slice):
    frame = ml_slice["split"].frame.copy()
    frame.loc[5, "item_idx"] = 10**6
    with pytest.raises(ValueError, match="row 6: item_idx"):
        prepare_data(frame, ml_slice["catalog"].num_items)
    with pytest.raises(ValueError, match="aligned"):
        prepare_data(
            ml_slice["split"], ml_slice["catalog"].num_items, FeatureBundle({"image": torch.zeros(3, 4)}, {}, {})
        )
    with pytest.raises(KeyError, match="unknown model"):
        train_model(ml_slice["catalog_dir"], ml_slice["split_path"], None, "no-such-model", quiet=True)


# -- grid: selection sees VALID only --------------------------------------------------
class _FakeRecord:
    def __init__(self, valid, test, epoch=0):
        self.best_valid, self.test, self.best_epoch = valid, test, epoch


class _FakeResult:
    def __init__(self, valid, test):
        self.record = _FakeRecord(valid, test)


def test_grid_selects_on_valid_even_when_test_disagrees(tmp_path):
    # point lr=0.1 is best on valid, lr=0.01 is best on test: the valid winner must win,
    # and the reported test metrics are the valid winner's.
    table = {
        0.1: ({"recall@20": 0.30}, {"recall@20": 0.10}),
        0.01: ({"recall@20": 0.20}, {"recall@20": 0.90}),
        0.001: ({"recall@20": 0.25}, {"recall@20": 0.50}),
    }
    seen = []

    def train_fn(overrides, run_dir):
        seen.append(overrides)
        return _FakeResult(*table[overrides["lr"]])

    res = grid_search(train_fn, {"lr": [0.1, 0.01, 0.001]}, tmp_path, base_overrides={"adapter": "befa"})
    assert res.best.overrides == {"adapter": "befa", "lr": 0.1}
    assert res.test == {"recall@20": 0.10}
    assert [s["lr"] for s in seen] == [0.1, 0.01, 0.001]
    saved = json.loads((tmp_path / "grid.json").read_text())
    assert saved["winner_test"] == {"recall@20": 0.10}
    # losers' test metrics are not in the grid record at all
    assert "0.9" not in json.dumps(saved["trials"]) and "0.5" not in json.dumps(saved["trials"])
    # swapping the test metrics cannot change the winner
    table = {k: (v, {"recall@20": 1.0 - v["recall@20"]}) for k, (v, _) in table.items()}
    assert grid_search(train_fn, {"lr": [0.1, 0.01, 0.001]}, tmp_path / "again").winner == 0
    assert select_on_valid([{"recall@20": 0.2}, {"recall@20": 0.2}, {"recall@20": float("nan")}]) == 0


def test_grid_with_real_trainer(ml_slice, tmp_path):
    ml = ml_slice
    res = grid_search(
        train_model,
        {"embedding_dim": [4, 16]},
        tmp_path,
        catalog=ml["catalog"],
        split=ml["split"],
        features=ml["features"],
        model=TinyMF,
        max_epochs=2,
        quiet=True,
        num_threads=1,
        seed=1,
    )
    valid = [t.valid["recall@20"] for t in res.trials]
    assert res.winner == int(np.argmax(valid))
    assert res.test == RunRecord.load(res.best.run_dir).test


def test_prepare_data_drops_heldout_of_users_without_train_and_dedupes():
    frame = pd.DataFrame(
        {
            "user_idx": [0, 0, 0, 1, 1, 2, 2],
            "item_idx": [0, 0, 1, 2, 3, 1, 2],
            "label": [0, 0, 1, 0, 2, 1, 2],  # user 2 has no train row
        }
    )
    prep = prepare_data(frame, num_items=5)
    assert prep.counts == {"users": 3, "items": 5, "train": 2, "valid": 1, "test": 1}
    assert any("duplicate" in n for n in prep.notes) and any("no train row" in n for n in prep.notes)
    assert prep.train.train_users.tolist() == [0, 1] and prep.train.train_items.tolist() == [0, 2]
    with pytest.raises(ValueError, match="label"):
        prepare_data(frame.assign(label=[0, 0, 1, 0, 3, 1, 2]), num_items=5)
