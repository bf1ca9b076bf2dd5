"""Item cold start: the cold-items split, metrics per item group (warm / cold / long tail),
cold items scored by the content models, and the regulariser forms (``reg_form``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from models import MODELS, make_config
from models.base import TrainData
from models.losses import embedding_reg
from pipeline.cli.main import app
from pipeline.data.catalog import build_catalog
from pipeline.data.splits import TRAIN, Split, ensure_split, make_split, split_cold_items
from pipeline.evaluation.evaluator import Evaluator, UserItems
from pipeline.evaluation.groups import item_groups
from pipeline.features.bundle import FeatureBundle
from pipeline.training.prepare import prepare_data
from pipeline.training.record import RunRecord
from pipeline.training.trainer import TrainerConfig, fit


def _catalog(n_users=40, n_items=30, per_user=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = [
        (f"u{u:03d}", str(i), 5.0, 1000 + t)
        for u in range(n_users)
        for t, i in enumerate(rng.choice(n_items, size=per_user, replace=False))
    ]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame(
        {"item_id": [str(i) for i in range(n_items)], "title": "t", "text": "x", "image": None, "image_hash": None}
    )
    return build_catalog("synthetic", items, inter)


# -- the split ------------------------------------------------------------------------------
def test_cold_split_holds_cold_items_out_of_train_and_is_seeded(tmp_path):
    cat = _catalog()
    split = split_cold_items(cat, 0.2, seed=5)
    cold = split.cold_items
    seen = np.unique(cat.interactions["item_idx"])
    assert cold is not None and cold.size == round(0.2 * seen.size) and set(cold) <= set(seen)
    f = split.frame
    assert not f[(f["label"] == TRAIN) & f["item_idx"].isin(cold)].size  # no cold item has a train row
    held = f[f["item_idx"].isin(cold)]
    assert len(held) == int(cat.interactions["item_idx"].isin(cold).sum())  # every cold interaction kept, in valid/test
    assert set(held["label"]) == {1, 2}
    warm = f[~f["item_idx"].isin(cold)]
    assert set(warm["label"]) == {0, 1, 2}  # warm items are split per user as usual
    assert split.kind == "cold-items" and split.meta["cold_fraction"] == 0.2
    # same seed, same split; another seed, other cold items
    again = split_cold_items(cat, 0.2, seed=5)
    assert again.id == split.id and np.array_equal(again.cold_items, cold)
    assert not np.array_equal(split_cold_items(cat, 0.2, seed=6).cold_items, cold)
    # the kind and the cold list travel with the stored split
    loaded = Split.load(split.save(tmp_path))
    assert loaded.id == split.id and loaded.kind == "cold-items" and np.array_equal(loaded.cold_items, cold)
    assert split.name == "cold-items-f20-s5" and make_split(cat, "cold-items", seed=5, cold_fraction=0.2).id == split.id
    made = Split.load(ensure_split(cat, tmp_path / "made", "cold-items-f20-s5"))
    assert made.id == split.id
    assert make_split(cat, "random", seed=5).cold_items is None


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_cold_fraction_must_be_between_0_and_1(bad):
    with pytest.raises(ValueError, match="--cold-fraction"):
        split_cold_items(_catalog(), bad)


def test_split_cli_names_the_cold_fraction_flag(tmp_path):
    runner = CliRunner()
    env = {"BEFA_HOME": str(tmp_path)}
    result = runner.invoke(app, ["split", "no-such-catalog", "--kind", "cold-items", "--cold-fraction", "1.5"], env=env)
    assert result.exit_code == 2 and "--cold-fraction" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["split", "no-such-catalog", "--cold-fraction", "0.2"], env=env)
    assert result.exit_code == 2 and "--kind cold-items" in result.output


# -- metrics per item group -------------------------------------------------------------------
def test_item_groups_warm_cold_and_long_tail():
    groups = item_groups(10, np.array([0, 0, 0, 1, 1, 2, 3, 3, 4]), cold_items=[8, 9])
    assert groups["cold"].nonzero().flatten().tolist() == [8, 9]
    assert groups["warm"].nonzero().flatten().tolist() == list(range(8))
    # head = the 2 most popular of 10 items (0: 3 interactions, then 1 and 3 tie at 2: lower index first)
    assert (~groups["long_tail"]).nonzero().flatten().tolist() == [0, 1]
    assert "cold" not in item_groups(10, np.array([0, 1]))


def test_group_metrics_match_a_hand_computed_case():
    """3 users, 6 items, train: u0 {0}, u1 {1}, u2 {0, 1}; test: u0 {2, 3}, u1 {4}, u2 {5};
    cold items {2, 5}; long tail = all but the 2 most popular (items 0, 1) = {2, 3, 4, 5}.
    Scores (train items masked) rank u0: 3, 2, 5, 4, 1; u1: 5, 0, 4, 3, 2; u2: 3, 5, 4, 2.
    At K = 2:
      u0 top-2 (3, 2): warm {3} hit at rank 1 -> R 1, N 1; cold {2} hit at rank 2 ->
         R 1, N 1/log2(3); tail {2, 3} both hit -> R 1, N 1;
      u1 top-2 (5, 0): warm {4} missed -> 0, 0; no cold item (skipped); tail {4} -> 0, 0;
      u2 top-2 (3, 5): no warm item (skipped); cold {5} at rank 2 -> 1, 1/log2(3); tail the same.
    """
    scores = torch.tensor([[9.0, 1, 5, 6, 2, 3], [4.0, 9, 1, 2, 3, 5], [8.0, 8, 1, 4, 2, 3]])

    def ui(pairs):
        u, i = zip(*pairs)
        return UserItems.from_pairs(3, torch.tensor(u), torch.tensor(i))

    train = [(0, 0), (1, 1), (2, 0), (2, 1)]
    groups = item_groups(6, np.array([i for _, i in train]), cold_items=[2, 5])
    ev = Evaluator(
        ui(train),
        {"test": ui([(0, 2), (0, 3), (1, 4), (2, 5)])},
        6,
        ks=(1, 2, 3),
        per_user_metrics_kept=("recall@2", "ndcg@2"),
        item_groups=groups,
    )
    res = ev.evaluate(scores, torch.eye(6), ("test",))["test"]
    g = 1 / math.log2(3)
    want = {
        "warm": ({"recall@2": 0.5, "ndcg@2": 0.5}, 2, 2),
        "cold": ({"recall@2": 1.0, "ndcg@2": g}, 2, 2),
        "long_tail": ({"recall@2": 2 / 3, "ndcg@2": (1 + 0 + g) / 3}, 3, 4),
    }
    assert set(res.groups) == set(want)
    for name, (metrics, users, heldout) in want.items():
        got = res.groups[name]
        assert got.metrics == pytest.approx(metrics) and (got.users, got.heldout) == (users, heldout), name
    # overall metrics are unchanged by the groups: u0 1, u1 0, u2 1 at K = 2
    assert res.metrics["recall@2"] == pytest.approx(2 / 3)
    # per-user values: NaN where the user has no held-out item of the group
    np.testing.assert_allclose(res.per_user["cold/ndcg@2"], [g, np.nan, g])
    np.testing.assert_allclose(res.per_user["warm/recall@2"], [1.0, 0.0, np.nan])


# -- cold items in the models -------------------------------------------------------------------
def _cold_data(seed=0, users=30, items=16, cold=(12, 13, 14, 15), per_user=5):
    """Each user interacts with items of one of two clusters; the cold items belong to the clusters
    by their content features only."""
    g = torch.Generator().manual_seed(seed)
    warm = [i for i in range(items) if i not in cold]
    tu, ti = [], []
    for u in range(users):
        pool = [i for i in warm if i % 2 == u % 2]
        pick = torch.randperm(len(pool), generator=g)[:per_user]
        tu += [u] * len(pick)
        ti += [pool[j] for j in pick]
    centre = torch.randn(2, 12, generator=g)
    feats = {m: centre[torch.arange(items) % 2] + 0.1 * torch.randn(items, 12, generator=g) for m in ("image", "text")}
    return TrainData(
        num_users=users,
        num_items=items,
        train_users=torch.tensor(tu),
        train_items=torch.tensor(ti),
        features=feats,
        feature_masks={m: torch.ones(items, dtype=torch.bool) for m in feats},
    )


@pytest.mark.parametrize("name", ["bm3", "lattice", "freedom", "mgcn"])
@pytest.mark.parametrize("adapter", ["none", "befa"])
def test_every_cold_item_is_scored_by_the_content_models(name, adapter):
    torch.manual_seed(0)
    data = _cold_data()
    model = MODELS[name](
        data,
        make_config(
            MODELS[name],
            {"embedding_dim": 8, "adapter": adapter, "knn_k": 3}
            if name != "bm3"
            else {"embedding_dim": 8, "adapter": adapter},
        ),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    neg = torch.randint(0, data.num_items, data.train_items.shape, generator=torch.Generator().manual_seed(1))
    model.train()
    for epoch in range(3):
        model.pre_epoch(epoch)
        loss = model.loss(data.train_users, data.train_items, None if name == "bm3" else neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        u, i = model.inference_embeddings()
    scores = u @ i.T
    cold = torch.tensor([12, 13, 14, 15])
    assert torch.isfinite(scores[:, cold]).all()
    # no collapse: cold items get distinct scores
    assert scores[:, cold].std() > 0
    if name == "bm3":
        # BM3 uses content in training only (its docstring): a cold item is scored from its
        # never-trained, norm-shrunk E_i, so it is ranked but not lifted into a top-K here
        return
    # the graph models reach a cold item through its content neighbours: each one is in some user's top-8 of 16
    top = scores.topk(8, dim=1).indices
    assert all(bool((top == c).any()) for c in cold.tolist()), name


def cold_prepared() -> tuple[Split, object]:
    """A small catalog's cold-items split (25% of items, seed 3) with random text features, prepared."""
    cat = _catalog(n_users=30, n_items=20, per_user=6)
    split = split_cold_items(cat, 0.25, seed=3)
    rng = np.random.default_rng(0)
    feats = {"text": torch.from_numpy(rng.standard_normal((cat.num_items, 8)).astype(np.float32))}
    bundle = FeatureBundle(feats, {"text": torch.ones(cat.num_items, dtype=torch.bool)}, {"text": "snap"})
    return split, prepare_data(split, cat.num_items, bundle, num_users=cat.num_users)


def test_a_cold_split_run_records_its_item_groups(tmp_path):
    split, prepared = cold_prepared()
    cls = MODELS["freedom"]
    res = fit(
        cls,
        make_config(cls, {"embedding_dim": 8, "knn_k": 3}),
        prepared,
        tmp_path / "run",
        TrainerConfig(max_epochs=2, patience=1, quiet=True, num_threads=1),
    )
    rec = RunRecord.load(tmp_path / "run")
    assert set(rec.item_groups["test"]) == {"warm", "cold", "long_tail"}
    cold = rec.item_groups["test"]["cold"]
    assert cold.users > 0 and 0 <= cold.metrics["recall@20"] <= 1
    assert cold.metrics == pytest.approx(res.test.groups["cold"].metrics)
    test = split.part(2)
    assert cold.heldout == int(test[test["item_idx"].isin(split.cold_items)].shape[0])


# -- regulariser forms ----------------------------------------------------------------------------
def test_embedding_reg_forms_by_hand():
    a = torch.tensor([[3.0, 4.0]])  # ||a|| = 5
    b = torch.tensor([[1.0, 2.0], [2.0, 4.0]])  # ||b||_F = 5
    assert float(embedding_reg(a, b, form="norm")) == pytest.approx((5 + 5) / 2)  # / rows of the last tensor
    assert float(embedding_reg(a, b, form="squared")) == pytest.approx(0.5 * (25 + 25) / 2)
    assert float(embedding_reg(a, b, form="squared", batch_size=5)) == pytest.approx(0.5 * 50 / 5)
    with pytest.raises(ValueError, match="reg_form"):
        embedding_reg(a, form="cubed")  # type: ignore[arg-type]


def test_lightgcn_reg_form_changes_only_the_regulariser():
    data = _cold_data()
    users, pos, neg = data.train_users[:6], data.train_items[:6], data.train_items[6:12]
    losses = {}
    for form in ("squared", "norm"):
        torch.manual_seed(0)
        model = MODELS["lightgcn"](
            data, make_config(MODELS["lightgcn"], {"embedding_dim": 4, "reg": 0.5, "reg_form": form})
        )
        losses[form] = float(model.loss(users, pos, neg).detach())
        e = [model.user_embedding[users], model.item_embedding[pos], model.item_embedding[neg]]
    sq = 0.5 * sum(float(t.pow(2).sum()) for t in e) / 6
    nm = sum(float(t.norm()) for t in e) / 6
    assert losses["norm"] - losses["squared"] == pytest.approx(0.5 * (nm - sq), rel=1e-5)
    # the forms' defaults: the reference's where befa had it already; LightGCN keeps befa's
    defaults = {name: MODELS[name].Config().reg_form for name in ("lightgcn", "lattice", "mgcn", "bm3")}
    assert defaults == {"lightgcn": "squared", "lattice": "squared", "mgcn": "squared", "bm3": "norm"}
    assert "reg_form" not in MODELS["freedom"].Config.model_fields  # FREEDOM has no L2 term
    with pytest.raises(ValueError):
        make_config(MODELS["lightgcn"], {"reg_form": "cubed"})
