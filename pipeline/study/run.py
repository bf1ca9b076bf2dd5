"""The BeFA study: does the adapter help on *this* catalog, where, by how much, at what cost.

:func:`run_study` (``befa study``) reads as its phases, in order:

1. ingest / extract / split with the full pipeline's own steps (``pipeline.job.run``);
2. **search** (VALID only): per content model and adapter (base, +BeFA), up to
   ``max_trials`` configurations (and at most ``max_minutes`` per search) drawn from the
   model's documented grid (``Model.GRID``), crossed for +BeFA with ``befa_grid``
   (``befa.t`` x ``befa.dropout``, the authors' t and dropout grid). The model's default
   configuration is always tried first; if the grid holds more points than the budget,
   the rest are a seeded random sample of the grid (random search). Base and +BeFA get the
   *same* number of trials and the same model hyper-parameters trial by trial
   (:func:`search_plan`), +BeFA adding a sampled t and dropout to each. The winner is the trial with the best valid
   Recall@20 at its best epoch (``pipeline.study.search.select_on_valid``; test metrics of the
   trials are never read). Trials run with the first seed;
3. **main table**: the winner of each (model, adapter) is trained with every seed
   (the first-seed run is the search trial itself, not repeated); test metrics at the
   best valid epoch, mean ± std over seeds; relative gain of +BeFA; paired per-user
   significance tests (``pipeline.study.stats``, Holm-adjusted over models x metrics);
   parameter overhead with and without the raw feature tables; seconds per training epoch;
4. **decoupling-space sweep**: +BeFA winner of ``focus_model`` with ``befa.t`` in
   ``sweep_t`` (0.125 ... 8), every seed;
5. **modality ablation**: image only, text only, both (base and +BeFA, every seed);
6. **sparsity sweep**: 100 / 50 / 25 % of each user's train interactions
   (``Split.subsample_train``; valid and test unchanged), base and +BeFA, every seed;
7. **item cold start** (``cold_fraction``, default 0.2): the cold-items split
   (``pipeline.data.splits.split_cold_items``, seeded with ``split_seed``: that share of
   the items has every interaction in valid/test, none in train); every model's base and
   +BeFA search winners (searched on the main split), every experiment seed; paired
   per-user tests as in the main table (Holm over models x metrics);
8. **what BeFA changes** (``pipeline.study.inspect``): gate heatmaps, cosine histograms,
   top-10 of base vs +BeFA for a few users with posters;

Every run also records its metrics by item group (warm, cold, long tail: the least
popular 80% of items by train popularity; ``pipeline.evaluation.groups``); the report has
a per-group table for the main table and the cold-start phase, with paired per-user tests
on each group's users (``pipeline.study.item_groups``).

9. the report (``pipeline.study.report.write``): ``report.html``, ``report.md``,
   ``results.parquet``, PNG plots.

Runs are content-addressed: ``runs/<model>-<adapter>-<hash>-s<seed>`` where the hash covers
the model config, the modalities, the split and the training budget; a run that already
finished is reused (a study interrupted and restarted resumes, and the sweep/ablation/
sparsity points that equal a main-table configuration are not trained twice).

Each phase queues its independent runs and hands them to the runner as one batch
(:meth:`StudyContext.run_batch`): one after another here, or with ``cluster`` one Ray task
each (``StudyRunner.run_many``); the results table is the same either way.

Folder: ``$BEFA_HOME/runs/studies/<name>/``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.data.catalog import Catalog
from pipeline.data.splits import Split, split_cold_items
from pipeline.data.summary import IngestSummary, SplitSummary
from pipeline.features.bundle import FeatureBundle
from pipeline.features.load import load_features
from pipeline.features.summary import FeaturesSummary
from pipeline.job.steps import extract_step, ingest_step, split_step
from pipeline.settings import Settings
from pipeline.study.analysis import (
    Runs,
    budget_notes,
    epoch_cap_count,
    floor_rows,
    gains_table,
    grid_size,
    overhead_rows,
    result_rows,
    results_frame,
    significance,
    summarise,
    user_groups,
    verdict,
)
from pipeline.study.inspect import inspect_adapter
from pipeline.study.item_groups import group_significance, group_table_rows
from pipeline.study.params import ADAPTERS, StudyError, StudyParams, StudyResult, validate_study
from pipeline.study.report.tables import RunCounts, StudyData
from pipeline.study.report.write import write_study_report
from pipeline.study.rows import ColdItems, SearchRow, SignificanceRow
from pipeline.study.runner import RunSpec, StudyRunner
from pipeline.study.search import run_search, search_result, search_trials
from pipeline.training.floor_check import FLOOR_MODEL
from pipeline.training.record import RunRecord
from storage.atomic import write_json
from storage.feature_store import FeatureStore


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


def study_folder(params: StudyParams, settings: Settings) -> Path:
    name = params.name or f"{params.dataset}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    return settings.runs_dir / "studies" / name


def run_study(
    params: StudyParams | dict[str, Any], settings: Settings, log: Callable[[str], None] | None = None
) -> StudyResult:
    """Run the whole study (see the module docstring) and write its report."""
    params = validate_study(params, settings)
    t_all = time.perf_counter()
    ctx = prepare(params, settings, log or (lambda msg: None))
    searches = _timed(ctx, "search", search_all, ctx)
    main_runs = _timed(ctx, "main", main_table, ctx, searches)
    _timed(ctx, "sweep_t", sweep_t, ctx, searches, main_runs)
    _timed(ctx, "ablation", modality_ablation, ctx, searches)
    _timed(ctx, "sparsity", sparsity_sweep, ctx, searches)
    _timed(ctx, "cold_items", cold_items_phase, ctx, searches)
    inspection = _timed(ctx, "inspect", inspect, ctx, main_runs)
    return report(ctx, searches, main_runs, inspection, t_all)


def _timed(ctx: StudyContext, name: str, phase: Callable[..., Any], *args: Any) -> Any:
    """One phase: it queues its independent runs, then they run as one batch."""
    start = time.perf_counter()
    out = phase(*args)
    ctx.run_batch()
    ctx.timings[name] = time.perf_counter() - start
    return out


def prepare(params: StudyParams, settings: Settings, log: Callable[[str], None]) -> StudyContext:
    """Ingest, extract and split with the pipeline's own steps; load the features once."""
    folder = study_folder(params, settings)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "params.json", params.model_dump(mode="json"))
    pp = params.pipeline_params()
    ingest = ingest_step(pp, settings)
    extract = extract_step(pp, settings, ingest.catalog_dir)
    log(
        "extract: "
        + ", ".join(
            f"{m} {f.encoded} encoded / {f.skipped} reused ({f.weights})" for m, f in extract.modalities.items()
        )
    )
    split = split_step(pp, ingest.catalog_dir)
    catalog = Catalog.load(ingest.catalog_dir)
    features = load_features(
        catalog, FeatureStore(settings.feature_store), extract.fingerprints, snapshots=extract.snapshots
    )
    if not features.features:
        raise StudyError("the encoder produced no content features; BeFA needs at least one modality")
    runner = StudyRunner(params, settings, folder, ingest.catalog_dir, features, log)
    timings = {"ingest": ingest.seconds, "extract": extract.seconds, "split": split.seconds}
    return StudyContext(
        params, settings, folder, log, ingest, extract, split, catalog, features, runner, timings=timings
    )


def search_all(ctx: StudyContext) -> dict[tuple[str, str], dict[str, Any]]:
    """Phase 1: the valid-only search of every (model, adapter): every search's trials in one
    batch, or, with a time budget (``max_minutes``), each search's trials one after another."""
    p, keys = ctx.params, [(model, adapter) for model in ctx.params.models for adapter in ADAPTERS]
    for model, adapter in keys:
        ctx.log(f"search {model} {adapter} (<= {p.max_trials} trials)")
    if p.max_minutes is not None:
        searches = {(m, a): run_search(ctx.runner, m, a, ctx.split.path, ctx.modalities) for m, a in keys}
    else:
        start = time.perf_counter()
        trials = {key: search_trials(p, *key, ctx.split.path, ctx.modalities) for key in keys}
        records = iter(ctx.runner.run_many([spec for key in keys for _, spec in trials[key]]))
        took = time.perf_counter() - start  # the batch's: its searches ran together
        searches = {
            key: search_result(p, *key, trials[key], [next(records) for _ in trials[key]], took) for key in keys
        }
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
        label = "+".join(sorted(mods))
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


def report(
    ctx: StudyContext,
    searches: dict[tuple[str, str], dict[str, Any]],
    main_runs: Runs,
    inspection: dict[str, Any],
    t_all: float,
) -> StudyResult:
    """Phase 8: the analysis, the verdict and the report files; returns the study's result."""
    p = ctx.params
    frame = results_frame(ctx.rows)
    summary = summarise(frame[frame["experiment"] == "main"], ["model", "adapter"])
    gains = gains_table(summary, p.models)
    sig = significance(main_runs, p.models, p.pooling, p.alpha)
    floor = floor_rows(main_runs, p.models)
    text = verdict(gains, sig, p.alpha, floor)
    cold_sig = significance(ctx.cold_runs, p.models, p.pooling, p.alpha) if ctx.cold_runs else []
    group_sig = group_significance({"main": main_runs, "cold_items": ctx.cold_runs}, p.models, p.pooling, p.alpha)
    ctx.timings["total"] = time.perf_counter() - t_all
    data = StudyData(
        title=f"BeFA study: {ctx.ingest.name}",
        params=p,
        dataset=ctx.ingest.dataset,
        split=ctx.split,
        features=ctx.extract.modalities,
        verdict=text,
        floor=floor,
        gains=gains,
        significance=sig,
        overhead=overhead_rows(main_runs, p.models),
        user_groups=user_groups(main_runs, p.models, Split.load(ctx.split.path).frame),
        item_groups=group_table_rows(frame, group_sig),
        cold_items=_cold_info(ctx, frame, cold_sig),
        searches=[_search_info(m, a, s) for (m, a), s in searches.items()],
        inspection=inspection,
        timings=ctx.timings,
        runs=RunCounts(
            trained=ctx.runner.trained,
            reused=ctx.runner.reused,
            train_seconds=ctx.runner.seconds,
            **dict(zip(("at_epoch_cap", "counted"), epoch_cap_count(frame, p))),
        ),
        notes=budget_notes(frame, p),
    )
    files = write_study_report(ctx.folder, frame, data)
    ctx.timings["total"] = time.perf_counter() - t_all
    result = StudyResult(
        folder=str(ctx.folder),
        params=p,
        verdict=text,
        main=summary.to_dict("records"),
        significance=sig,
        files={k: str(v) for k, v in files.items()},
        timings=ctx.timings,
        runs_trained=ctx.runner.trained,
        runs_reused=ctx.runner.reused,
    )
    write_json(ctx.folder / "study_result.json", json.loads(result.model_dump_json()))
    ctx.log(text)
    ctx.log(f"report: {files['report_html']}")
    return result


def _cold_info(ctx: StudyContext, frame: Any, sig: list[SignificanceRow]) -> ColdItems | None:
    """The cold-start phase for the report: its split, gains (mean ± std) and paired tests."""
    if not ctx.cold_runs:
        return None
    cold = frame[frame["experiment"] == "cold_items"]
    return ColdItems(
        cold_fraction=ctx.params.cold_fraction,
        split_id=ctx.cold_split_id,
        gains=gains_table(summarise(cold, ["model", "adapter"]), ctx.params.models),
        significance=sig,
    )


def _search_info(model: str, adapter: str, s: dict[str, Any]) -> SearchRow:
    return SearchRow(
        model=model,
        adapter=adapter,
        trials=len(s["trials"]),
        grid_size=grid_size(s["grid"]),
        winner=s["winner_overrides"],
        winner_valid_r20=s["trials"][s["winner"]]["valid"].get("recall@20"),
        seconds=s["seconds"],
    )
