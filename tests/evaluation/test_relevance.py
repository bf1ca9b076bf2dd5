"""The relevance calibration (pipeline.evaluation.relevance, relevance_fit, and
QuantileCalibration's ``relevance`` mode) on constructed cases with known hit rates.

Embeddings are built so that scores can be written down directly: with d = 2I, item i's true
representation is e_i and its mapped one e_{I+i}, so user u's true score for item i is
user_emb[u, i] and its raw mapped score user_emb[u, I + i]."""

from __future__ import annotations

import pytest
import torch

from pipeline.evaluation.calibration import QuantileCalibration
from pipeline.evaluation.evaluator import UserItems, topk_items
from pipeline.evaluation.relevance import BIN_EDGES, RelevanceCurves, curves_from_counts, pav
from pipeline.evaluation.relevance_fit import fit_relevance

U, N_WARM, N_NEW = 30, 40, 10
N_ITEMS = N_WARM + N_NEW
TRAIN_PER_USER = 4


def _world(seed: int = 0) -> dict:
    """U users; items 0..39 warm (every 4th a held-out calibration item), 40..49 new. True warm
    scores are a random order per user; each user has 4 train positives among the warm items.
    New items 40..44 score above every calibration item on the mapper's scale, 45..49 below."""
    g = torch.Generator().manual_seed(seed)
    true = torch.rand(U, N_ITEMS, generator=g)
    mapped = torch.rand(U, N_ITEMS, generator=g)
    mapped[:, 40:45] += 10.0 + torch.arange(5.0)  # q > 1: bin 0
    mapped[:, 45:50] -= 10.0  # q < 0: the last bin
    warm = torch.arange(N_ITEMS) < N_WARM
    calib = warm & (torch.arange(N_ITEMS) % 4 == 0)
    users = torch.arange(U).repeat_interleave(TRAIN_PER_USER)
    items = torch.stack([torch.randperm(N_WARM, generator=g)[:TRAIN_PER_USER] for _ in range(U)]).flatten()
    eye = torch.eye(N_ITEMS)
    return {
        "user_emb": torch.cat([true, mapped], dim=1),
        "item_emb": torch.cat([eye, torch.zeros(N_ITEMS, N_ITEMS)], dim=1),
        "mapped_emb": torch.cat([torch.zeros(N_ITEMS, N_ITEMS), eye], dim=1),
        "true": true,
        "mapped": mapped,
        "warm": warm,
        "calib": calib,
        "train": UserItems.from_pairs(U, users, items),
    }


def _masked_ranking(w: dict) -> torch.Tensor:
    """(U, N_WARM - TRAIN_PER_USER) each user's warm items by true score, train positives left out."""
    scores = w["true"].clone()
    scores[:, N_WARM:] = float("-inf")
    row, item = w["train"].rows(torch.arange(U))
    scores[row, item] = float("-inf")
    return topk_items(scores, N_WARM - TRAIN_PER_USER)


def _calibration(w: dict) -> QuantileCalibration:
    return QuantileCalibration(w["user_emb"], w["item_emb"], w["mapped_emb"], w["calib"], ~w["warm"])


def test_pav_makes_hit_rates_monotone_and_fills_empty_entries():
    assert pav([0.1, 0.3, 0.2], [1, 1, 1]) == pytest.approx([0.1, 0.25, 0.25])
    assert pav([0.5, 0.2, 0.4, 0.0], [1, 1, 3, 1], increasing=False) == pytest.approx([0.5, 0.35, 0.35, 0.0])
    assert pav([0.4, 9.0, 0.1], [2, 0, 1], increasing=False) == pytest.approx([0.4, 0.4, 0.1])  # empty: its neighbour


def test_fit_relevance_recovers_known_hit_rates_from_the_cold_items():
    w = _world()
    ranking = _masked_ranking(w)
    # valid: every user's warm items at ranks 1 and 2, the rank-3 item for even users only;
    # the new items 40, 41 (above the calibration range) for every user, none of the low ones
    pairs = [(u, int(ranking[u, r])) for u in range(U) for r in range(3) if r < 2 or u % 2 == 0]
    pairs += [(u, i) for u in range(U) for i in (40, 41)]
    valid = UserItems.from_pairs(U, torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs]))
    curves = fit_relevance(_calibration(w), w["item_emb"], w["mapped_emb"], w["warm"], w["calib"], w["train"], valid)
    assert curves.source == "cold" and curves.users == U and curves.k == N_WARM
    assert curves.warm_counts[: N_WARM - TRAIN_PER_USER] == [U] * (N_WARM - TRAIN_PER_USER)
    assert curves.warm_counts[N_WARM - TRAIN_PER_USER :] == [0] * TRAIN_PER_USER  # the train positives are masked
    assert curves.warm_hits[:4] == [U, U, U // 2, 0] and curves.p_warm[:4] == pytest.approx([1, 1, 0.5, 0])
    assert curves.new_counts[0] == U * 5 and curves.new_counts[-1] == U * 5 and sum(curves.new_counts) == U * 10
    assert curves.new_hits[0] == U * 2 and curves.new_hits[-1] == 0
    assert curves.p_new[0] == pytest.approx(0.4) and curves.p_new[-1] == 0  # the middle bins are empty: filled
    assert all(a >= b for a, b in zip(curves.p_new, curves.p_new[1:]))  # non-decreasing in q
    assert all(a >= b for a, b in zip(curves.p_warm, curves.p_warm[1:]))
    assert RelevanceCurves.model_validate(curves.model_dump(mode="json")) == curves  # as mapping.json stores it


def test_fit_relevance_falls_back_to_the_calibration_items_without_cold_positives():
    w = _world()
    calib_items = w["calib"].nonzero().flatten().tolist()
    pairs = [(u, calib_items[u % len(calib_items)]) for u in range(U)]  # one calibration item per user
    valid = UserItems.from_pairs(U, torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs]))
    curves = fit_relevance(_calibration(w), w["item_emb"], w["mapped_emb"], w["warm"], w["calib"], w["train"], valid)
    row, item = w["train"].rows(torch.arange(U))
    trained_on_calib = int(w["calib"][item].sum())
    assert curves.source == "calib"
    assert sum(curves.new_counts) == U * len(calib_items) - trained_on_calib  # train positives left out
    assert sum(curves.new_hits) == sum(1 for u, i in pairs if i not in set(item[row == u].tolist()))


def _curves(p_warm: list[float], p_new: float | list[float]) -> RelevanceCurves:
    bins = len(BIN_EDGES) - 1
    p_new = [p_new] * bins if isinstance(p_new, float) else p_new
    return RelevanceCurves(
        k=len(p_warm), source="cold", users=U, p_warm=p_warm, warm_hits=[0] * len(p_warm),
        warm_counts=[U] * len(p_warm), p_new=p_new, new_hits=[0] * bins, new_counts=[U] * bins,
    )  # fmt: skip


def _rescored(w: dict, curves: RelevanceCurves) -> tuple[torch.Tensor, torch.Tensor]:
    cal = _calibration(w)
    cal.use_relevance(curves, w["train"])
    cal.mode = "relevance"
    raw = w["user_emb"] @ w["item_emb"].T
    return raw, cal.rescore(torch.arange(U), raw.clone())


def test_rescoring_keeps_warm_scores_and_the_mapped_items_order_per_user():
    w = _world()
    p_warm = [0.5 * 0.9**r for r in range(N_WARM)]
    p_new = [0.9, 0.8, 0.7, 0.65, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.05, 0.01, 0.0]
    assert len(p_new) == len(BIN_EDGES) - 1
    raw, out = _rescored(w, _curves(p_warm, p_new))
    assert torch.equal(out[:, w["warm"]], raw[:, w["warm"]])  # warm items keep their scores, hence their order
    mapped = w["mapped"][:, N_WARM:]
    order = mapped.argsort(dim=1)
    assert bool((out[:, N_WARM:].gather(1, order).diff(dim=1) > 0).all())  # strictly in the raw mapped order


@pytest.mark.parametrize("rank", [1, 3, 10])
def test_an_item_between_two_warm_hit_rates_lands_between_those_warm_ranks(rank):
    w = _world()
    p_warm = [1.0 - r / N_WARM for r in range(N_WARM)]  # p_warm(r) = 1 - (r - 1) / 40
    between = (p_warm[rank - 1] + p_warm[rank]) / 2  # between p_warm(rank) and p_warm(rank + 1)
    _, out = _rescored(w, _curves(p_warm, between))
    ladder = out.gather(1, _masked_ranking(w))  # each user's unmasked warm scores, descending
    new = out[:, N_WARM:]
    assert bool((new < ladder[:, rank - 1 : rank]).all()) and bool((new > ladder[:, rank : rank + 1]).all())
    above, below = _rescored(w, _curves(p_warm, 1.5))[1], _rescored(w, _curves(p_warm, 0.0))[1]
    assert bool((above[:, N_WARM:] > ladder[:, :1]).all())  # likelier than the top warm item: above it
    assert bool((below[:, N_WARM:] < ladder[:, -1:]).all())  # as likely as the last: below every warm item


def test_a_mapped_item_never_relevant_in_valid_stays_out_of_every_top_20():
    w = _world()
    w["mapped"][:, N_WARM:] += 100.0  # the mapper scores every new item far above everything
    w["user_emb"][:, N_ITEMS:] = w["mapped"]
    ranking = _masked_ranking(w)
    pairs = [(u, int(i)) for u in range(U) for i in ranking[u, :25] if not bool(w["calib"][i])]
    valid = UserItems.from_pairs(U, torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs]))
    cal = _calibration(w)
    curves = fit_relevance(cal, w["item_emb"], w["mapped_emb"], w["warm"], w["calib"], w["train"], valid)
    assert curves.source == "calib" and max(curves.p_new) == 0 and min(curves.p_warm[:20]) > 0
    cal.use_relevance(curves, w["train"])
    row, item = w["train"].rows(torch.arange(U))
    for mode, reaches in (("relevance", False), ("quantile", True)):
        cal.mode = mode
        scores = cal.rescore(torch.arange(U), w["user_emb"] @ w["item_emb"].T)
        scores[row, item] = float("-inf")
        assert bool((topk_items(scores, 20) >= N_WARM).any()) == reaches, mode


def test_curves_from_counts_needs_no_hits_to_be_valid():
    bins = len(BIN_EDGES) - 1
    curves = curves_from_counts([0, 0], [3, 3], [0] * bins, [0] * bins, "calib", 3)
    assert curves.p_warm == [0.0, 0.0] and curves.p_new == [0.0] * bins and curves.k == 2
