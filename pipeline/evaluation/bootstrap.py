"""A paired bootstrap confidence interval of one run's base vs +BeFA gain, over test users.

Both arms of a pipeline run are evaluated on the same test users, so a user is the unit:
resample the users with replacement (the same draw for both arms: paired), take the
relative gain of the mean metric in each resample, ``(mean_befa - mean_base) / mean_base``,
and read the interval off the resampled gains' percentiles (the percentile interval;
95% by default, 2000 resamples, a fixed seed so a report rebuilt from the same run
folders prints the same interval).

The interval answers "would another draw of test users give the same sign?", for this
one trained pair: it holds the trained models fixed, so it says nothing about training
noise (seed, an early stop in a dip). That needs several seeds per arm: ``befa study``.

Inputs are plain arrays (one value per user, the same user order in both) or the run
folders' per-user tables (``part``, ``user_idx``, one column per metric), aligned by
:func:`paired_users`. A resample whose base mean is 0 has an undefined relative gain:
+inf when +BeFA's mean is above 0, 0 when both are 0 (no difference to see); the
percentiles are read without interpolation (``inverted_cdf``) so such a resample never
turns an end into NaN. When the base mean of the whole sample is 0 there is no relative
gain and no interval.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel

RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95
_CHUNK_CELLS = 2_000_000  # resamples x users drawn at once: bounded memory on large catalogs
NOISE = "not distinguishable from noise"


class GainInterval(BaseModel):
    """The relative gain of +BeFA over base on one metric, with its paired bootstrap interval."""

    metric: str
    n_users: int  # users in both arms (the unit that is resampled)
    base: float | None  # mean over those users
    befa: float | None
    gain: float | None  # relative gain of the means; None when the base mean is 0
    low: float | None  # interval ends (relative gain); None when there is no gain
    high: float | None
    confidence: float = CONFIDENCE
    resamples: int = RESAMPLES
    seed: int = SEED

    @property
    def covers_zero(self) -> bool | None:
        """Whether the interval holds 0 (no evidence of a difference); None without an interval."""
        if self.low is None or self.high is None:
            return None
        return self.low <= 0.0 <= self.high

    @property
    def verdict(self) -> str:
        """``not distinguishable from noise`` when the interval covers 0, else which arm is higher."""
        covers = self.covers_zero
        if covers is None:
            return "n/a"
        if covers:
            return NOISE
        return "+BeFA higher" if self.low > 0 else "base higher"


def paired_bootstrap(
    base: Sequence[float] | np.ndarray,
    befa: Sequence[float] | np.ndarray,
    metric: str = "",
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> GainInterval:
    """The relative gain of the mean of ``befa`` over the mean of ``base`` (one value per
    user, same order) with its percentile interval over ``resamples`` paired resamples of
    the users. Users with NaN in either arm are left out."""
    b, a = np.asarray(base, dtype=float), np.asarray(befa, dtype=float)
    if b.shape != a.shape or b.ndim != 1:
        raise ValueError(f"paired bootstrap needs one value per user in both arms (got shapes {b.shape}, {a.shape})")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"resamples must be >= 1 and confidence in (0, 1) (got {resamples}, {confidence})")
    keep = ~(np.isnan(b) | np.isnan(a))
    b, a = b[keep], a[keep]
    n = int(b.size)
    out = dict(metric=metric, n_users=n, confidence=confidence, resamples=resamples, seed=seed)
    if n == 0:
        return GainInterval(base=None, befa=None, gain=None, low=None, high=None, **out)
    mean_b, mean_a = float(b.mean()), float(a.mean())
    if mean_b == 0:
        return GainInterval(base=mean_b, befa=mean_a, gain=None, low=None, high=None, **out)
    gains = _resampled_gains(b, a, resamples, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    low, high = np.quantile(gains, [tail, 1 - tail], method="inverted_cdf")
    return GainInterval(
        base=mean_b, befa=mean_a, gain=(mean_a - mean_b) / mean_b, low=float(low), high=float(high), **out
    )


def _resampled_gains(b: np.ndarray, a: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = b.size
    gains = np.empty(resamples)
    step = max(1, _CHUNK_CELLS // n)
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        mb, ma = b[idx].mean(axis=1), a[idx].mean(axis=1)
        undefined = np.where(ma > 0, np.inf, 0.0)  # base mean 0 in this resample
        with np.errstate(divide="ignore", invalid="ignore"):
            gains[start : start + rows] = np.where(mb > 0, (ma - mb) / mb, undefined)
    return gains


def paired_users(
    base: pd.DataFrame, befa: pd.DataFrame, metric: str, part: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
    """Two per-user tables (``part``, ``user_idx``, ``metric``) as aligned arrays: the users
    of ``part`` in both, in user order. A user missing from one side is left out, never
    zero-filled; a table without ``metric`` is a ValueError naming it."""
    for name, table in (("base", base), ("+BeFA", befa)):
        missing = [c for c in ("part", "user_idx", metric) if c not in table.columns]
        if missing:
            raise ValueError(f"per-user table ({name}) lacks {missing}; has {list(table.columns)}")
    b = base[base["part"] == part][["user_idx", metric]]
    a = befa[befa["part"] == part][["user_idx", metric]]
    merged = b.merge(a, on="user_idx", how="inner", suffixes=("_base", "_befa")).sort_values("user_idx")
    return merged[f"{metric}_base"].to_numpy(float), merged[f"{metric}_befa"].to_numpy(float)
