"""The study's experiment phases, each on a :class:`StudyContext` (``pipeline.study.run``
calls them in order): the valid-only search, the main table, the decoupling-space sweep,
the modality ablation, the sparsity sweep, the item cold start and the inspection of what
BeFA changes.

Each phase queues its independent runs (:meth:`StudyContext.queue_seeds`); they run as one
batch when the phase ends (:meth:`StudyContext.run_batch`, called by ``pipeline.study.run``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.data.catalog import Catalog
from pipeline.data.splits import Split, split_cold_items
from pipeline.data.summary import IngestSummary, SplitSummary
from pipeline.features.bundle import FeatureBundle
from pipeline.features.summary import FeaturesSummary
from pipeline.settings import Settings
from pipeline.study.analysis import Runs, result_rows
from pipeline.study.inspect import inspect_adapter
from pipeline.study.params import ADAPTERS, StudyParams
from pipeline.study.runner import RunSpec, StudyRunner
from pipeline.study.search_space import trial_budget
from pipeline.study.tuning import run_searches
from pipeline.training.floor_check import FLOOR_MODEL
from pipeline.training.record import RunRecord
from storage.atomic import write_json
from storage.keys import modality_order


@dataclass
class StudyContext:
    """What every phase reads: parameters, the prepared data, the runner, the results so far."""

    params: StudyParams
    settings: Settings
    folder: Path
    log: Callable[[str], None]
    ingest: IngestSummary
    extract: FeaturesSummary
    split: SplitSummary
    catalog: Catalog
    features: FeatureBundle
    runner: StudyRunner
    rows: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cold_runs: Runs = field(default_factory=dict)  # (model, adapter) -> records on the cold-items split
    cold_split_id: str | None = None
    queued: list[tuple[RunSpec, dict[str, Any], list[RunRecord]]] = field(
        default_factory=list
    )  # the phase's batch so far

    @property
    def modalities(self) -> list[str]:
        return sorted(self.features.features)

    def queue_seeds(
        self, seeds: list[int], spec_of_seed: Callable[[int], RunSpec], extra: dict[str, Any] | None = None
    ) -> list[RunRecord]:
        """Queue one run per seed in the phase's batch; returns the list their records fill when
        the batch runs (at the end of the phase, :meth:`run_batch`)."""
        recs: list[RunRecord] = []
        self.queued.extend((spec_of_seed(seed), extra or {}, recs) for seed in seeds)
        return recs

    def run_batch(self) -> None:
        """Train (or reuse) the queued runs as one batch (spread on Ray with ``cluster``); their
        rows join the results table in the order they were queued, as if trained one by one."""
        queued, self.queued = self.queued, []
        for (spec, extra, recs), rec in zip(queued, self.runner.run_many([spec for spec, _, _ in queued])):
            self.rows.extend(result_rows(rec, spec, extra))
            recs.append(rec)


def search_all(ctx: StudyContext) -> dict[tuple[str, str], dict[str, Any]]:
    """Phase 1: the valid-only search of every (model, adapter) (``pipeline.study.tuning``: seeded
    TPE, pruning on valid Recall@20): one trial of every search per batch, or, with a time budget
    (``max_minutes``), each search's trials one after another."""
    p, keys = ctx.params, [(model, adapter) for model in ctx.params.models for adapter in ADAPTERS]
    for model, adapter in keys:
        ctx.log(f"search {model} {adapter} ({trial_budget(p, model)} trials, TPE sampler, search_seed={p.search_seed})")
    searches = run_searches(ctx.runner, keys, ctx.split.path, ctx.modalities)
    write_json(
        ctx.folder / "search.json",
        json.loads(json.dumps({f"{m}/{a}": s for (m, a), s in searches.items()}, default=str)),
    )
    return searches


def main_table(ctx: StudyContext, searches: dict[tuple[str, str], dict[str, Any]]) -> Runs:
    """Phase 2: every search winner with every seed; first MostPop, the floor the verdict and
    every table compare against (one evaluation: it has nothing to train and no seed)."""
    main_runs: Runs = {}
    main_runs[(FLOOR_MODEL, "none")] = ctx.queue_seeds(
        ctx.params.seeds[:1],
        lambda seed: RunSpec(
            model=FLOOR_MODEL,
            overrides={"adapter": "none"},
            modalities=[],
            split=ctx.split.path,
            seed=seed,
            experiment="floor",
            setting="main",
        ),
    )
    for (model, adapter), s in searches.items():
        ctx.log(f"main {model} {adapter}: {len(ctx.params.seeds)} seeds")
        overrides = s["winner_overrides"]
        main_runs[(model, adapter)] = ctx.queue_seeds(
            ctx.params.seeds,
            lambda seed: RunSpec(
                model=model,
                overrides=overrides,
                modalities=ctx.modalities,
                split=ctx.split.path,
                seed=seed,
                experiment="main",
                setting="main",
            ),
        )
    return main_runs


def _winners(
    ctx: StudyContext, searches: dict[tuple[str, str], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    focus = ctx.params.focus_model
    return searches[(focus, "none")]["winner_overrides"], searches[(focus, "befa")]["winner_overrides"]


def sweep_t(ctx: StudyContext, searches: dict[tuple[str, str], dict[str, Any]], main_runs: Runs) -> None:
    """Phase 3: the decoupling-space sweep of the focus model's +BeFA winner over ``befa.t``."""
    p = ctx.params
    if not p.sweep_t:
        return
    focus, seeds = p.focus_model, p.experiment_seed_list
    base_win, befa_win = _winners(ctx, searches)
    ctx.log(f"sweep {focus}: t in {p.sweep_t}")
    for t in p.sweep_t:
        ctx.queue_seeds(
            seeds,
            lambda seed: RunSpec(
                model=focus,
                overrides={**befa_win, "befa.t": float(t)},
                modalities=ctx.modalities,
                split=ctx.split.path,
                seed=seed,
                experiment="sweep_t",
                setting=f"t={t:g}",
            ),
        )
    ctx.run_batch()  # the sweep's rows first, then the base reference rows, as the report reads them
    for seed_rec, seed in zip(main_runs[(focus, "none")], p.seeds):
        if seed in seeds:  # the base reference line of the sweep plot
            spec = RunSpec(
                model=focus,
                overrides=base_win,
                modalities=ctx.modalities,
                split=ctx.split.path,
                seed=seed,
                experiment="sweep_t",
                setting="base",
            )
            ctx.rows.extend(result_rows(seed_rec, spec, {}))


def modality_ablation(ctx: StudyContext, searches: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Phase 4: image only, text only, both; base and +BeFA."""
    p = ctx.params
    for mods in p.modality_sets or []:
        if any(m not in ctx.modalities for m in mods):
            ctx.log(f"ablation: {'+'.join(mods)} skipped (the encoder gave {ctx.modalities})")
            continue
        label = "+".join(modality_order(mods))
        ctx.log(f"ablation {p.focus_model}: {label}")
        for win in _winners(ctx, searches):
            ctx.queue_seeds(
                p.experiment_seed_list,
                lambda seed: RunSpec(
                    model=p.focus_model,
                    overrides=win,
                    modalities=sorted(mods),
                    split=ctx.split.path,
                    seed=seed,
                    experiment="ablation",
                    setting=label,
                ),
            )


def sparsity_sweep(ctx: StudyContext, searches: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Phase 5: a fraction of each user's train interactions (valid and test unchanged)."""
    p = ctx.params
    if not p.train_fractions:
        return
    full = Split.load(ctx.split.path)
    for frac in p.train_fractions:
        path = (
            ctx.split.path
            if frac >= 1.0
            else str(full.subsample_train(frac, seed=p.split_seed).save(ctx.folder / "splits"))
        )
        ctx.log(f"sparsity {p.focus_model}: {frac:.0%} of train")
        for win in _winners(ctx, searches):
            ctx.queue_seeds(
                p.experiment_seed_list,
                lambda seed: RunSpec(
                    model=p.focus_model,
                    overrides=win,
                    modalities=ctx.modalities,
                    split=path,
                    seed=seed,
                    experiment="sparsity",
                    setting=f"train={frac:.0%}",
                ),
                {"train_fraction": frac},
            )


def cold_items_phase(ctx: StudyContext, searches: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Phase 6: every model's base and +BeFA winners on the item cold-start split."""
    p = ctx.params
    if not p.cold_fraction:
        return
    split = split_cold_items(ctx.catalog, p.cold_fraction, seed=p.split_seed, k_core=p.k_core)
    path = str(split.save(ctx.folder / "splits"))
    ctx.cold_split_id, setting = split.id, f"cold={p.cold_fraction:.0%}"
    for model in p.models:
        for adapter in ADAPTERS:
            ctx.log(
                f"cold items {model} {adapter}: {split.cold_items.size} cold items, {len(p.experiment_seed_list)} seeds"
            )
            win = searches[(model, adapter)]["winner_overrides"]
            ctx.cold_runs[(model, adapter)] = ctx.queue_seeds(
                p.experiment_seed_list,
                lambda seed: RunSpec(
                    model=model,
                    overrides=win,
                    modalities=ctx.modalities,
                    split=path,
                    seed=seed,
                    experiment="cold_items",
                    setting=setting,
                ),
            )


def inspect(ctx: StudyContext, main_runs: Runs) -> dict[str, Any]:
    """Phase 7: what BeFA changes (gates, cosines, top-10 of base vs +BeFA), first seed."""
    p, focus = ctx.params, ctx.params.focus_model
    return inspect_adapter(
        base_run=main_runs[(focus, "none")][0].run_dir,
        befa_run=main_runs[(focus, "befa")][0].run_dir,
        catalog=ctx.catalog,
        split_path=ctx.split.path,
        features=ctx.features,
        out_dir=ctx.folder,
        n_items=p.inspect_items,
        n_users=p.inspect_users,
        seed=p.search_seed,
        device=p.device,
    )
