"""Paired significance tests of base vs +BeFA over users (the study's significance column).

Both arms of a comparison are trained on the same split and evaluated on the same test
users, so the natural unit is the user: for user u and seed s, d_us = m_befa(u, s) -
m_base(u, s), with m a per-user metric (Recall@20 or NDCG@20 from ``per_user.parquet``).

Pooling over seeds (``pooling``):

- ``"user_mean"`` (default): d_u = mean over seeds of d_us, then one test over the users.
  A user evaluated under three seeds is still one user; treating the three differences
  as independent observations (``"concat"``) triples n and understates the p-value, so
  the default averages first. Seed-to-seed spread is reported separately (mean ± std of
  the averaged metrics).
- ``"concat"``: every (user, seed) difference is one observation (offered for comparison).

Tests: the paired t-test (``scipy.stats.ttest_rel`` on the pooled pairs) and the Wilcoxon
signed-rank test (``scipy.stats.wilcoxon``, ``zero_method="wilcox"``: users whose
metric did not change carry no information on the sign and are dropped, which is the
usual case for Recall@20 where most users have zero hits in both arms). Both two-sided.
Per-user recall is bounded and heavily tied, so the Wilcoxon p-value is the one the
report's significance column shows; the t-test's is kept beside it. ``holm`` adjusts a
family of p-values (one per model x metric) for multiple comparisons.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel

Pooling = Literal["user_mean", "concat"]


class PairedTest(BaseModel):
    """The paired tests of one metric over the same users, base vs +BeFA."""

    metric: str
    pooling: str
    n_pairs: int  # observations entering the tests
    n_nonzero: int  # pairs with a non-zero difference (what Wilcoxon uses)
    n_seeds: int
    mean_base: float
    mean_befa: float
    mean_diff: float
    t_stat: float | None
    p_ttest: float | None
    w_stat: float | None
    p_wilcoxon: float | None
    wins: int  # pairs where +BeFA is higher
    losses: int  # pairs where base is higher

    def to_dict(self) -> dict:
        return self.model_dump()


def paired_frame(
    base: Sequence[pd.DataFrame], befa: Sequence[pd.DataFrame], metric: str, part: str = "test"
) -> pd.DataFrame:
    """Align per-user tables of matching seeds: columns seed, user_idx, base, befa.

    ``base[k]`` and ``befa[k]`` must come from the same seed (the k-th). Users missing
    from one side (they should not be: same split) are dropped, never zero-filled."""
    if len(base) != len(befa):
        raise ValueError(f"paired test needs as many base runs as +BeFA runs (got {len(base)} and {len(befa)})")
    frames = []
    for seed, (b, a) in enumerate(zip(base, befa)):
        for name, f in (("base", b), ("+BeFA", a)):
            if metric not in f.columns:
                raise ValueError(f"per-user table ({name}, seed #{seed}) lacks {metric!r}; has {list(f.columns)}")
        bb = b[b["part"] == part][["user_idx", metric]].rename(columns={metric: "base"})
        aa = a[a["part"] == part][["user_idx", metric]].rename(columns={metric: "befa"})
        m = bb.merge(aa, on="user_idx", how="inner")
        m.insert(0, "seed", seed)
        frames.append(m)
    if not frames:
        return pd.DataFrame(columns=["seed", "user_idx", "base", "befa"])
    return pd.concat(frames, ignore_index=True)


def paired_test(pairs: pd.DataFrame, metric: str, pooling: Pooling = "user_mean") -> PairedTest:
    """t-test and Wilcoxon on the pooled per-user differences (see the module docstring)."""
    from scipy import stats

    if pooling == "user_mean":
        pooled = pairs.groupby("user_idx")[["base", "befa"]].mean()
    elif pooling == "concat":
        pooled = pairs[["base", "befa"]]
    else:
        raise ValueError(f"pooling must be 'user_mean' or 'concat', got {pooling!r}")
    b = pooled["base"].to_numpy(float)
    a = pooled["befa"].to_numpy(float)
    d = a - b
    n = int(d.size)
    nonzero = int(np.count_nonzero(d))
    t_stat = p_t = w_stat = p_w = None
    if n >= 2 and np.any(d != d.mean()):  # t-test undefined when every difference is equal
        res = stats.ttest_rel(a, b)
        t_stat, p_t = float(res.statistic), float(res.pvalue)
    elif n >= 1 and nonzero == 0:
        p_t = 1.0  # identical arms: no evidence of any difference
    if nonzero >= 1:
        res = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
        w_stat, p_w = float(res.statistic), float(res.pvalue)
    elif n >= 1:
        p_w = 1.0
    return PairedTest(
        metric=metric,
        pooling=pooling,
        n_pairs=n,
        n_nonzero=nonzero,
        n_seeds=int(pairs["seed"].nunique()) if len(pairs) else 0,
        mean_base=float(b.mean()) if n else math.nan,
        mean_befa=float(a.mean()) if n else math.nan,
        mean_diff=float(d.mean()) if n else math.nan,
        t_stat=t_stat,
        p_ttest=p_t,
        w_stat=w_stat,
        p_wilcoxon=p_w,
        wins=int((d > 0).sum()),
        losses=int((d < 0).sum()),
    )


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None and is not counted)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and p == p]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        adj = min(1.0, (m - rank) * float(pvalues[i]))
        running = max(running, adj)  # monotone: an adjusted p never falls below an earlier one
        out[i] = running
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray([v for v in values if v is not None and v == v], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def significance_label(p: float | None, alpha: float = 0.05) -> str:
    if p is None or p != p:
        return "n/a"
    return f"p={p:.3g}" + (" *" if p < alpha else "")
