"""The report's selection-bias line: from the search's own trials, the +BeFA gain the study would
report if each arm's winner were picked on TEST, as the paper's code does (MMRec's quick start
keeps the configuration with the best test Recall@20, at each run's best valid epoch), next to
the gain with the winners the study picked on VALID.

This is the one place that reads the search trials' test metrics (each run's ``run.json``
``test``), after every decision is made, for this line only: nothing here feeds a decision,
and the search's selection (``pipeline.study.search.select_on_valid``) never sees them. Both
gains come from the same trials (the first seed; complete trials only, a pruned trial stopped
half-trained), so the gap between them is what picking on test adds.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.evaluation.metrics import SELECTION_METRIC
from pipeline.study.rows import SelectionBiasRow
from pipeline.training.record import RunRecord

METRICS = ("recall@20", "ndcg@20")


def trial_test_metrics(search: dict[str, Any]) -> dict[int, dict[str, float]]:
    """Trial index -> its run's test metrics (at its best valid epoch), complete trials only."""
    return {
        i: dict(RunRecord.load(t["run_dir"]).test)
        for i, t in enumerate(search["trials"])
        if t.get("state", "complete") == "complete"
    }


def pick_on_test(tests: dict[int, dict[str, float]], metric: str = SELECTION_METRIC) -> int:
    """The trial the paper's code would keep: the best TEST metric (first one wins ties). For
    the counterfactual only: the study's own winner is ``select_on_valid``'s."""
    best_i, best_v = next(iter(tests)), -math.inf
    for i, m in tests.items():
        v = m.get(metric, math.nan)
        if v > best_v:
            best_i, best_v = i, v
    return best_i


def _gain(base: float | None, befa: float | None) -> float | None:
    return None if base is None or befa is None or base == 0 else befa / base - 1


def gains_if_picked_on_test(
    searches: dict[tuple[str, str], dict[str, Any]], models: list[str]
) -> list[SelectionBiasRow]:
    """Per model and metric: base vs +BeFA at each arm's valid-picked winner and at its test-picked trial."""
    rows = []
    for model in models:
        base, befa = searches.get((model, "none")), searches.get((model, "befa"))
        if base is None or befa is None:
            continue
        tests = {"none": trial_test_metrics(base), "befa": trial_test_metrics(befa)}
        if not tests["none"] or not tests["befa"]:
            continue
        on_valid = {"none": tests["none"][base["winner"]], "befa": tests["befa"][befa["winner"]]}
        on_test = {a: tests[a][pick_on_test(tests[a])] for a in tests}
        for metric in METRICS:
            vb, va = on_valid["none"].get(metric), on_valid["befa"].get(metric)
            tb, ta = on_test["none"].get(metric), on_test["befa"].get(metric)
            rows.append(
                SelectionBiasRow(
                    model=model,
                    metric=metric,
                    trials_base=len(tests["none"]),
                    trials_befa=len(tests["befa"]),
                    valid_picked_base=vb,
                    valid_picked_befa=va,
                    valid_picked_gain=_gain(vb, va),
                    test_picked_base=tb,
                    test_picked_befa=ta,
                    test_picked_gain=_gain(tb, ta),
                )
            )
    return rows
