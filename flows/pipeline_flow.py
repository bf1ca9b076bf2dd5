"""The ``befa`` flow (deployment ``full-pipeline``): the whole job as Prefect tasks.

Each task is one step function of :mod:`pipeline.full_pipeline`; tasks pass paths and
small summaries, never tensors (a flow keeps every task result in memory until it
ends). Parameters are the fields of :class:`~pipeline.full_pipeline.PipelineParams`,
flat, so a run can override any of them::

    prefect deployment run befa/full-pipeline --watch --param encoder=minilm --param epochs=5

and they are validated before the first task runs (a bad encoder or a missing dataset
fails the run at once, with the reason in the flow run's error).

``use_registered=True`` (what the catalog-change trigger passes) ignores the other
parameters except ``dataset`` and reruns the catalog with the parameters it was last
run with (the watch registry, ``pipeline.catalog_watch``).

Tasks do not cache across runs: extraction is already incremental (the feature store
skips content it holds, keyed by content hashes), and training is what a rerun is for.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish_artifacts
from pipeline import full_pipeline as fp
from pipeline.catalog_watch import registered_params
from pipeline.settings import get_settings

_D = {name: field.get_default(call_default_factory=True) for name, field in fp.PipelineParams.model_fields.items()}

ingest_task = task(name="ingest", cache_policy=NO_CACHE)(fp.ingest_step)
extract_task = task(name="extract-features", cache_policy=NO_CACHE)(fp.extract_step)
split_task = task(name="split", cache_policy=NO_CACHE)(fp.split_step)
train_task = task(name="train", cache_policy=NO_CACHE, task_run_name="train-{model}-{adapter}")(fp.train_step)
evaluate_task = task(name="evaluate", cache_policy=NO_CACHE)(fp.evaluate_step)
report_task = task(name="report", cache_policy=NO_CACHE)(fp.report_step)
artifacts_task = task(name="artifacts", cache_policy=NO_CACHE)(publish_artifacts)


@flow(name="befa", description="ingest -> extract -> split -> train base and +BeFA -> evaluate -> report", validate_parameters=True)
def befa(
    dataset: str = _D["dataset"],
    encoder: str | dict[str, str] = _D["encoder"],
    models: list[str] = _D["models"],
    adapters: list[str] = _D["adapters"],
    epochs: int = _D["epochs"],
    patience: int = _D["patience"],
    seed: int = _D["seed"],
    split_kind: str = _D["split_kind"],
    split_seed: int = _D["split_seed"],
    k_core: int | None = _D["k_core"],
    importer: str | None = _D["importer"],
    ingest: str = _D["ingest"],
    ingest_options: dict[str, Any] | None = None,
    model_overrides: dict[str, dict[str, Any]] | None = None,
    device: str | None = _D["device"],
    extract_batch_size: int | None = _D["extract_batch_size"],
    cluster: str | None = _D["cluster"],
    verify_checkpoints: bool = _D["verify_checkpoints"],
    study: bool = _D["study"],
    run_name: str | None = _D["run_name"],
    use_registered: bool = False,
) -> dict[str, Any]:
    logger = get_run_logger()
    settings = get_settings()
    if use_registered:
        params = registered_params(settings, dataset)
        logger.info("rerunning catalog %s with its registered parameters", dataset)
    else:
        params = dict(
            dataset=dataset, encoder=encoder, models=models, adapters=adapters, epochs=epochs, patience=patience,
            seed=seed, split_kind=split_kind, split_seed=split_seed, k_core=k_core, importer=importer, ingest=ingest,
            ingest_options=ingest_options or {}, model_overrides=model_overrides or {}, device=device,
            extract_batch_size=extract_batch_size, cluster=cluster, verify_checkpoints=verify_checkpoints,
            study=study, run_name=run_name,
        )
    params = fp.validate_params(params, settings)  # before any task: fail fast
    folder = fp.pipeline_folder(params, settings)
    folder.mkdir(parents=True, exist_ok=True)
    from storage.atomic import write_json

    write_json(folder / "params.json", params.model_dump(mode="json"))
    logger.info("pipeline folder %s", folder)

    timings: dict[str, float] = {}
    ingest_s = ingest_task(params, settings)
    timings["ingest"] = ingest_s.seconds
    extract_s = extract_task(params, settings, ingest_s.catalog_dir)
    timings["extract"] = extract_s.seconds
    for m, f in extract_s.modalities.items():
        logger.info("%s features: %d encoded, %d reused, snapshot %s (weights: %s)", m, f.encoded, f.skipped, f.snapshot, "random init" if f.random_init else f.weights)
    split_s = split_task(params, ingest_s.catalog_dir)
    timings["split"] = split_s.seconds

    pairs, skipped = fp.plan_runs(params)
    for note in skipped:
        logger.info(note)
    runs = []
    # One device: runs go one after another (see README, "scaling out").
    for model, adapter in pairs:
        run_dir = str(folder / "runs" / f"{model}-{adapter}")
        summary = train_task(params, settings, ingest_s.catalog_dir, split_s.path, extract_s, model, adapter, run_dir)
        timings[f"train {model} {adapter}"] = summary.seconds
        if params.verify_checkpoints:
            before = summary.seconds
            summary = evaluate_task(settings, ingest_s.catalog_dir, split_s.path, extract_s, summary)
            timings[f"evaluate {model} {adapter}"] = round(summary.seconds - before, 3)
        logger.info("%s %s: %s at epoch %s, test recall@20 %.4f", model, adapter, summary.status, summary.best_epoch, summary.test.get("recall@20", float("nan")))
        runs.append(summary)

    report = report_task(str(folder), params, ingest_s, extract_s, split_s, runs, timings, skipped)
    result = fp.PipelineResult(
        params=params.model_dump(mode="json"), folder=str(folder), ingest=ingest_s, extract=extract_s,
        split=split_s, runs=runs, report=report, timings=timings, skipped=skipped,
    )
    write_json(folder / "summary.json", result.model_dump(mode="json"))
    keys = artifacts_task(result)
    return {
        "folder": str(folder),
        "report": report["report_md"],
        "artifacts": keys,
        "test": {f"{r.model}/{r.adapter}": r.test.get("recall@20") for r in runs},
    }
