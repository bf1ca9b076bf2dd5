"""The paired bootstrap interval of a base vs +BeFA gain over users (pipeline.evaluation.bootstrap)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.bootstrap import NOISE, paired_bootstrap, paired_users


def _recall(n: int, seed: int) -> np.ndarray:
    """Per-user Recall@20 as it looks on a real catalog: most users 0, the rest k / n_heldout."""
    rng = np.random.default_rng(seed)
    heldout = rng.integers(1, 8, size=n)
    hits = rng.binomial(heldout, 0.12)
    return hits / heldout


def test_a_known_positive_shift_gives_an_interval_above_zero():
    base = _recall(900, seed=1)
    befa = base + 0.02  # every user gains: a real, paired improvement
    ci = paired_bootstrap(base, befa, "recall@20")
    assert ci.n_users == 900 and ci.resamples == 2000 and ci.confidence == 0.95
    assert ci.gain == pytest.approx(0.02 / base.mean())
    assert 0 < ci.low <= ci.gain <= ci.high
    assert ci.covers_zero is False and ci.verdict == "+BeFA higher"
    worse = paired_bootstrap(befa, base, "recall@20")
    assert worse.high < 0 and worse.verdict == "base higher"


def test_identical_arms_cover_zero_and_read_as_noise():
    base = _recall(900, seed=2)
    ci = paired_bootstrap(base, base.copy(), "recall@20")
    assert ci.gain == 0 and ci.low == 0 and ci.high == 0
    assert ci.covers_zero is True and ci.verdict == NOISE == "not distinguishable from noise"


def test_two_draws_of_one_model_are_noise_and_the_interval_is_seeded():
    """Two arms of the same quality differ user by user; the interval covers 0, and the same
    seed gives the same interval (a rebuilt report prints the same numbers)."""
    base, befa = _recall(900, seed=3), _recall(900, seed=4)
    ci = paired_bootstrap(base, befa, "recall@20", seed=7)
    assert ci.low < 0 < ci.high and ci.verdict == NOISE
    assert paired_bootstrap(base, befa, "recall@20", seed=7) == ci
    assert paired_bootstrap(base, befa, "recall@20", seed=8).low != ci.low


def test_a_few_single_hits_are_noise_where_many_are_not():
    """One user's extra hit moves the mean by about 1/n of a recall: a handful of them is
    within the interval, many of them are not (the 'one hit' scale of a small catalog)."""
    base = _recall(900, seed=5)
    few, many = base.copy(), base.copy()
    few[:3] += 1 / 7
    many[:150] += 1 / 7
    assert paired_bootstrap(base, few, "recall@20").verdict == NOISE
    assert paired_bootstrap(base, many, "recall@20").verdict == "+BeFA higher"


def test_base_mean_zero_has_no_gain_and_nan_users_are_left_out():
    zero = paired_bootstrap(np.zeros(10), np.full(10, 0.1), "recall@20")
    assert zero.gain is None and zero.low is None and zero.covers_zero is None and zero.verdict == "n/a"
    ci = paired_bootstrap([0.5, np.nan, 0.25, 0.0], [0.5, 0.3, 0.5, 0.0], "ndcg@20", resamples=50)
    assert ci.n_users == 3 and ci.base == pytest.approx(0.25) and ci.befa == pytest.approx(1 / 3)
    assert np.isfinite(ci.high)  # a resample of base-0 users is +inf; the percentile end stays finite here
    with pytest.raises(ValueError, match="one value per user"):
        paired_bootstrap([0.1, 0.2], [0.1], "recall@20")


def test_paired_users_aligns_by_user_and_part():
    base = pd.DataFrame(
        {"part": ["valid", "test", "test", "test"], "user_idx": [0, 2, 0, 1], "recall@20": [9.0, 0.2, 0.0, 0.1]}
    )
    befa = pd.DataFrame({"part": ["test", "test", "test"], "user_idx": [1, 0, 3], "recall@20": [0.3, 0.5, 1.0]})
    b, a = paired_users(base, befa, "recall@20")
    assert b.tolist() == [0.0, 0.1] and a.tolist() == [0.5, 0.3]  # users 0 and 1, in user order
    with pytest.raises(ValueError, match="ndcg@20"):
        paired_users(base, befa, "ndcg@20")
