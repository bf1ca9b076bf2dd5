"""Ranking metrics and full-ranking evaluation against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.evaluation.evaluator import Evaluator, UserItems, topk_items
from pipeline.evaluation.metrics import hits_from_rankings, per_user_metrics, ranking_metrics


def test_spec_example_recall_at_4():
    # user a: held-out {x, y, z}, ranks x 1st and y 3rd; user b: held-out {w} ranked 1st.
    ranked = [["x", "p", "y", "q"], ["w", "p", "q", "r"]]
    heldout = [{"x", "y", "z"}, {"w"}]
    m = ranking_metrics(ranked, heldout, ks=(4,))
    assert m["recall@4"] == pytest.approx((2 / 3 + 1) / 2)
    assert round(m["recall@4"], 4) == 0.8333
    # the rest of the spec's definitions on the same case, by hand
    dcg_a = 1 / math.log2(2) + 1 / math.log2(4)
    idcg_a = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@4"] == pytest.approx((dcg_a / idcg_a + 1.0) / 2)
    assert m["precision@4"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    ap_a = (1 / 1 + 2 / 3) / 3  # P@1 * rel(1) + P@3 * rel(3), over min(3, 4)
    assert m["map@4"] == pytest.approx((ap_a + 1.0) / 2)


def test_fewer_heldout_than_k_uses_n_for_recall_and_min_for_ndcg_map():
    # one user, 2 held-out items, hits at ranks 2 and 5; K = 5 and K = 1
    hits, n = hits_from_rankings([[0, 7, 1, 2, 8]], [{7, 8}], kmax=5)
    v = per_user_metrics(hits, n, ks=(1, 5))
    assert float(v["recall@5"][0]) == pytest.approx(1.0)
    assert float(v["recall@1"][0]) == 0.0
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    assert float(v["ndcg@5"][0]) == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    assert float(v["precision@5"][0]) == pytest.approx(2 / 5)
    assert float(v["map@5"][0]) == pytest.approx((1 / 2 + 2 / 5) / 2)
    # more held-out items than K: recall divides by n (not min(n, K)), ndcg/map by min(n, K)
    hits, n = hits_from_rankings([[1, 2]], [{1, 2, 3, 4}], kmax=2)
    v = per_user_metrics(hits, n, ks=(2,))
    assert float(v["recall@2"][0]) == pytest.approx(2 / 4)
    assert float(v["ndcg@2"][0]) == pytest.approx(1.0)
    assert float(v["map@2"][0]) == pytest.approx(1.0)


def test_users_without_heldout_are_skipped():
    m = ranking_metrics([[1, 2], [3, 4]], [{1}, set()], ks=(2,))
    assert m["recall@2"] == 1.0
    with pytest.raises(ValueError, match="no held-out"):
        per_user_metrics(torch.zeros(1, 2, dtype=torch.bool), torch.tensor([0]), ks=(2,))


def test_topk_ties_go_to_lower_item_index():
    scores = torch.tensor(
        [
            [0.5, 1.0, 1.0, 0.2, 1.0, 1.0],  # four-way tie at the top, k=3 boundary inside it
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all tied
            [0.1, 0.9, 0.3, 0.9, -0.0, 0.0],  # tie inside the top k, +-0 folded
        ]
    )
    top = topk_items(scores, 3)
    assert top.tolist() == [[1, 2, 4], [0, 1, 2], [1, 3, 2]]
    # -inf (masked) items rank last, lower index first among them
    s = torch.tensor([[float("-inf"), 2.0, float("-inf"), 1.0]])
    assert topk_items(s, 4).tolist() == [[1, 3, 0, 2]]
    # a permutation of columns that moves tied items changes the answer only through indices
    big = torch.randn(64, 300)
    big[:, 10:20] = 5.0  # ten-way tie at the top of every row
    top = topk_items(big, 5)
    assert (top == torch.arange(10, 15)).all()


def test_topk_matches_stable_full_sort_with_many_ties():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 6, (64, 100), generator=g).float()
    scores[::3, ::7] = float("-inf")
    for k in (1, 5, 20, 50, 100):
        expected = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
        assert torch.equal(topk_items(scores, k), expected)


def _evaluator(num_users, num_items, train, valid, test):
    def ui(pairs):
        u = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
        i = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
        return UserItems.from_pairs(num_users, u, i)

    return Evaluator(ui(train), {"valid": ui(valid), "test": ui(test)}, num_items, ks=(1, 2, 3))


def test_full_ranking_masks_train_but_not_valid_at_test_time():
    # 2 users, 5 items; item scores for every user are 5,4,3,2,1 (item 0 best)
    items = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
    users = torch.ones(3, 1)
    train = [(0, 0), (1, 1)]
    valid = [(0, 1), (1, 0)]
    test = [(0, 2), (1, 2), (2, 4)]
    ev = _evaluator(3, 5, train, valid, test)
    res = ev.evaluate(users, items)
    # user 0: train {0} masked -> ranking 1,2,3,4: valid item 1 at rank 1, test item 2 at rank 2
    # (valid item 1 is NOT masked at test time, it still occupies rank 1)
    # user 1: train {1} masked -> ranking 0,2,3,4: valid item 0 at rank 1, test item 2 at rank 2
    # user 2: no train row here, test item 4 at rank 5 -> miss
    assert res["valid"].users.tolist() == [0, 1]
    assert res["valid"].metrics["recall@1"] == 1.0
    assert res["test"].users.tolist() == [0, 1, 2]
    assert res["test"].metrics["recall@1"] == 0.0
    assert res["test"].metrics["recall@2"] == pytest.approx(2 / 3)
    assert res["test"].metrics["ndcg@2"] == pytest.approx((2 * (1 / math.log2(3)) / 1.0) / 3)


def test_evaluator_matches_bruteforce_on_random_data():
    g = torch.Generator().manual_seed(0)
    num_users, num_items, d = 37, 60, 8
    ue, ie = torch.randn(num_users, d, generator=g), torch.randn(num_items, d, generator=g)
    pairs = torch.randperm(num_users * num_items, generator=g)[:600]
    u, i = pairs // num_items, pairs % num_items
    lab = torch.randint(0, 3, (600,), generator=g)
    parts = {k: UserItems.from_pairs(num_users, u[lab == k], i[lab == k]) for k in range(3)}
    ev = Evaluator(
        parts[0],
        {"valid": parts[1], "test": parts[2]},
        num_items,
        block_elements=7 * num_items,  # several batches
    )
    res = ev.evaluate(ue, ie)
    scores = (ue @ ie.T).numpy()
    for name, lab_id in (("valid", 1), ("test", 2)):
        recalls, ndcgs = [], []
        for user in range(num_users):
            truth = set(i[(u == user) & (lab == lab_id)].tolist())
            if not truth:
                continue
            train = set(i[(u == user) & (lab == 0)].tolist())
            order = sorted((it for it in range(num_items) if it not in train), key=lambda it: (-scores[user, it], it))
            top = order[:20]
            h = [it in truth for it in top]
            recalls.append(sum(h) / len(truth))
            dcg = sum(1 / math.log2(r + 2) for r, x in enumerate(h) if x)
            ndcgs.append(dcg / sum(1 / math.log2(r + 2) for r in range(min(len(truth), 20))))
        assert res[name].metrics["recall@20"] == pytest.approx(np.mean(recalls))
        assert res[name].metrics["ndcg@20"] == pytest.approx(np.mean(ndcgs))
        np.testing.assert_allclose(res[name].per_user["recall@20"], recalls)
        np.testing.assert_allclose(res[name].per_user["ndcg@20"], ndcgs)
