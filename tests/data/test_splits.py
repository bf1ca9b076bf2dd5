import numpy as np
import pandas as pd
import pytest

from pipeline.data.catalog import build_catalog
from pipeline.data.splits import TEST, TRAIN, VALID, Split, kcore, make_split, split_random, split_temporal


def _catalog(n_per_user, n_items=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u, n in enumerate(n_per_user):
        for t, i in enumerate(rng.choice(n_items, size=n, replace=False)):
            rows.append((f"u{u:03d}", str(i), 5.0, 1000 + t))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame(
        {"item_id": [str(i) for i in range(n_items)], "title": "t", "text": "x", "image": None, "image_hash": None}
    )
    return build_catalog("synthetic", items, inter)


def test_random_split_sizes_follow_mmrec_rule():
    sizes = [1, 2, 3, 5, 9, 10, 11, 20, 37, 50]
    split = split_random(_catalog(sizes), seed=7)
    f = split.frame
    for u, n in enumerate(sizes):
        c = f[f.user_idx == u]["label"].value_counts()
        got = (c.get(TRAIN, 0), c.get(VALID, 0), c.get(TEST, 0))
        if n < 3:
            want = (n, 0, 0)
        elif n < 10:
            want = (n - 2, 1, 1)
        else:
            held = int(0.2 * n)
            want = (n - held, held // 2, held - held // 2)
        assert got == want, (n, got, want)
    assert len(f) == sum(sizes)


def test_random_split_is_deterministic_and_seed_dependent():
    cat = _catalog([30] * 20)
    a, b, c = split_random(cat, seed=1), split_random(cat, seed=1), split_random(cat, seed=2)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert a.id == b.id
    assert not a.frame.equals(c.frame) and a.id != c.id


def test_temporal_leave_last_out():
    cat = _catalog([5, 2])
    split = split_temporal(cat)
    inter = cat.interactions
    u0 = inter[inter.user_idx == 0].sort_values("timestamp")
    f = split.frame.merge(inter[["user_idx", "item_idx", "timestamp"]], on=["user_idx", "item_idx"])
    last = f[(f.user_idx == 0)].sort_values("timestamp")
    assert list(last["label"]) == [TRAIN, TRAIN, TRAIN, VALID, TEST]
    assert set(split.frame[split.frame.user_idx == 1]["label"]) == {TRAIN}
    assert len(u0) == 5


def test_kcore_filters_iteratively():
    inter = pd.DataFrame({"user_idx": [0, 0, 1, 1, 2], "item_idx": [0, 1, 0, 1, 2]})
    out = kcore(inter, 2)
    assert set(out.user_idx) == {0, 1} and set(out.item_idx) == {0, 1}
    cat = _catalog([12, 3, 15], n_items=15)
    split = make_split(cat, "random", seed=3, k_core=2)
    assert split.name == "random-s3-k2"


def test_split_roundtrip_and_subsample(tmp_path):
    split = split_random(_catalog([40] * 10), seed=5)
    path = split.save(tmp_path)
    back = Split.load(path)
    pd.testing.assert_frame_equal(back.frame, split.frame)
    assert back.id == split.id
    half = split.subsample_train(0.5, seed=0)
    assert half.counts()["valid"] == split.counts()["valid"] and half.counts()["test"] == split.counts()["test"]
    assert half.counts()["train"] == 10 * int(np.floor(32 * 0.5))


def test_given_labels_are_validated():
    frame = pd.DataFrame({"user_idx": [0, 0], "item_idx": [1, 2], "label": [0, 5]})
    with pytest.raises(ValueError, match="row 2"):
        Split.from_labels("given", frame)


def test_movielens_split_counts(datasets_root):
    ratings = pd.read_csv(
        datasets_root / "movielens-100k-posters/ml-100k/u.data",
        sep="\t",
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    ratings = ratings[ratings.rating >= 4]
    items = pd.DataFrame(
        {"item_id": [str(i) for i in range(1, 1683)], "title": "", "text": "", "image": None, "image_hash": None}
    )
    cat = build_catalog("ml", items, ratings)
    split = split_random(cat, seed=2024)
    c = split.counts()
    assert sum(c.values()) == 55_375
    assert 0.78 < c["train"] / 55_375 < 0.84 and abs(c["valid"] - c["test"]) <= 943


def test_repeats_are_folded_once_and_the_record_says_how_many():
    """A catalog that still holds repeat (user, item) rows (an older catalog, an MMRec or
    Amazon source) is split on one row per pair, and the split's record counts the folded rows."""
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(6)], "title": "", "text": "t"})
    rows = [(f"u{u}", f"i{i}", 5.0, 10 * u + i) for u in range(4) for i in range(6)]
    rows += [("u0", "i1", 4.0, 99), ("u0", "i1", 3.0, 100), ("u2", "i5", 5.0, 101)]
    catalog = build_catalog("repeats", items, pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]))
    for split in (split_random(catalog, seed=1), split_temporal(catalog)):
        assert split.meta["repeats_folded"] == 3
        assert len(split.frame) == 24 == len(split.frame.drop_duplicates(["user_idx", "item_idx"]))
