"""The BeFA study: does the adapter help on *this* catalog, where, by how much, at what cost.

:func:`run_study` (``befa study``) reads as its phases, in order:

1. ingest / extract / split with the full pipeline's own steps (``pipeline.job.run``);
2. **search** (VALID only, ``pipeline.study.tuning``): per content model and adapter (base,
   +BeFA), an optuna study with a TPE sampler seeded by ``search_seed``, maximising valid
   Recall@20, over ``lr_grid`` (the authors' lr grid, both arms) x the model's documented grid
   (``Model.GRID``), crossed for +BeFA with ``befa_grid`` (``befa.t`` x ``befa.dropout``), each
   key a categorical of its grid values. The model's default configuration is the first trial
   (enqueued). Base and +BeFA get the *same* number of trials (``max_trials``, or the base
   space's size where smaller; at most ``max_minutes`` per search); a median pruner on the
   per-epoch valid Recall@20 stops weak trials after ``prune_warmup`` epochs (recorded
   ``pruned``, never reused as finished). The winner is the complete trial with the best valid
   Recall@20 at its best epoch (``pipeline.study.search.select_on_valid``; test metrics of the
   trials are never read, except afterwards by the report's selection-bias line,
   ``pipeline.study.selection_bias``). Trials run with the first seed;
3. **main table**: the winner of each (model, adapter) is trained with every seed
   (the first-seed run is the search trial itself, not repeated); test metrics at the
   best valid epoch, mean ± std over seeds; relative gain of +BeFA; paired per-user
   significance tests (``pipeline.study.stats``, Holm-adjusted over models x metrics);
   parameter overhead with and without the raw feature tables; seconds per training epoch;
   then the **insertion ablation** (``pipeline.study.insertions``; ``insertions``, default
   forward, loss and content): every model's +BeFA winner with each ``befa.insertion``, every
   seed (its own insertion, forward, is the main table's runs; MGCN has no loss), paired tests
   against base (Holm over the phase), gate health per modality and the trained gate's
   distribution per insertion (the first seed's runs rebuilt from their folders);
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
8. **LATTICE as the authors ran it** (``pipeline.study.authors_arm``; ``authors_arm``, on by
   default when the study compares LATTICE): base LATTICE, MGCN's authors skeleton + BeFA (the
   authors' "LATTICE_BeFA") and that skeleton with the purifier gate, every seed; paired tests
   of the adapter on that skeleton, of the change of architecture and of both (Holm over the three);
9. **what BeFA changes** (``pipeline.study.inspect``): gate heatmaps, cosine histograms,
   top-10 of base vs +BeFA for a few users with posters;

Every run also records its metrics by item group (warm, cold, long tail: the least
popular 80% of items by train popularity; ``pipeline.evaluation.groups``); the report has
a per-group table for the main table and the cold-start phase, with paired per-user tests
on each group's users (``pipeline.study.item_groups``).

10. the report (``pipeline.study.report.write``): ``report.html``, ``report.md``,
   ``results.parquet``, PNG plots.

Runs are content-addressed: ``runs/<model>-<adapter>-<hash>-s<seed>`` where the hash covers
the model config, the modalities, the split and the training budget; a run that already
finished is reused (a study interrupted and restarted resumes, and the sweep/ablation/
sparsity points that equal a main-table configuration are not trained twice).

Steps 2 to 9 live in ``pipeline.study.phases`` (step 8 in ``pipeline.study.authors_arm``, the
insertion ablation of step 3 in ``pipeline.study.insertions``).
Each queues its independent runs and hands them to the runner as one batch
(``StudyContext.run_batch``): one after another here, or with ``cluster`` one Ray task each
(``StudyRunner.run_many``); the results table is the same either way.

Folder: ``$BEFA_HOME/runs/studies/<name>/``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.data.catalog import Catalog
from pipeline.data.splits import Split
from pipeline.features.load import load_features
from pipeline.job.steps import extract_step, ingest_step, split_step
from pipeline.settings import Settings
from pipeline.study.analysis import (
    Runs,
    budget_notes,
    epoch_cap_count,
    floor_rows,
    gains_table,
    gate_notes,
    grid_size,
    overhead_rows,
    results_frame,
    significance,
    summarise,
    user_groups,
    verdict,
)
from pipeline.study.authors_arm import AuthorsRuns, authors_arm_phase, authors_arm_result
from pipeline.study.insertions import InsertionRuns, insertion_phase, insertion_result
from pipeline.study.item_groups import group_significance, group_table_rows
from pipeline.study.params import StudyError, StudyParams, StudyResult, validate_study
from pipeline.study.phases import (
    StudyContext,
    cold_items_phase,
    inspect,
    main_table,
    modality_ablation,
    search_all,
    sparsity_sweep,
    sweep_t,
)
from pipeline.study.report.tables import RunCounts, StudyData
from pipeline.study.report.write import write_study_report
from pipeline.study.rows import ColdItems, SearchRow, SignificanceRow
from pipeline.study.runner import StudyRunner
from pipeline.study.selection_bias import gains_if_picked_on_test
from storage.atomic import write_json
from storage.feature_store import FeatureStore


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
    insertions = _timed(ctx, "insertions", insertion_phase, ctx, searches, main_runs)
    _timed(ctx, "sweep_t", sweep_t, ctx, searches, main_runs)
    _timed(ctx, "ablation", modality_ablation, ctx, searches)
    _timed(ctx, "sparsity", sparsity_sweep, ctx, searches)
    _timed(ctx, "cold_items", cold_items_phase, ctx, searches)
    authors = _timed(ctx, "authors_arm", authors_arm_phase, ctx, searches)
    inspection = _timed(ctx, "inspect", inspect, ctx, main_runs)
    return report(ctx, searches, main_runs, inspection, t_all, authors, insertions)


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


def report(
    ctx: StudyContext,
    searches: dict[tuple[str, str], dict[str, Any]],
    main_runs: Runs,
    inspection: dict[str, Any],
    t_all: float,
    authors: AuthorsRuns | None = None,
    insertions: InsertionRuns | None = None,
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
        selection_bias=gains_if_picked_on_test(searches, p.models),  # the report's line only: no decision
        authors_arm=authors_arm_result(authors, p.pooling, p.alpha) if authors else None,
        insertions=insertion_result(insertions, p.pooling, p.alpha) if insertions else None,
        inspection=inspection,
        timings=ctx.timings,
        runs=_run_counts(ctx, frame),
        notes=budget_notes(frame, p) + gate_notes(main_runs, p.models),
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


def _run_counts(ctx: StudyContext, frame: Any) -> RunCounts:
    """Runs trained and reused, their seconds, and how many the epoch cap cut short."""
    capped, counted = epoch_cap_count(frame, ctx.params)
    return RunCounts(
        trained=ctx.runner.trained,
        reused=ctx.runner.reused,
        train_seconds=ctx.runner.seconds,
        at_epoch_cap=capped,
        counted=counted,
    )


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
        winner_params=s.get("winner_params", {}),
        pruned=sum(t.get("state") == "pruned" for t in s["trials"]),
    )
