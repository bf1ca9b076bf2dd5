"""The authors' arm in the study report (rows: ``pipeline.study.authors_arm``): LATTICE as the
authors ran it. A note on what each comparison isolates, a sentence with what it found, a table
of the three models and one of the three paired comparisons; the markdown and the HTML report
render them alike.
"""

from __future__ import annotations

import json

from pipeline.study.report.tables import StudyData, fmt_num

AUTHORS_ARM_NOTE = (
    "The authors' one public BeFA model (LATTICE_BeFA.py) is MGCN's skeleton without the fuser and InfoNCE, "
    "not LATTICE, so the paper's LATTICE row may mix the adapter with a change of architecture. Three models, "
    'every seed: (a) base LATTICE; (b) that skeleton + BeFA, the authors\' "LATTICE_BeFA"; (c) the same '
    "skeleton with MGCN's plain purifier gate and no adapter, the architecture control. (b) vs (a) is what the "
    "paper's LATTICE row compares: the adapter and the change of architecture together; (b) vs (c) isolates "
    "the adapter on the authors' skeleton; (c) vs (a) isolates the change of architecture. Paired Wilcoxon over "
    "test users (per-user differences averaged over seeds), Holm-adjusted over the three comparisons and both "
    "metrics."
)
# the sentence's order: the adapter, the architecture, then both (the paper's row)
SENTENCE = (
    ("(b) vs (c)", "the adapter on the authors' skeleton"),
    ("(c) vs (a)", "the change of architecture"),
    ("(b) vs (a)", "both together, the paper's LATTICE comparison"),
)


def _pct(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v * 100:+.2f}%"


def _p(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:.3g}"


def authors_arm_sentence(data: StudyData) -> str:
    """What the arm found on test Recall@20, comparison by comparison (empty when it did not run)."""
    arm = data.authors_arm
    if arm is None:
        return ""
    found = {(c.comparison, c.metric): c for c in arm.comparisons}
    parts = []
    for comparison, what in SENTENCE:
        c = found.get((comparison, "recall@20"))
        if c is not None:
            verdict = "significant" if c.significant else "not significant"
            parts.append(f"{what} ({comparison}): {_pct(c.relative_gain)} (Holm p {_p(c.p_wilcoxon_holm)}, {verdict})")
    return ("Test Recall@20 at the best valid epoch: " + "; ".join(parts) + ".") if parts else ""


def authors_arms_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """The three models: configuration, where it came from, test mean ± std over seeds."""
    head = ["arm", "model", "configuration", "configuration from", "recall@20", "ndcg@20", "seeds"]
    arm = data.authors_arm
    if arm is None:
        return head, []
    cells = {(r.arm, r.metric): f"{fmt_num(r.mean)} ± {fmt_num(r.std)}" for r in arm.arms}
    rows = []
    for key in dict.fromkeys(r.arm for r in arm.arms):
        first = next(r for r in arm.arms if r.arm == key)
        rows.append(
            [
                first.label,
                first.model,
                json.dumps(arm.configurations.get(key, {}), sort_keys=True),
                arm.sources.get(key, "-"),
                cells.get((key, "recall@20"), "-"),
                cells.get((key, "ndcg@20"), "-"),
                str(first.seeds),
            ]
        )
    return head, rows


def authors_comparisons_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """The three paired comparisons per metric, with what each isolates."""
    head = ["comparison", "isolates", "metric", "relative gain", "Wilcoxon p", "Holm p", "users +/-", "significant"]
    arm = data.authors_arm
    rows = [
        [
            c.comparison,
            c.isolates,
            c.metric,
            _pct(c.relative_gain),
            _p(c.test.p_wilcoxon),
            _p(c.p_wilcoxon_holm),
            f"{c.test.wins}/{c.test.losses}",
            "yes" if c.significant else "no",
        ]
        for c in (arm.comparisons if arm is not None else [])
    ]
    return head, rows
