"""The selection-bias line and table of the study report (rows: ``pipeline.study.selection_bias``):
the +BeFA gain from the search's own trials with each arm's winner picked on VALID (the
study's rule) and on TEST (the paper's code), which both the markdown and the HTML report render.
"""

from __future__ import annotations

from pipeline.study.report.tables import StudyData, fmt_num
from pipeline.study.rows import SelectionBiasRow

SELECTION_BIAS_HEAD = [
    "model",
    "metric",
    "trials base / +BeFA",
    "base (valid-picked)",
    "+BeFA (valid-picked)",
    "gain, picked on valid",
    "base (test-picked)",
    "+BeFA (test-picked)",
    "gain, picked on test",
]


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:+.2f}%"


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def selection_bias_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    rows = [
        [
            r.model,
            r.metric,
            f"{r.trials_base} / {r.trials_befa}",
            fmt_num(r.valid_picked_base),
            fmt_num(r.valid_picked_befa),
            _pct(r.valid_picked_gain),
            fmt_num(r.test_picked_base),
            fmt_num(r.test_picked_befa),
            _pct(r.test_picked_gain),
        ]
        for r in data.selection_bias
    ]
    return SELECTION_BIAS_HEAD, rows


def _means(rows: list[SelectionBiasRow], metric: str) -> tuple[float | None, float | None]:
    picked = [r for r in rows if r.metric == metric]
    return _mean([r.valid_picked_gain for r in picked]), _mean([r.test_picked_gain for r in picked])


def selection_bias_line(data: StudyData) -> str:
    """One sentence: the mean gain over models picked on test, next to picked on valid ("" for older studies)."""
    rows = data.selection_bias
    if not rows:
        return ""
    (rv, rt), (nv, nt) = _means(rows, "recall@20"), _means(rows, "ndcg@20")
    gap = [None if t is None or v is None else t - v for v, t in ((rv, rt), (nv, nt))]
    models = len({r.model for r in rows})
    return (
        f"Selection bias, from the search's own trials (seed {data.params.seeds[0]}, complete trials): with "
        f"each arm's winner picked on TEST, as the paper's code does, the mean +BeFA gain over {models} "
        f"model(s) would be {_pct(rt)} Recall@20 / {_pct(nt)} NDCG@20; picked on VALID, as this study does, "
        f"{_pct(rv)} / {_pct(nv)}. Picking on test moves the mean gain by {_points(gap[0])} / {_points(gap[1])}."
    )


def _points(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:+.2f} points"


def search_note(data: StudyData) -> str:
    """How the search picked its trials (under the search table)."""
    p = data.params
    prune = (
        f"a median pruner on valid Recall@20 after {p.prune_warmup} epochs (pruned trials never win)"
        if p.prune_warmup is not None
        else "no pruning"
    )
    lr = f"lr in {p.lr_grid} in both arms" if p.lr_grid else "lr at each model's default"
    return (
        f"Optuna TPE sampler seeded with {p.search_seed}, maximising valid Recall@20; the first trial is the "
        f"model's default configuration; base and +BeFA get the same number of trials; {lr}; {prune}."
    )
