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
7. **what BeFA changes** (``pipeline.study.inspect``): gate heatmaps, cosine histograms,
   top-10 of base vs +BeFA for a few users with posters;
8. the report (``pipeline.reporting.study_report``): ``report.html``, ``report.md``,
   ``results.parquet``, PNG plots.

Runs are content-addressed: ``runs/<model>-<adapter>-<hash>-s<seed>`` where the hash covers
the model config, the modalities, the split and the training budget; a run that already
finished is reused (a study interrupted and restarted resumes, and the sweep/ablation/
sparsity points that equal a main-table configuration are not trained twice).

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
from pipeline.data.splits import Split
from pipeline.features.load import FeatureBundle, load_features
from pipeline.job.params import FeaturesSummary, IngestSummary, SplitSummary
from pipeline.job.steps import extract_step, ingest_step, split_step
from pipeline.reporting.pipeline_report import EncoderInfo, weights_label
from pipeline.reporting.study_report import write_study_report
from pipeline.reporting.study_tables import StudyData
from pipeline.settings import Settings
from pipeline.study.analysis import (
    Runs,
    budget_notes,
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
from pipeline.study.params import ADAPTERS, StudyError, StudyParams, StudyResult, validate_study
from pipeline.study.runner import RunSpec, StudyRunner
from pipeline.study.search import run_search
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

    @property
    def modalities(self) -> list[str]:
        return sorted(self.features.features)

    def train_seeds(self, seeds: list[int], spec_of_seed: Callable[[int], RunSpec], extra: dict[str, Any] | None = None) -> list[RunRecord]:
        """Train (or reuse) one run per seed; their rows join the results table."""
        recs = []
        for seed in seeds:
            spec = spec_of_seed(seed)
            rec = self.runner.train(spec)
            self.rows.extend(result_rows(rec, spec, extra or {}))
            recs.append(rec)
        return recs


def study_folder(params: StudyParams, settings: Settings) -> Path:
    name = params.name or f"{params.dataset}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    return settings.runs_dir / "studies" / name


def run_study(params: StudyParams | dict[str, Any], settings: Settings, log: Callable[[str], None] | None = None) -> StudyResult:
    """Run the whole study (see the module docstring) and write its report."""
    params = validate_study(params, settings)
    t_all = time.perf_counter()
    ctx = prepare(params, settings, log or (lambda msg: None))
    searches = _timed(ctx, "search", search_all, ctx)
    main_runs = _timed(ctx, "main", main_table, ctx, searches)
    _timed(ctx, "sweep_t", sweep_t, ctx, searches, main_runs)
    _timed(ctx, "ablation", modality_ablation, ctx, searches)
    _timed(ctx, "sparsity", sparsity_sweep, ctx, searches)
    inspection = _timed(ctx, "inspect", inspect, ctx, main_runs)
    return report(ctx, searches, main_runs, inspection, t_all)


def _timed(ctx: StudyContext, name: str, phase: Callable[..., Any], *args: Any) -> Any:
    start = time.perf_counter()
    out = phase(*args)
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
    log("extract: " + ", ".join(f"{m} {f.encoded} encoded / {f.skipped} reused ({f.weights})" for m, f in extract.modalities.items()))
    split = split_step(pp, ingest.catalog_dir)
    catalog = Catalog.load(ingest.catalog_dir)
    features = load_features(catalog, FeatureStore(settings.feature_store), extract.fingerprints, snapshots=extract.snapshots)
    if not features.features:
        raise StudyError("the encoder produced no content features; BeFA needs at least one modality")
    runner = StudyRunner(params, settings, folder, ingest.catalog_dir, features, log)
    timings = {"ingest": ingest.seconds, "extract": extract.seconds, "split": split.seconds}
    return StudyContext(params, settings, folder, log, ingest, extract, split, catalog, features, runner, timings=timings)


def search_all(ctx: StudyContext) -> dict[tuple[str, str], dict[str, Any]]:
    """Phase 1: the valid-only search of every (model, adapter)."""
    searches = {}
    for model in ctx.params.models:
        for adapter in ADAPTERS:
            ctx.log(f"search {model} {adapter} (<= {ctx.params.max_trials} trials)")
            searches[(model, adapter)] = run_search(ctx.runner, model, adapter, ctx.split.path, ctx.modalities)
    write_json(ctx.folder / "search.json", json.loads(json.dumps({f"{m}/{a}": s for (m, a), s in searches.items()}, default=str)))
    return searches


def main_table(ctx: StudyContext, searches: dict[tuple[str, str], dict[str, Any]]) -> Runs:
    """Phase 2: every search winner with every seed."""
    main_runs: Runs = {}
    for (model, adapter), s in searches.items():
        ctx.log(f"main {model} {adapter}: {len(ctx.params.seeds)} seeds")
        overrides = s["winner_overrides"]
        main_runs[(model, adapter)] = ctx.train_seeds(
            ctx.params.seeds,
            lambda seed: RunSpec(model=model, overrides=overrides, modalities=ctx.modalities, split=ctx.split.path, seed=seed, experiment="main", setting="main"),
        )
    return main_runs


def _winners(ctx: StudyContext, searches: dict[tuple[str, str], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
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
        ctx.train_seeds(
            seeds,
            lambda seed: RunSpec(model=focus, overrides={**befa_win, "befa.t": float(t)}, modalities=ctx.modalities, split=ctx.split.path, seed=seed, experiment="sweep_t", setting=f"t={t:g}"),
        )
    for seed_rec, seed in zip(main_runs[(focus, "none")], p.seeds):
        if seed in seeds:  # the base reference line of the sweep plot
            spec = RunSpec(model=focus, overrides=base_win, modalities=ctx.modalities, split=ctx.split.path, seed=seed, experiment="sweep_t", setting="base")
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
            ctx.train_seeds(
                p.experiment_seed_list,
                lambda seed: RunSpec(model=p.focus_model, overrides=win, modalities=sorted(mods), split=ctx.split.path, seed=seed, experiment="ablation", setting=label),
            )


def sparsity_sweep(ctx: StudyContext, searches: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Phase 5: a fraction of each user's train interactions (valid and test unchanged)."""
    p = ctx.params
    if not p.train_fractions:
        return
    full = Split.load(ctx.split.path)
    for frac in p.train_fractions:
        path = ctx.split.path if frac >= 1.0 else str(full.subsample_train(frac, seed=p.split_seed).save(ctx.folder / "splits"))
        ctx.log(f"sparsity {p.focus_model}: {frac:.0%} of train")
        for win in _winners(ctx, searches):
            ctx.train_seeds(
                p.experiment_seed_list,
                lambda seed: RunSpec(model=p.focus_model, overrides=win, modalities=ctx.modalities, split=path, seed=seed, experiment="sparsity", setting=f"train={frac:.0%}"),
                {"train_fraction": frac},
            )


def inspect(ctx: StudyContext, main_runs: Runs) -> dict[str, Any]:
    """Phase 6: what BeFA changes (gates, cosines, top-10 of base vs +BeFA), first seed."""
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
    ctx: StudyContext, searches: dict[tuple[str, str], dict[str, Any]], main_runs: Runs, inspection: dict[str, Any], t_all: float
) -> StudyResult:
    """Phase 7: the analysis, the verdict and the report files; returns the study's result."""
    p = ctx.params
    frame = results_frame(ctx.rows)
    summary = summarise(frame[frame["experiment"] == "main"], ["model", "adapter"])
    gains = gains_table(summary, p.models)
    sig = significance(main_runs, p.models, p.pooling, p.alpha)
    text = verdict(gains, sig, p.alpha)
    ctx.timings["total"] = time.perf_counter() - t_all
    data = StudyData(
        title=f"BeFA study: {ctx.ingest.name}",
        params=p.model_dump(mode="json"),
        dataset=_dataset_info(ctx.ingest),
        split={"id": ctx.split.id, "kind": ctx.split.kind, "seed": ctx.split.seed, "counts": ctx.split.counts},
        encoders=_encoder_info(ctx.extract),
        verdict=text,
        gains=gains,
        significance=sig,
        overhead=overhead_rows(main_runs, p.models),
        user_groups=user_groups(main_runs, p.models, Split.load(ctx.split.path).frame),
        searches=[_search_info(m, a, s) for (m, a), s in searches.items()],
        inspection=inspection,
        timings=ctx.timings,
        runs={"trained": ctx.runner.trained, "reused": ctx.runner.reused, "train_seconds": ctx.runner.seconds},
        notes=budget_notes(frame, p),
    )
    files = write_study_report(ctx.folder, frame, data)
    ctx.timings["total"] = time.perf_counter() - t_all
    result = StudyResult(
        folder=str(ctx.folder),
        params=p.model_dump(mode="json"),
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


def _dataset_info(ingest: IngestSummary) -> dict[str, Any]:
    return {"name": ingest.name, "fingerprint": ingest.fingerprint, "users": ingest.num_users, "items": ingest.num_items, "interactions": ingest.num_interactions}


def _encoder_info(extract: FeaturesSummary) -> dict[str, dict[str, Any]]:
    return {
        m: {
            "spec": f.spec, "fingerprint": f.fingerprint, "dim": f.dim, "snapshot": f.snapshot,
            "weights": weights_label(EncoderInfo(spec=f.spec, weights=f.weights, random_init=f.random_init)),
            "random_init": f.random_init,
        }
        for m, f in extract.modalities.items()
    }


def _search_info(model: str, adapter: str, s: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model, "adapter": adapter, "trials": len(s["trials"]), "grid_size": grid_size(s["grid"]),
        "winner": s["winner_overrides"], "winner_valid_r20": s["trials"][s["winner"]]["valid"].get("recall@20"), "seconds": s["seconds"],
    }
