"""The pipeline as plain functions: validation, the whole run, incremental re-runs, catalog watch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.job.params import PipelineError, PipelineParams, validate_params
from pipeline.job.run import LOCAL_STEPS, PipelineSteps, run_pipeline
from pipeline.job.steps import ingest_step, plan_runs
from pipeline.job.watch import last_watch, registered_catalogs, registered_params, watch_catalog, watch_catalogs
from pipeline.settings import get_settings
from pipeline.training.api import evaluate_run
from pipeline.training.record import RunRecord
from pipeline.training.run_features import load_run_features
from storage.feature_store import FeatureStore
from tests.flows_data import make_small_catalog

TINY_ENCODER = "imagebind:tiny@random"


@pytest.fixture
def settings(tmp_path, datasets_root):
    return get_settings(home=tmp_path / "home", datasets_root=datasets_root)


# -- validation: fails before any work --------------------------------------------
def test_bad_encoder_fails_fast_with_the_valid_choices(settings):
    with pytest.raises(PipelineError, match=r"unknown encoder 'nosuch'.*known encoders"):
        validate_params({"encoder": "nosuch:thing@random"}, settings)
    with pytest.raises(PipelineError, match="unknown open_clip architecture"):
        validate_params({"encoder": "clip:ViT-Nope@random"}, settings)
    with pytest.raises(PipelineError, match="does not exist"):
        validate_params({"encoder": "image=clip:ViT-B-32@/no/such/ckpt.safetensors,text=minilm"}, settings)
    with pytest.raises(PipelineError, match="unknown modality 'audio'"):
        validate_params({"encoder": {"audio": "minilm"}}, settings)
    assert not settings.home.exists()  # nothing was written


def test_missing_dataset_and_bad_options_fail_fast(settings, tmp_path):
    with pytest.raises(PipelineError, match="not an ingested catalog"):
        validate_params({"dataset": "no-such-catalog"}, settings)
    empty = get_settings(home=tmp_path / "h2", datasets_root=tmp_path / "nothing")
    with pytest.raises(PipelineError, match="no local copy"):
        validate_params({"dataset": "movielens-100k-posters"}, empty)
    with pytest.raises(PipelineError, match="does not exist"):
        validate_params(
            {
                "dataset": "mine",
                "importer": "generic",
                "ingest_options": {"items": str(tmp_path / "x.csv"), "interactions": str(tmp_path / "y.csv")},
            },
            settings,
        )
    with pytest.raises(PipelineError, match="unknown model 'gpt'"):
        validate_params({"models": ["lightgcn", "gpt"]}, settings)
    with pytest.raises(PipelineError, match="model_overrides for 'mgcn'"):
        validate_params({"models": ["mgcn"], "model_overrides": {"mgcn": {"no_such_field": 1}}}, settings)
    with pytest.raises(PipelineError, match="cluster"):
        validate_params({"cluster": "http://x"}, settings)
    with pytest.raises(PipelineError, match="study"):  # the old reserved flag is gone: `befa study` runs studies
        validate_params({"study": True}, settings)
    ok = validate_params(
        {"dataset": "movielens-100k-posters", "encoder": {"image": TINY_ENCODER, "text": "minilm"}}, settings
    )
    assert ok.encoder_spec() == f"image={TINY_ENCODER},text=minilm"


def test_plan_skips_befa_for_content_free_models():
    pairs, skipped = plan_runs(PipelineParams(models=["lightgcn", "freedom"], adapters=["none", "befa"]))
    # MostPop first: the floor is always trained, whether or not models names it, and only once
    assert pairs == [("mostpop", "none"), ("lightgcn", "none"), ("freedom", "none"), ("freedom", "befa")]
    assert len(skipped) == 1 and "lightgcn" in skipped[0]
    pairs, _ = plan_runs(PipelineParams(models=["mostpop", "lightgcn"], adapters=["befa"]))
    assert pairs == [("mostpop", "none")]


# -- the whole run -----------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory, datasets_root):
    root = tmp_path_factory.mktemp("pipeline")
    cat = make_small_catalog(root / "source", datasets_root)
    settings = get_settings(home=root / "home", datasets_root=datasets_root)
    params = PipelineParams(
        dataset="ml-small",
        importer="generic",
        ingest_options=cat.ingest_options(),
        encoder=TINY_ENCODER,
        models=["lightgcn", "freedom"],
        adapters=["none", "befa"],
        epochs=2,
        patience=2,
        seed=1,
        model_overrides={"*": {"embedding_dim": 16}},
        run_name="first",
    )
    result = run_pipeline(params, settings)
    return cat, settings, params, result


def test_pipeline_writes_runs_metrics_plots_and_report(small):
    _, settings, _, result = small
    folder = Path(result.folder)
    assert folder == settings.runs_dir / "pipelines" / "first"
    assert [(r.model, r.adapter) for r in result.runs] == [
        ("mostpop", "none"),
        ("lightgcn", "none"),
        ("freedom", "none"),
        ("freedom", "befa"),
    ]
    for r in result.runs:
        assert (Path(r.run_dir) / "run.json").exists() and (Path(r.run_dir) / "best.safetensors").exists()
        assert 1 <= r.epochs_run <= 2 and "recall@20" in r.test
        assert r.verified, f"{r.model} {r.adapter}: checkpoint re-evaluation differs by {r.max_abs_diff}"
    metrics = pq.read_table(folder / "metrics.parquet").to_pandas()
    assert len(metrics) == 4 * metrics["metric"].nunique() and set(metrics["adapter"]) == {"none", "befa"}
    for name in ("report.md", "curves.png", "base_vs_befa.png", "metrics.json", "summary.json", "params.json"):
        assert (folder / name).stat().st_size > 0, name
    md = (folder / "report.md").read_text()
    assert "weights: random init" in md
    for m, f in result.extract.modalities.items():
        assert f.snapshot in md and f.random_init
    assert result.split.id in md
    assert "lightgcn +befa skipped" in md
    assert set(result.extract.modalities) == {"image", "text"}
    assert all(f.encoded == 40 and f.failed == 0 for f in result.extract.modalities.values())
    assert json.loads((folder / "summary.json").read_text())["split"]["id"] == result.split.id


def test_pipeline_ends_with_recommendations_from_the_best_valid_run(small):
    _, _, params, result = small
    folder = Path(result.folder)
    recs = result.recommendations
    best = max(result.runs, key=lambda r: r.valid["recall@20"])
    assert (
        recs is not None
        and (recs.model, recs.adapter) == (best.model, best.adapter)
        and recs.chosen_by == "valid recall@20"
    )
    frame = pq.read_table(folder / "recommendations.parquet").to_pandas()
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score"]
    assert frame.groupby("user_id").size().max() == params.recommend_k and frame["user_id"].nunique() == recs.users
    manifest = json.loads((folder / "recommendations.json").read_text())
    assert manifest["run_dir"] == str(Path(best.run_dir).resolve()) and manifest["rows"] == len(frame)
    assert recs.head[0].model_dump() == frame.iloc[0].to_dict() | {
        "score": pytest.approx(float(frame.iloc[0]["score"]))
    }
    md = (folder / "report.md").read_text()
    assert (
        "## Recommendations" in md
        and "recommendations.png" in md
        and (folder / "recommendations.png").stat().st_size > 0
    )
    assert json.loads((folder / "summary.json").read_text())["recommendations"]["path"] == str(
        folder / "recommendations.parquet"
    )


def test_recommend_run_names_the_run_to_serve(small, tmp_path):
    cat, settings, params, _ = small
    with pytest.raises(
        PipelineError,
        match=(
            r"--recommend-run \(recommend_run\) 'mgcn-befa' is not a run of this pipeline; "
            r"choose from \['lightgcn-none', 'freedom-none', 'freedom-befa'\]"
        ),
    ):
        validate_params(params.model_copy(update={"recommend_run": "mgcn-befa"}), settings)
    chosen = params.model_copy(
        update={"recommend_run": "lightgcn-none", "recommend_k": 3, "models": ["lightgcn"], "run_name": "named"}
    )
    result = run_pipeline(chosen, settings)
    assert (result.recommendations.model, result.recommendations.adapter, result.recommendations.chosen_by) == (
        "lightgcn",
        "none",
        "recommend_run",
    )
    assert (
        pq.read_table(Path(result.folder) / "recommendations.parquet").to_pandas().groupby("user_id").size().max() == 3
    )


def test_second_run_reuses_features_and_is_reproducible(small):
    _, settings, params, first = small
    again = run_pipeline(
        params.model_copy(
            update={"run_name": "second", "models": ["freedom"], "adapters": ["befa"], "verify_checkpoints": False}
        ),
        settings,
    )
    assert all(f.encoded == 0 and f.skipped == 40 for f in again.extract.modalities.values())
    assert again.extract.snapshots == first.extract.snapshots
    assert again.split.id == first.split.id
    before = next(r for r in first.runs if (r.model, r.adapter) == ("freedom", "befa"))
    assert again.runs[-1].test == pytest.approx(before.test)  # same seed, same data: same metrics


def test_run_pipeline_calls_the_steps_it_is_given_in_order(small, tmp_path):
    """The Prefect flow passes task-wrapped steps: run_pipeline must call exactly those."""
    _, settings, params, first = small
    calls = []

    def recording(role, fn):
        def step(*args, **kwargs):
            calls.append(role)
            return fn(*args, **kwargs)

        return step

    steps = LOCAL_STEPS.wrapped(recording)
    again = run_pipeline(
        params.model_copy(update={"run_name": "wrapped", "models": ["lightgcn"], "adapters": ["none"]}),
        settings,
        steps=steps,
    )
    assert calls == [
        "ingest",
        "extract",
        "split",
        "train",
        "evaluate",
        "train",
        "evaluate",
        "recommend",
        "report",
    ]  # MostPop, then lightgcn
    assert again.runs[-1].test == pytest.approx(next(r for r in first.runs if r.model == "lightgcn").test)


def test_the_job_registers_the_catalog_and_the_steps_do_not(small, tmp_path):
    _, settings, params, first = small
    canned = PipelineSteps(  # the first run's summaries: no work, only the orchestration
        ingest=lambda p, s: first.ingest,
        extract=lambda p, s, c: first.extract,
        split=lambda p, c: first.split,
        train=lambda *a: first.runs[0],
        evaluate=lambda s, c, sp, e, summary: summary,
        report=lambda *a: first.report,
    )
    job_home = get_settings(home=tmp_path / "job", datasets_root=settings.datasets_root)
    run_pipeline(
        params.model_copy(update={"run_name": "canned", "models": ["lightgcn"], "adapters": ["none"]}),
        job_home,
        steps=canned,
    )
    assert (
        registered_params(job_home, "ml-small").models == ["lightgcn"]
        and registered_params(job_home, "ml-small").run_name is None
    )

    step_home = get_settings(home=tmp_path / "step", datasets_root=settings.datasets_root)
    ingest_step(params, step_home)  # a step alone (what the study runs) leaves no registration behind
    assert registered_catalogs(step_home) == {}


def test_a_run_record_alone_finds_its_exact_features(small, tmp_path):
    """What `befa evaluate RUN` relies on: run.json names the catalog, split and feature sets,
    and a run written before record version 2 keeps them in features.json instead."""
    _, settings, _, first = small
    run = next(r for r in first.runs if (r.model, r.adapter) == ("freedom", "befa"))
    record = RunRecord.load(run.run_dir)
    assert set(record.feature_sets) == {"image", "text"}
    assert {m: s["snapshot"] for m, s in record.feature_sets.items()} == first.extract.snapshots
    assert {m: s["fingerprint"] for m, s in record.feature_sets.items()} == first.extract.fingerprints
    assert all(s["random_init"] for s in record.feature_sets.values())  # the tiny encoder is random-init
    store = FeatureStore(settings.feature_store)
    bundle = load_run_features(record, store, run.run_dir)
    assert bundle.snapshots == first.extract.snapshots and bundle.fingerprints == first.extract.fingerprints
    assert evaluate_run(run.run_dir, features=bundle)["test"] == pytest.approx(run.test)

    legacy = tmp_path / "legacy-run"
    shutil.copytree(run.run_dir, legacy)
    raw = json.loads((legacy / "run.json").read_text())
    raw.pop("feature_sets")
    raw["record_version"] = 1
    (legacy / "run.json").write_text(json.dumps(raw))
    (legacy / "features.json").write_text(
        json.dumps(
            {
                "catalog_dir": record.sources["catalog"],
                "fingerprints": first.extract.fingerprints,
                "snapshots": first.extract.snapshots,
            }
        )
    )
    old = load_run_features(RunRecord.load(legacy), store, legacy)
    assert old.snapshots == bundle.snapshots
    assert all(torch.equal(old.features[m], bundle.features[m]) for m in bundle.features)


# -- catalog watch (plain functions) ----------------------------------------------
def test_watch_reencodes_only_changed_items(small):
    cat, settings, params, _ = small
    assert "ml-small" in registered_catalogs(settings)
    first = watch_catalog(settings, "ml-small")  # first watch: baseline, nothing changed
    assert not first.changed
    assert not watch_catalog(settings, "ml-small").changed  # stamp unchanged: no re-ingest
    assert last_watch(settings, "ml-small").reason == "source files untouched"

    added = cat.add_items(2)
    edited = pd.read_csv(cat.items, dtype=str)["item_id"].iloc[0]
    cat.replace_poster(edited, with_poster_of=cat.spare_ids[0])
    (change,) = watch_catalogs(settings)
    assert change.changed
    assert change.diff.added == sorted(added) and change.diff.image_changed == [edited]
    assert change.diff.text_changed == [] and change.diff.removed == []
    assert sorted(change.items_reencoded) == sorted([*added, edited])
    assert change.encoded == {"image": 3, "text": 2}
    assert change.reused == {"image": 39, "text": 40}
    assert change.snapshots != {}
    again = watch_catalog(settings, "ml-small")  # nothing new, but no pipeline run used this version yet
    assert again.changed and again.retrain_only and again.reason.startswith("retrain due")


def test_star_overrides_reach_the_models_that_have_the_field(datasets_root, tmp_path):
    """``--set '*.knn_k=5'`` reaches FREEDOM, not MostPop (which always runs) or LightGCN; a
    '*' key no model of the run has is refused before any work, naming --set."""
    params = PipelineParams(models=["lightgcn", "freedom"], model_overrides={"*": {"knn_k": 5, "embedding_dim": 8}})
    assert params.overrides_for("freedom", "none") == {"knn_k": 5, "embedding_dim": 8, "adapter": "none"}
    assert params.overrides_for("mostpop", "none") == {"embedding_dim": 8, "adapter": "none"}
    assert params.overrides_for("lightgcn", "none") == {"embedding_dim": 8, "adapter": "none"}
    settings = get_settings(home=tmp_path / "home", datasets_root=datasets_root)
    with pytest.raises(PipelineError, match=r"--set '\*.knn_k': no model of this run"):
        validate_params({"models": ["lightgcn"], "model_overrides": {"*": {"knn_k": 5}}}, settings)
