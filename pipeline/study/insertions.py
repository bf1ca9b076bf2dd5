"""The insertion ablation: where BeFA acts, each model's +BeFA winner under each insertion.

``befa.insertion`` (``models.base.BeFAConfig``; docs/models-and-training.md, "Where BeFA acts")
puts the adapter's gate g_m(c_m) on the path the model scores with (``forward``, the default),
in its content loss terms only (``loss``, the earlier design) or on the content itself
(``content``, c_m * g_m(c_m)). For every study model and every insertion in ``insertions``
(default all three), this phase trains +BeFA with the main table's **+BeFA search winner's
configuration**, ``befa.insertion`` alone changed, with every study seed, queued as one batch
(issue 25 part 6 lets the ablation insertions take the forward winner's configuration instead
of a search of their own):

- the insertion the winner ran (``forward``: the search's default, unless the study's fixed
  overrides set another) is the main table's +BeFA runs, reused, not trained again;
- an insertion the model's config refuses is skipped and said so (MGCN has no ``loss``: its
  adapter replaces the purifier gate and it has no content loss term).

Rows (:func:`insertion_result`), per model x insertion x headline metric: test mean ± std over
the seeds, the paired per-user test against the model's base runs of the main table
(``pipeline.study.stats``; per-user differences averaged over seeds), Wilcoxon p Holm-adjusted
over the phase's family (models x insertions x metrics); and per modality, the gate health at
each run's best valid epoch (``RunRecord.best_gates``): the mean over seeds of the gate's mean,
spread over items and shares above 0.99 / below 0.01, and how many seeds collapsed. An arm whose
every gate collapsed in every seed is marked ``adapter_off``: the report states "BeFA's gate
collapsed: the adapter is off" for it instead of presenting its gain as BeFA's effect.

**Gate distributions** (:func:`gate_distributions`). ``run.json`` keeps the gate's statistics,
not its values, so the first seed's run of each arm is rebuilt from its folder
(``pipeline.training.api.load_trained``: its split, its features, ``best.safetensors``) and its
gate over every item computed from ``model.befa_inputs()`` in eval mode without autograd
(``adapters[m].gate(content)``; under ``content`` the gate reads c_m, as it does in training).
Each is kept as a histogram over [0, 1] (:data:`BINS` equal bins) and a few quantiles, so the
report's plot is redrawn from ``study.json`` without the models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models import make_config
from pipeline.study.analysis import per_user, result_rows
from pipeline.study.phases import StudyContext
from pipeline.study.report.tables import HEADLINE
from pipeline.study.rows import GateDistribution, InsertionAblation, InsertionArmRow, InsertionGateRow
from pipeline.study.runner import RunSpec
from pipeline.study.stats import holm, mean_std, paired_frame, paired_test
from pipeline.training.api import load_trained
from pipeline.training.record import RunRecord

EXPERIMENT = "insertions"
BINS = 50  # equal bins of the gate histograms over [0, 1]
Arm = tuple[str, str]  # (model, insertion)


@dataclass
class InsertionRuns:
    """What the phase queued: each arm's configuration and records (one per seed, in the order of the
    study's seeds), the model's base runs, which arms are the main table's, which were skipped and why."""

    insertions: list[str]
    configurations: dict[Arm, dict[str, Any]] = field(default_factory=dict)
    runs: dict[Arm, list[RunRecord]] = field(default_factory=dict)
    base: dict[str, list[RunRecord]] = field(default_factory=dict)  # model -> the main table's base runs
    reused: set[Arm] = field(default_factory=set)
    skipped: dict[Arm, str] = field(default_factory=dict)
    distributions: list[GateDistribution] = field(default_factory=list)


def refusal(model: str, overrides: dict[str, Any], insertion: str) -> str | None:
    """Why ``model`` refuses +BeFA with ``insertion`` under ``overrides`` (its config's own check), or None."""
    try:
        make_config(model, {**overrides, "adapter": "befa", "befa.insertion": insertion})
    except ValueError as exc:
        errors = getattr(exc, "errors", None)
        return str(errors()[0]["msg"]) if callable(errors) else str(exc)
    return None


def insertion_phase(
    ctx: StudyContext, searches: dict[tuple[str, str], dict[str, Any]], main_runs: dict[Arm, list[RunRecord]]
) -> InsertionRuns | None:
    """Queue every (model, insertion) arm x the study's seeds and run them as one batch, then the
    gate distributions of each arm's first seed (None when ``insertions`` is off)."""
    p = ctx.params
    if not p.insertions:
        return None
    out = InsertionRuns(insertions=list(p.insertions))
    for model in p.models:
        search = searches.get((model, "befa"))
        if search is None:
            continue
        winner = dict(search["winner_overrides"])
        ran = make_config(model, winner).befa.insertion
        out.base[model] = main_runs.get((model, "none"), [])
        base_winner = searches.get((model, "none"), {}).get("winner_overrides", {"adapter": "none"})
        _reference_rows(ctx, model, out.base[model], base_winner, "base")
        for insertion in p.insertions:
            arm, why = (model, insertion), refusal(model, winner, insertion)
            if why is not None:
                out.skipped[arm] = why
                ctx.log(f"insertions {model} {insertion}: skipped ({why})")
            elif insertion == ran and main_runs.get((model, "befa")):
                out.configurations[arm], out.runs[arm] = winner, main_runs[(model, "befa")]
                out.reused.add(arm)
                _reference_rows(ctx, model, out.runs[arm], winner, insertion)
                ctx.log(f"insertions {model} {insertion}: the main table's +BeFA runs")
            else:
                overrides = {**winner, "befa.insertion": insertion}
                out.configurations[arm] = overrides
                ctx.log(f"insertions {model} {insertion}: {len(p.seeds)} seeds (the +BeFA winner's configuration)")
                out.runs[arm] = ctx.queue_seeds(p.seeds, _spec_of(ctx, model, overrides, insertion))
    ctx.run_batch()
    out.distributions = gate_distributions(ctx, out)
    return out


def _spec_of(ctx: StudyContext, model: str, overrides: dict[str, Any], setting: str):  # type: ignore[no-untyped-def]
    return lambda seed: RunSpec(
        model=model,
        overrides=overrides,
        modalities=ctx.modalities,
        split=ctx.split.path,
        seed=seed,
        experiment=EXPERIMENT,
        setting=setting,
    )


def _reference_rows(
    ctx: StudyContext, model: str, recs: list[RunRecord], overrides: dict[str, Any], setting: str
) -> None:
    """The main table's runs of an arm, under this experiment too, so its results rows are whole."""
    for rec in recs:
        ctx.rows.extend(result_rows(rec, _spec_of(ctx, model, overrides, setting)(rec.seed), {}))


# -- gate distributions ---------------------------------------------------------------------
@torch.no_grad()
def gate_values(model: Any) -> dict[str, np.ndarray]:
    """modality -> the trained gate over every item (items x dimensions), eval mode, no autograd."""
    was_training = model.training
    model.eval()
    try:
        inputs = model.befa_inputs()
        return {m: model.adapters[m].gate(x.content).float().cpu().numpy() for m, x in inputs.items()}
    finally:
        model.train(was_training)


def distribution(model: str, insertion: str, modality: str, rec: RunRecord, values: np.ndarray) -> GateDistribution:
    """One gate's histogram over [0, 1] (values outside, impossible for a sigmoid, are clipped in) and quantiles."""
    flat = np.clip(values.reshape(-1).astype(np.float64), 0.0, 1.0)
    counts, _ = np.histogram(flat, bins=BINS, range=(0.0, 1.0))
    q05, q50, q95 = (float(q) for q in np.quantile(flat, [0.05, 0.5, 0.95]))
    return GateDistribution(
        model=model,
        insertion=insertion,
        modality=modality,
        seed=rec.seed,
        run_dir=str(rec.run_dir),
        counts=[int(c) for c in counts],
        values=int(flat.size),
        mean=float(flat.mean()),
        q05=q05,
        q50=q50,
        q95=q95,
    )


def gate_distributions(ctx: StudyContext, runs: InsertionRuns) -> list[GateDistribution]:
    """Each arm's first-seed run rebuilt from its folder, and its gate per modality (module docstring)."""
    out = []
    for (model, insertion), recs in runs.runs.items():
        if not recs:
            continue
        rec = recs[0]
        trained = load_trained(rec.run_dir, ctx.catalog, ctx.split.path, ctx.features, ctx.params.device)
        for modality, values in sorted(gate_values(trained.model).items()):
            out.append(distribution(model, insertion, modality, rec, values))
    return out


# -- rows -------------------------------------------------------------------------------------
def gate_rows(model: str, insertion: str, recs: list[RunRecord]) -> list[InsertionGateRow]:
    """Per modality, the gate health at each run's best valid epoch, averaged over the seeds."""
    by_modality: dict[str, list[Any]] = {}
    for rec in recs:
        for modality, stats in rec.best_gates.items():
            by_modality.setdefault(modality, []).append(stats)
    return [
        InsertionGateRow(
            model=model,
            insertion=insertion,
            modality=modality,
            mean=float(np.mean([s.mean for s in stats])),
            std_items=float(np.mean([s.std_items for s in stats])),
            share_high=float(np.mean([s.share_high for s in stats])),
            share_low=float(np.mean([s.share_low for s in stats])),
            collapsed_seeds=sum(s.collapsed for s in stats),
            seeds=len(stats),
        )
        for modality, stats in sorted(by_modality.items())
    ]


def collapsed_everywhere(recs: list[RunRecord], gates: list[InsertionGateRow]) -> tuple[bool, list[str]]:
    """(every gate collapsed in every seed: the adapter is off, the modalities collapsed in every seed)."""
    every = [g.modality for g in gates if g.seeds == len(recs) and g.collapsed_seeds == g.seeds]
    return bool(recs) and bool(gates) and len(every) == len(gates), every


def _arm_rows(runs: InsertionRuns, arm: Arm, gates: list[InsertionGateRow], pooling: str) -> list[InsertionArmRow]:
    model, insertion = arm
    recs, base = runs.runs[arm], runs.base.get(model, [])
    off, collapsed = collapsed_everywhere(recs, gates)
    inert = recs[0].befa_inert if recs and all(r.befa_inert for r in recs) else None
    off = off or inert is not None  # an inert adapter (a term weighted to nothing) is off too
    n = min(len(recs), len(base))
    tables = ([per_user(r.run_dir) for r in base[:n]], [per_user(r.run_dir) for r in recs[:n]])
    rows = []
    for metric in HEADLINE:
        mean, std = mean_std([r.test.get(metric) for r in recs])
        base_mean, base_std = mean_std([r.test.get(metric) for r in base])
        rows.append(
            InsertionArmRow(
                model=model,
                insertion=insertion,
                metric=metric,
                mean=mean,
                std=std,
                seeds=len(recs),
                base_mean=base_mean,
                base_std=base_std,
                relative_gain=(mean - base_mean) / base_mean if base_mean else None,
                reused=arm in runs.reused,
                test=paired_test(paired_frame(*tables, metric), metric, pooling) if n else None,  # type: ignore[arg-type]
                adapter_off=off,
                inert=inert,
                collapsed=collapsed,
            )
        )
    return rows


def insertion_result(runs: InsertionRuns, pooling: str, alpha: float) -> InsertionAblation:
    """The arms' rows (Holm over the phase's family), their gate health and gate distributions."""
    arms, gates = [], []
    for model in dict.fromkeys(m for m, _ in runs.runs):
        for insertion in runs.insertions:  # the asked order, model by model
            arm = (model, insertion)
            if arm in runs.runs and runs.runs[arm]:
                health = gate_rows(model, insertion, runs.runs[arm])
                gates += health
                arms += _arm_rows(runs, arm, health, pooling)
    for row, p in zip(arms, holm([a.test.p_wilcoxon if a.test else None for a in arms])):
        row.p_wilcoxon_holm, row.significant = p, p is not None and p < alpha
    return InsertionAblation(
        insertions=runs.insertions,
        configurations={f"{m}/{i}": c for (m, i), c in runs.configurations.items()},
        skipped={f"{m}/{i}": why for (m, i), why in runs.skipped.items()},
        arms=arms,
        gates=gates,
        distributions=runs.distributions,
    )
