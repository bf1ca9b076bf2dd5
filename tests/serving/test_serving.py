"""Recommendations out (``pipeline.serving``, ``befa recommend`` / ``befa similar``).

A synthetic catalog with two content clusters: items 0-14 (cluster A) and 15-29 (B),
text features = the cluster's direction plus a little noise, written straight into a
feature store; users 0-9 interact only with A items and users 10-19 only with B items.
So a hand-checkable truth exists: an A user should be recommended A items, and a new
A item (added after training) should rank higher for A users than for B users.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.data.catalog import Catalog, build_catalog
from pipeline.data.splits import Split, split_random
from pipeline.evaluation.evaluator import evaluate_model, topk_items
from pipeline.features.load import load_features
from pipeline.reporting.showcase import recommendations_section
from pipeline.serving import ranked_files
from pipeline.serving import ranked_lists as recommend_module
from pipeline.serving.ranked_files import PairMismatch, read_manifest, read_ranked
from pipeline.serving.ranked_lists import RecommendRequest, recommend, write_recommendations
from pipeline.serving.servable import ServingError, load_servable
from pipeline.serving.similar import similar_items
from pipeline.training.api import load_trained, train_model
from storage.atomic import TMP_PREFIX
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey

FP = "test-clusters-v1"
DIM = 8


def _direction(cluster: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[cluster] = 1.0
    return v


def _items(ids: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [f"i{i:02d}" for i in ids],
            "title": [f"item {i}" for i in ids],
            "text": [f"text of item {i}" for i in ids],
        }
    )


def _features(ids: list[int], rng: np.random.Generator) -> np.ndarray:
    return np.stack(
        [
            _direction(0 if i < 15 or 30 <= i < 34 else 1) + 0.05 * rng.standard_normal(DIM).astype(np.float32)
            for i in ids
        ]
    )


def _save_catalog(folder: Path, item_ids: list[int], inter: pd.DataFrame) -> Catalog:
    items = _items(item_ids)
    kept = inter[inter["item_id"].isin(set(items["item_id"]))]
    cat = build_catalog("clusters", items, kept)
    cat.save(folder)
    return cat


def _store_features(store: FeatureStore, cat: Catalog, ids: list[int], seed: int = 0) -> None:
    store.register_encoder(FP, {"spec": "test-clusters", "random_init": False, "dim": DIM})
    keys = cat.content_keys("text").set_index("item_id").loc[[f"i{i:02d}" for i in ids]]
    store.upsert(
        FeatureSetKey("clusters", FP, "text"),
        list(keys.index),
        list(keys["content_hash"]),
        _features(ids, np.random.default_rng(seed)),
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    rng = np.random.default_rng(7)
    rows = []
    for u in range(20):
        pool = range(0, 15) if u < 10 else range(15, 30)
        for i in rng.choice(list(pool), size=8, replace=False):
            rows.append((f"u{u:02d}", f"i{i:02d}", 5.0, 1000 + len(rows)))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    folder = root / "catalog"
    cat = _save_catalog(folder, list(range(30)), inter)
    store = FeatureStore(root / "store")
    _store_features(store, cat, list(range(30)))
    split_path = split_random(cat, seed=1).save(folder / "splits")
    features = load_features(cat, store, {"text": FP})
    runs = {}
    for model, overrides in {
        "lightgcn": {"embedding_dim": 16},
        "freedom": {"embedding_dim": 16, "knn_k": 5},
        "mostpop": {},
    }.items():
        result = train_model(
            str(folder),
            str(split_path),
            features if model == "freedom" else None,
            model,
            overrides=overrides,
            run_dir=root / "runs" / model,
            seed=3,
            max_epochs=15,
            patience=15,
            quiet=True,
        )
        runs[model] = result.run_dir
    return {"root": root, "folder": folder, "store": store, "inter": inter, "split": split_path, "runs": runs}


def test_top_k_equals_the_evaluators_top_k(world):
    """Same users, same exclusion (the train split): the lists are the evaluator's, so the
    per-user test Recall@20 computed from them equals the evaluator's exactly."""
    served = load_servable(world["runs"]["lightgcn"], world["store"])
    trained = load_trained(world["runs"]["lightgcn"])
    result = evaluate_model(trained.model, trained.prepared.evaluator, ["test"])["test"]
    ids = [served.user_ids[u] for u in result.users]
    recs = recommend(served, RecommendRequest(k=20, users=ids, seen="train"))
    with torch.no_grad():
        u, i = trained.model.inference_embeddings()
    scores = u[torch.as_tensor(result.users)] @ i.T
    train = Split.load(world["split"]).part(0)
    row_of = {int(x): n for n, x in enumerate(result.users)}
    for uu, ii in zip(train["user_idx"], train["item_idx"]):
        if int(uu) in row_of:
            scores[row_of[int(uu)], int(ii)] = float("-inf")
    expected = topk_items(scores, 20)
    test = Split.load(world["split"]).part(2)
    for n, user in enumerate(result.users):
        got = recs[recs["user_id"] == served.user_ids[user]].sort_values("rank")
        want = [served.item_ids[j] for j in expected[n].tolist() if torch.isfinite(scores[n, j])]
        assert got["item_id"].tolist() == want
        held = set(served.item_ids[test[test["user_idx"] == user]["item_idx"].to_numpy()])
        recall = len(held & set(got["item_id"])) / min(20, len(held))
        assert recall == pytest.approx(float(result.per_user["recall@20"][n]), abs=1e-7)


def test_seen_items_are_excluded_unless_asked_for(world):
    served = load_servable(world["runs"]["lightgcn"], world["store"])
    recs = recommend(served, RecommendRequest(k=30, users=["u00", "u15"]))
    seen = world["inter"].groupby("user_id")["item_id"].apply(set)
    for user in ("u00", "u15"):
        mine = recs[recs["user_id"] == user]
        assert not set(mine["item_id"]) & seen[user]
        assert len(mine) == 30 - len(seen[user])  # fewer than K allowed: every allowed item, no -inf rows
        assert mine["rank"].tolist() == list(range(1, len(mine) + 1))
        assert mine["score"].is_monotonic_decreasing
    kept = recommend(served, RecommendRequest(k=30, users=["u00"], seen="none"))
    assert seen["u00"] <= set(kept["item_id"]) and len(kept) == 30


def test_ties_come_in_the_evaluators_order(world):
    """MostPop scores by popularity, so many items tie: lower item row first, as the evaluator."""
    served = load_servable(world["runs"]["mostpop"], world["store"])
    recs = recommend(served, RecommendRequest(k=30, users=["u03"], seen="none"))
    scores = recs["score"].to_numpy()
    rows = served.item_rows().loc[recs["item_id"]].to_numpy()
    assert len(np.unique(scores)) < len(scores)  # there are ties
    for a, b, ra, rb in zip(scores[:-1], scores[1:], rows[:-1], rows[1:]):
        assert a > b or (a == b and ra < rb)


def test_users_subset_and_unknown_users_are_refused_by_name(world):
    served = load_servable(world["runs"]["lightgcn"], world["store"])
    recs = recommend(served, RecommendRequest(k=5, users=["u02", "u11"]))
    assert sorted(recs["user_id"].unique()) == ["u02", "u11"] and len(recs) == 10
    with pytest.raises(ServingError, match=r"--users: 2 users unknown to the run: 'nobody', 'u99'"):
        recommend(served, RecommendRequest(k=5, users=["u02", "nobody", "u99"]))


def test_cluster_users_get_their_clusters_items(world):
    served = load_servable(world["runs"]["freedom"], world["store"])
    recs = recommend(served, RecommendRequest(k=5))
    recs["cluster"] = recs["item_id"].str[1:].astype(int) >= 15
    recs["user_cluster"] = recs["user_id"].str[1:].astype(int) >= 10
    # chance: 7 unseen items of the user's cluster among 22 allowed (0.32); 15 epochs on 20 users get well above it
    assert (recs["cluster"] == recs["user_cluster"]).mean() > 0.6


def test_candidates_restrict_the_lists(world):
    served = load_servable(world["runs"]["lightgcn"], world["store"])
    allowed = ["i01", "i02", "i20", "not-an-item"]
    recs = recommend(served, RecommendRequest(k=10, candidates=allowed))
    assert set(recs["item_id"]) <= {"i01", "i02", "i20"}
    assert len(recs) > 0


def test_items_removed_from_the_catalog_are_never_returned(world, tmp_path):
    removed = [0, 1, 2, 16, 17]
    folder = tmp_path / "catalog-v2"
    _save_catalog(folder, [i for i in range(30) if i not in removed], world["inter"])
    served = load_servable(world["runs"]["freedom"], world["store"], catalog=folder)
    recs = recommend(served, RecommendRequest(k=25, seen="none"))
    assert not set(recs["item_id"]) & {f"i{i:02d}" for i in removed}
    assert recs.groupby("user_id").size().max() == 25
    out = write_recommendations(served, RecommendRequest(k=5), tmp_path / "recs.parquet")
    assert out.info["removed_since_training"] == len(removed)


def test_output_is_atomic_and_the_manifest_names_the_run(world, tmp_path, monkeypatch):
    served = load_servable(world["runs"]["freedom"], world["store"])
    out = tmp_path / "recs.parquet"
    written = write_recommendations(served, RecommendRequest(k=7), out)
    before = out.read_bytes()
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score"]
    assert len(frame) == written.rows == 20 * 7
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["run_dir"] == str(Path(world["runs"]["freedom"]).resolve())
    assert manifest["model"] == "freedom" and manifest["adapter"] == "none"
    assert manifest["feature_sets"]["text"]["fingerprint"] == FP
    assert (
        manifest["feature_sets"]["text"]["snapshot"]
        == json.loads((Path(world["runs"]["freedom"]) / "run.json").read_text())["feature_snapshots"]["text"]
    )
    assert manifest["catalog_fingerprint"] == Catalog.load(world["folder"]).fingerprint()
    assert manifest["created_at"] and manifest["k"] == 7

    real = recommend_module.score_batches

    def dies_after_one_batch(*args, **kwargs):
        gen = real(*args, **kwargs)
        yield next(gen)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(recommend_module, "score_batches", dies_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        write_recommendations(served, RecommendRequest(k=3, block_elements=30), out)  # one user per batch
    assert out.read_bytes() == before  # the previous file is intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_recommend_killed_between_parquet_and_manifest_is_never_read_as_a_pair(world, tmp_path, monkeypatch):
    """The two renames of a recommendations write, killed between them: the new Parquet is in
    place without a manifest, and readers (the report's showcase included) say so by name
    instead of describing it with the old manifest; the next write restores a pair."""
    served = load_servable(world["runs"]["freedom"], world["store"])
    out = tmp_path / "recommendations.parquet"
    write_recommendations(served, RecommendRequest(k=5), out)
    assert read_manifest(out)["k"] == 5

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the manifest's rename")

    monkeypatch.setattr(ranked_files, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        write_recommendations(served, RecommendRequest(k=3), out)
    monkeypatch.undo()
    assert pd.read_parquet(out).groupby("user_id").size().max() == 3  # the new file, ...
    with pytest.raises(PairMismatch, match="has no manifest recommendations.json beside it"):
        read_manifest(out)  # ... which no reader pairs with the old manifest
    section = recommendations_section(tmp_path)
    assert section.startswith("## Recommendations") and f"Not shown: {out} has no manifest" in section

    write_recommendations(served, RecommendRequest(k=3), out)
    table, manifest = read_ranked(out)
    assert manifest["k"] == 3 and table.num_rows == manifest["rows"] == 20 * 3


NEW = {f"i{i}" for i in range(30, 34)}


def _grown(world, tmp_path) -> tuple[Path, FeatureStore]:
    """The catalog with four A items added (i30-i33) and a store whose current snapshot has them."""
    folder = tmp_path / "catalog-grown"
    cat = _save_catalog(folder, list(range(34)), world["inter"])
    shutil.copytree(world["root"] / "store", tmp_path / "store")  # the recorded snapshot stays readable
    store = FeatureStore(tmp_path / "store")
    everything = cat.content_keys("text")
    fresh = everything.set_index("item_id").loc[sorted(NEW)]
    store.upsert(
        FeatureSetKey("clusters", FP, "text"),
        list(fresh.index),
        list(fresh["content_hash"]),
        _features(list(range(30, 34)), np.random.default_rng(5)),
        keep=list(zip(everything["item_id"], everything["content_hash"])),
    )
    return folder, store


def _new_item_mean_rank(served) -> pd.Series:
    """Mean rank of the new (A) items for A users (True) and B users (False), over the full list."""
    recs = recommend(served, RecommendRequest(k=34, seen="none"))
    assert np.isfinite(recs["score"]).all()
    recs["a_user"] = recs["user_id"].str[1:].astype(int) < 10
    return recs[recs["item_id"].isin(NEW)].groupby("a_user")["rank"].mean()


def test_new_items_are_ranked_through_content_without_retraining(world, tmp_path):
    """Four A items are added after training (features extracted into a new snapshot): FREEDOM
    ranks them through its rebuilt content kNN graph, higher for A users than for B users."""
    folder, store = _grown(world, tmp_path)
    served = load_servable(world["runs"]["freedom"], store, catalog=folder)
    assert set(served.item_ids[served.new.cpu().numpy()]) == NEW
    mean_rank = _new_item_mean_rank(served)
    assert mean_rank[True] + 4 < mean_rank[False]
    # trained items keep exactly their trained rows in the item table the model was grown from
    assert list(served.item_ids[:30]) == [f"i{i:02d}" for i in range(30)]

    plain = load_servable(world["runs"]["lightgcn"], store, catalog=folder)
    assert plain.new_items_left_out == 4
    assert not set(recommend(plain, RecommendRequest(k=34, seen="none"))["item_id"]) & NEW


@pytest.mark.slow  # four trainings (about 80 s together on a loaded host): make test runs them, test-fast does not
@pytest.mark.parametrize(
    ("model", "adapter"), [("bm3", "none"), ("bm3", "befa"), ("lattice", "befa"), ("mgcn", "none")]
)
def test_every_content_model_serves_new_items(world, tmp_path, model, adapter):
    features = load_features(Catalog.load(world["folder"]), world["store"], {"text": FP})
    overrides = {"embedding_dim": 16, "adapter": adapter} | ({"knn_k": 5} if model != "bm3" else {})
    run = train_model(
        str(world["folder"]),
        str(world["split"]),
        features,
        model,
        overrides=overrides,
        run_dir=tmp_path / "run",
        seed=3,
        max_epochs=15,
        patience=15,
        quiet=True,
    )
    folder, store = _grown(world, tmp_path)
    mean_rank = _new_item_mean_rank(load_servable(run.run_dir, store, catalog=folder))
    assert mean_rank[True] + 1 < mean_rank[False]


def test_similar_items_in_model_and_content_space(world):
    served = load_servable(world["runs"]["freedom"], world["store"])
    content = similar_items(served, ["i03", "i20"], k=5, space="content")
    for item, group in content.groupby("item_id"):
        assert item not in set(group["similar_item_id"])
        same = [(int(s[1:]) >= 15) == (int(item[1:]) >= 15) for s in group["similar_item_id"]]
        assert all(same)
    model = similar_items(served, ["i03"], k=29, space="model")
    assert len(model) == 29 and "i03" not in set(model["similar_item_id"])
    with pytest.raises(ServingError, match="--space content"):
        similar_items(load_servable(world["runs"]["lightgcn"], world["store"]), ["i03"], space="content")


def test_cli_recommend_and_similar(world, tmp_path, monkeypatch):
    monkeypatch.setenv("BEFA_FEATURE_STORE", str(world["root"] / "store"))
    runner = CliRunner()
    out = tmp_path / "top.parquet"
    users = tmp_path / "users.txt"
    users.write_text("u01\n# a comment\nu12\n")
    res = runner.invoke(
        app, ["recommend", str(world["runs"]["freedom"]), "--k", "4", "--users", f"@{users}", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "wrote 8 recommendation rows for 2 users" in res.output and "duckdb" in res.output
    assert sorted(pd.read_parquet(out)["user_id"].unique()) == ["u01", "u12"]
    res = runner.invoke(
        app,
        [
            "similar",
            str(world["runs"]["freedom"]),
            "--items",
            "i03",
            "--k",
            "3",
            "--out",
            str(tmp_path / "sim.parquet"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(pd.read_parquet(tmp_path / "sim.parquet")) == 3
    for args, message in [
        ([str(tmp_path), "--k", "4"], "not a run folder (no run.json)"),
        ([str(world["runs"]["freedom"]), "--k", "0"], "--k must be at least 1"),
        ([str(world["runs"]["freedom"]), "--users", "zz"], "--users: 1 users unknown to the run: 'zz'"),
        ([str(world["runs"]["freedom"]), "--candidates", str(tmp_path / "none.txt")], "--candidates: no such file"),
    ]:
        bad = runner.invoke(app, ["recommend", *args])
        said = " ".join(bad.output.split())  # rich may wrap long lines
        assert bad.exit_code == 2 and message in said and "Traceback" not in said, bad.output


def test_hand_computed_lists(world):
    """Embeddings set by hand on a served run (2-d, every score computable on paper):
    the lists, ties (lower item row first), exclusions and candidates are exactly these."""
    served = load_servable(world["runs"]["lightgcn"], world["store"])
    n_items = served.num_items
    item = torch.zeros(n_items, 2)
    item[:, 0] = torch.arange(n_items, dtype=torch.float32) % 5  # scores 0..4 repeating: ties everywhere
    served.item_emb = item
    served.user_emb = torch.zeros(served.user_emb.size(0), 2)
    served.user_emb[:, 0] = 1.0  # every user scores item i as i % 5
    u = "u00"
    seen = {f"i{i:02d}" for i in world["inter"][world["inter"]["user_id"] == u]["item_id"].str[1:].astype(int)}
    expected = sorted((i for i in range(n_items) if f"i{i:02d}" not in seen), key=lambda i: (-(i % 5), i))[:6]
    got = recommend(served, RecommendRequest(k=6, users=[u]))
    assert got["item_id"].tolist() == [f"i{i:02d}" for i in expected]
    assert got["score"].tolist() == [float(i % 5) for i in expected]
    kept = recommend(served, RecommendRequest(k=6, users=[u], seen="none"))
    assert kept["item_id"].tolist() == ["i04", "i09", "i14", "i19", "i24", "i29"]  # the six items scoring 4, by row
    only = recommend(served, RecommendRequest(k=6, users=[u], seen="none", candidates=["i00", "i03", "i07", "i12"]))
    assert only["item_id"].tolist() == ["i03", "i07", "i12", "i00"]  # scores 3, 2, 2, 0
