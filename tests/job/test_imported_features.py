"""``--encoder imported`` and ``--split-kind given``: an MMRec catalog (image + audio matrices, no
raw content, its own x_label split) runs through the pipeline as ingest stored it.

The whole pipeline on an MMRec folder built here; what the extract step says (spec
``imported``, weights = the file and its sha, the store's current snapshot, nothing encoded);
the run records' feature sets; the refusals (a catalog without imported features or without a
given split, ``imported`` mixed into a per-modality spec), each before any work; and the
catalog watch, ``befa train``, ``befa extract`` and the study's validation on the same catalog.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from encoders import EncoderSpecError, parse_modality_specs, parse_spec
from pipeline.cli.main import app
from pipeline.data.catalog import Catalog
from pipeline.data.ingest import ingest
from pipeline.data.splits import Split
from pipeline.features.export_mmrec import export_command
from pipeline.features.extract import extract_features
from pipeline.features.imported import NoImportedFeatures
from pipeline.job.params import PipelineError, PipelineParams, validate_params
from pipeline.job.run import run_pipeline
from pipeline.job.watch import watch_catalog
from pipeline.settings import get_settings
from pipeline.study.params import StudyError, validate_study
from pipeline.training.record import RunRecord
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey
from tests.data.test_mmrec_modalities import N_ITEMS, N_USERS, write_folder

TINY = {"*": {"embedding_dim": 8, "batch_size": 16}, "freedom": {"knn_k": 3}}
runner = CliRunner()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def piped(tmp_path_factory, datasets_root):
    root = tmp_path_factory.mktemp("imported")
    write_folder(root / "mm")
    settings = get_settings(home=root / "home", datasets_root=datasets_root)
    params = PipelineParams(
        dataset="tok",
        ingest_options={"folder": str(root / "mm")},  # mmrec, from the folder option
        encoder="imported",
        split_kind="given",
        models=["freedom"],
        epochs=1,
        patience=1,
        seed=1,
        model_overrides=TINY,
        recommend_k=5,
        run_name="tok",
    )
    return root, settings, params, run_pipeline(params, settings)


def test_the_extract_step_reads_the_imported_features(piped):
    root, settings, _, result = piped
    catalog = Catalog.load(settings.catalog_dir("tok"))
    store = FeatureStore(settings.feature_store)
    assert list(result.extract.modalities) == ["image", "audio"] and result.extract.backend.startswith("none")
    for m, f in result.extract.modalities.items():
        file = root / "mm" / f"{m}_feat.npy"
        assert f.spec == "imported" and f.fingerprint == catalog.meta["features"][m]["fingerprint"]
        assert f.fingerprint == f"mmrec-npy-{m}-{sha256(file)[:12]}"
        assert f.weights == f"{file} sha256:{sha256(file)}" and not f.random_init
        assert f.snapshot == store.current_snapshot(FeatureSetKey("tok", f.fingerprint, m)).id
        assert (f.encoded, f.skipped, f.failed, f.dim) == (0, N_ITEMS, 0, {"image": 6, "audio": 4}[m])


def test_the_given_split_trains_and_every_record_lists_the_imported_features(piped):
    root, settings, _, result = piped
    assert result.split.kind == "given" and result.split.id.startswith("given-") and result.split.seed is None
    x_label = pd.read_csv(root / "mm" / "x.inter", sep="\t")["x_label"].value_counts()
    assert result.split.counts == {"train": x_label[0], "valid": x_label[1], "test": x_label[2]}
    assert result.split.counts == {"train": 3 * N_USERS, "valid": N_USERS, "test": N_USERS}
    assert [(r.model, r.adapter) for r in result.runs] == [
        ("mostpop", "none"),
        ("freedom", "none"),
        ("freedom", "befa"),
    ]
    fps = result.extract.fingerprints
    for r in result.runs[1:]:
        rec = RunRecord.load(r.run_dir)
        assert r.verified and rec.sources["split"] == result.split.path
        assert {m: s["fingerprint"] for m, s in rec.feature_sets.items()} == fps
        assert rec.feature_snapshots == result.extract.snapshots
    report = Path(result.report.report_md).read_text()
    assert "`imported`" in report and f"sha256:{sha256(root / 'mm' / 'audio_feat.npy')}" in report
    assert "kind given" in report and result.recommendations is not None and result.recommendations.users > 0


def test_export_mmrec_and_befa_train_and_extract_on_the_catalog(piped, tmp_path):
    root, settings, _, _ = piped
    out = export_command("tok", "given", tmp_path / "out", settings)
    assert np.array_equal(np.load(tmp_path / "out" / "audio_feat.npy"), np.load(root / "mm" / "audio_feat.npy"))
    assert out["rows"] == 5 * N_USERS
    env = {"BEFA_HOME": str(settings.home), "BEFA_DATASETS_ROOT": str(settings.datasets_root)}
    args = ["train", "--dataset", "tok", "--model", "freedom", "--encoder", "imported", "--split", "given"]
    trained = runner.invoke(
        app, [*args, "--epochs", "1", "--set", "knn_k=3", "--run-dir", str(tmp_path / "r")], env=env
    )
    assert trained.exit_code == 0, trained.output
    assert sorted(RunRecord.load(tmp_path / "r").feature_sets) == ["audio", "image"]
    extracted = runner.invoke(app, ["extract", "--dataset", "tok", "--encoder", "imported"], env=env)
    assert extracted.exit_code == 0 and "imported" in extracted.output, extracted.output


def test_the_watch_follows_a_changed_feature_file(piped):
    root, settings, params, result = piped
    assert not watch_catalog(settings, "tok").changed  # first watch: content identical
    audio = np.load(root / "mm" / "audio_feat.npy")
    audio[0] += 1.0
    np.save(root / "mm" / "audio_feat.npy", audio)
    change = watch_catalog(settings, "tok")
    assert change.changed and change.error is None and change.items_reencoded == []
    assert change.encoded == {"image": 0, "audio": 0} and change.reused == {"image": N_ITEMS, "audio": N_ITEMS}
    assert change.snapshots["image"] == result.extract.snapshots["image"]
    fp = Catalog.load(settings.catalog_dir("tok")).meta["features"]["audio"]["fingerprint"]
    assert fp != result.extract.fingerprints["audio"]  # a new file: a new fingerprint, its own snapshot
    assert (
        change.snapshots["audio"]
        == FeatureStore(settings.feature_store).current_snapshot(FeatureSetKey("tok", fp, "audio")).id
    )


# -- refusals, before any work ----------------------------------------------------------------
def test_a_catalog_without_imported_features_is_refused_naming_the_flag_and_catalog(tmp_path, datasets_root):
    settings = get_settings(home=tmp_path / "home", datasets_root=datasets_root)
    plain = tmp_path / "plain"
    write_folder(plain)
    for f in plain.glob("*_feat.npy"):
        f.unlink()
    ask = {"encoder": "imported", "models": ["freedom"]}
    with pytest.raises(PipelineError, match=r"--encoder \(encoder\) imported: catalog 'plain' is to be ingested from"):
        validate_params({**ask, "dataset": "plain", "ingest_options": {"folder": str(plain)}}, settings)
    with pytest.raises(PipelineError, match=r"--encoder .*catalog 'movielens-100k-posters' .* imports no features"):
        validate_params({**ask, "dataset": "movielens-100k-posters"}, settings)
    ingest("mmrec", settings, folder=plain)
    with pytest.raises(PipelineError, match=r"--encoder \(encoder\) imported: catalog 'x' has no imported features"):
        validate_params({**ask, "dataset": "x"}, settings)
    with pytest.raises(StudyError, match=r"--encoder \(encoder\) imported: catalog 'x' has no imported features"):
        validate_study({**ask, "dataset": "x"}, settings)
    with pytest.raises(NoImportedFeatures, match="catalog 'x' has no imported features"):
        extract_features(Catalog.load(settings.catalog_dir("x")), "imported", FeatureStore(settings.feature_store))
    env = {"BEFA_HOME": str(settings.home)}
    cli = runner.invoke(app, ["train", "--dataset", "x", "--model", "freedom", "--encoder", "imported"], env=env)
    assert cli.exit_code == 2 and "catalog 'x' has no imported features" in " ".join(cli.output.split())
    assert validate_params({"dataset": "x", "encoder": "minilm", "split_kind": "given"}, settings).split_kind == "given"


def test_a_catalog_without_a_given_split_is_refused_naming_split_kind(tmp_path, datasets_root):
    settings = get_settings(home=tmp_path / "home", datasets_root=datasets_root)
    with pytest.raises(PipelineError, match=r"--split-kind \(split_kind\) given: catalog 'movielens-100k-posters'"):
        validate_params({"dataset": "movielens-100k-posters", "encoder": "minilm", "split_kind": "given"}, settings)
    write_folder(tmp_path / "mm")
    with pytest.raises(PipelineError, match=r"--k-core \(k_core\) 5: does not apply to --split-kind"):
        validate_params(
            {"dataset": "t", "ingest_options": {"folder": str(tmp_path / "mm")}, "split_kind": "given", "k_core": 5},
            settings,
        )


def test_the_store_losing_the_imported_features_is_an_error_not_a_silent_fill(piped, tmp_path):
    _, settings, _, _ = piped
    catalog = Catalog.load(settings.catalog_dir("tok"))
    with pytest.raises(NoImportedFeatures, match=r"imported image features .* has none: ingest it again"):
        extract_features(catalog, "imported", FeatureStore(str(tmp_path / "other-store")))


@pytest.mark.parametrize(
    "spec", ["image=imported,text=minilm", "image=minilm,audio=imported", "audio=imported", "imported:audio"]
)
def test_imported_mixed_into_a_spec_is_refused_clearly(spec, tmp_path, datasets_root):
    settings = get_settings(home=tmp_path / "home", datasets_root=datasets_root)
    with pytest.raises(PipelineError, match="'imported' is not an encoder family: .* stands alone"):
        validate_params({"dataset": "movielens-100k-posters", "encoder": spec}, settings)
    with pytest.raises(EncoderSpecError, match="stands alone"):
        parse_modality_specs(spec) if spec.startswith("image=") else parse_spec(spec)
    with pytest.raises(PipelineError, match="stands alone"):
        validate_params({"dataset": "movielens-100k-posters", "encoder": {"image": "imported"}}, settings)


def test_the_given_split_is_used_as_stored(piped):
    _, settings, _, result = piped
    stored = Split.load(result.split.path)
    assert stored.kind == "given" and stored.name == "given" and stored.id == result.split.id
    assert Path(result.split.path) == Catalog.load(settings.catalog_dir("tok")).splits_dir / "given.parquet"
