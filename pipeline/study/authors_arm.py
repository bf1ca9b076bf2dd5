"""The authors' arm: LATTICE as the authors ran it, the adapter's effect apart from the change of model.

The authors' one public BeFA model, ``LATTICE_BeFA.py`` in fqldom/BeFA, is MGCN's skeleton
without the fuser and InfoNCE, not LATTICE, so the paper's LATTICE row may mix the adapter
with a change of architecture. This phase trains three models with every study seed, on the
main split with every modality:

  (a) ``lattice``: base LATTICE;
  (b) ``authors_befa``: MGCN ``befa.variant="authors"`` + BeFA, the authors' "LATTICE_BeFA";
  (c) ``authors_purifier``: the same skeleton with MGCN's plain purifier gate, no adapter
      (``skeleton="authors"``, ``models.mgcn``): the architecture control.

Configurations (:func:`arm_configurations`, recorded in the report):

- (a) the main table's LATTICE base search winner when the study searched LATTICE (its runs
  are the main table's, reused, not trained again); else LATTICE's defaults under the
  study's fixed overrides.
- (b) and (c) share MGCN's **+BeFA** search winner's hyper-parameters (every key but the
  adapter's: lr, reg, ...; ``cl_weight`` is unread by the skeleton), and (b) takes that
  winner's ``befa.*`` values too, so (b) and (c) differ in the gate alone. The +BeFA winner,
  not the base one, because the authors' model is a +BeFA configuration (their search was
  over +BeFA models). Without an MGCN search, both take MGCN's defaults.

Comparisons (:func:`authors_arm_result`), each a paired per-user test over the test users
(``pipeline.study.stats``, per-user differences averaged over seeds as in the main table),
Wilcoxon p-values Holm-adjusted over the three comparisons and both headline metrics:

  (b) vs (a): what the paper's LATTICE row reports, the adapter and the change of architecture together;
  (b) vs (c): the adapter on the authors' skeleton;
  (c) vs (a): the change of architecture, without any adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from pipeline.study.analysis import per_user
from pipeline.study.params import StudyParams
from pipeline.study.phases import StudyContext
from pipeline.study.report.tables import HEADLINE
from pipeline.study.rows import AuthorsArm, AuthorsArmRow, AuthorsComparisonRow
from pipeline.study.runner import RunSpec
from pipeline.study.stats import holm, mean_std, paired_frame, paired_test
from pipeline.training.record import RunRecord

EXPERIMENT = "authors_arm"


class Arm(NamedTuple):
    key: str
    label: str
    model: str


ARMS = (
    Arm("lattice", "(a) LATTICE", "lattice"),
    Arm("authors_befa", "(b) authors' skeleton +BeFA (their LATTICE_BeFA)", "mgcn"),
    Arm("authors_purifier", "(c) authors' skeleton, purifier gate", "mgcn"),
)
LETTER = {"lattice": "(a)", "authors_befa": "(b)", "authors_purifier": "(c)"}
# (arm, reference, what the difference isolates)
COMPARISONS = (
    ("authors_befa", "lattice", "the paper's LATTICE row: the adapter and the change of architecture together"),
    ("authors_befa", "authors_purifier", "the adapter on the authors' skeleton"),
    ("authors_purifier", "lattice", "the change of architecture (no adapter in either)"),
)


@dataclass
class AuthorsRuns:
    """What the phase queued: each arm's configuration, its source, and its records (one per seed,
    in the order of the study's seeds; filled when the phase's batch runs)."""

    configurations: dict[str, dict[str, Any]]
    sources: dict[str, str]
    runs: dict[str, list[RunRecord]]


def _adapter_key(key: str) -> bool:
    return key in ("adapter", "befa") or key.startswith("befa.")


def arm_configurations(
    params: StudyParams, searches: dict[tuple[str, str], dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(arm -> config overrides, arm -> where they came from); see the module docstring."""
    lattice = searches.get(("lattice", "none"))
    if lattice is not None:
        a, source_a = dict(lattice["winner_overrides"]), "LATTICE's base search winner (the main table's runs)"
    else:
        a = {**params.fixed_overrides("lattice"), "adapter": "none"}
        source_a = "LATTICE's defaults (the study did not search LATTICE)"
    mgcn = searches.get(("mgcn", "befa"))
    if mgcn is not None:
        start, source = mgcn["winner_overrides"], "MGCN's +BeFA search winner"
    else:
        start, source = params.fixed_overrides("mgcn"), "MGCN's defaults (the study did not search MGCN)"
    shared = {k: v for k, v in start.items() if not _adapter_key(k)}
    befa = {k: v for k, v in start.items() if _adapter_key(k) and k != "adapter"}
    configurations = {
        "lattice": a,
        "authors_befa": {**shared, "adapter": "befa", **befa, "befa.variant": "authors"},
        "authors_purifier": {**shared, "adapter": "none", "skeleton": "authors"},
    }
    sources = {
        "lattice": source_a,
        "authors_befa": f"{source}: its shared hyper-parameters and its befa.* values",
        "authors_purifier": f"{source}: its shared hyper-parameters (those of (b) but the adapter's)",
    }
    return configurations, sources


def authors_arm_phase(ctx: StudyContext, searches: dict[tuple[str, str], dict[str, Any]]) -> AuthorsRuns | None:
    """Queue the three arms x the study's seeds (None when ``authors_arm`` is off)."""
    p = ctx.params
    if not p.runs_authors_arm:
        return None
    configurations, sources = arm_configurations(p, searches)
    runs: dict[str, list[RunRecord]] = {}
    for arm in ARMS:
        ctx.log(f"authors' arm {arm.label}: {len(p.seeds)} seeds ({sources[arm.key]})")
        runs[arm.key] = ctx.queue_seeds(p.seeds, _spec_of(ctx, arm, configurations[arm.key]))
    return AuthorsRuns(configurations, sources, runs)


def _spec_of(ctx: StudyContext, arm: Arm, overrides: dict[str, Any]):  # type: ignore[no-untyped-def]
    return lambda seed: RunSpec(
        model=arm.model,
        overrides=overrides,
        modalities=ctx.modalities,
        split=ctx.split.path,
        seed=seed,
        experiment=EXPERIMENT,
        setting=arm.key,
    )


def _arm_rows(runs: AuthorsRuns) -> list[AuthorsArmRow]:
    rows = []
    for arm in ARMS:
        recs = runs.runs.get(arm.key, [])
        if not recs:
            continue
        adapter = runs.configurations[arm.key].get("adapter", "none")
        for metric in HEADLINE:
            mean, std = mean_std([r.test.get(metric) for r in recs])
            rows.append(
                AuthorsArmRow(
                    arm=arm.key,
                    label=arm.label,
                    model=arm.model,
                    adapter=adapter,
                    metric=metric,
                    mean=mean,
                    std=std,
                    seeds=len(recs),
                )
            )
    return rows


def authors_arm_result(runs: AuthorsRuns, pooling: str, alpha: float) -> AuthorsArm:
    """The arms' mean ± std and the three paired comparisons (Holm over comparisons x metrics)."""
    arms = _arm_rows(runs)
    means = {(r.arm, r.metric): r.mean for r in arms}
    tables = {key: [per_user(r.run_dir) for r in recs] for key, recs in runs.runs.items()}
    comparisons = []
    for arm, reference, isolates in COMPARISONS:
        n = min(len(tables.get(arm, [])), len(tables.get(reference, [])))
        if not n:
            continue
        for metric in HEADLINE:
            pairs = paired_frame(tables[reference][:n], tables[arm][:n], metric)  # "befa" = the arm
            ref_mean = means[(reference, metric)]
            comparisons.append(
                AuthorsComparisonRow(
                    comparison=f"{LETTER[arm]} vs {LETTER[reference]}",
                    arm=arm,
                    reference=reference,
                    isolates=isolates,
                    metric=metric,
                    relative_gain=(means[(arm, metric)] - ref_mean) / ref_mean if ref_mean else None,
                    test=paired_test(pairs, metric, pooling),  # type: ignore[arg-type]
                )
            )
    for row, p in zip(comparisons, holm([c.test.p_wilcoxon for c in comparisons])):
        row.p_wilcoxon_holm, row.significant = p, p is not None and p < alpha
    return AuthorsArm(configurations=runs.configurations, sources=runs.sources, arms=arms, comparisons=comparisons)
