"""New items served through the run's content mapper (pipeline.serving.new_items): mapped,
calibrated to the warm items' scores, a guaranteed number of places, and said so in the
manifest. Uses test_serving's two-cluster world: items i30-i33 are new A items."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.serving.new_items import top_with_slots
from pipeline.serving.ranked_files import read_manifest
from pipeline.serving.ranked_lists import RecommendRequest, recommend, write_recommendations
from pipeline.serving.servable import ServingError, load_servable
from pipeline.training.mapping import MAPPING, MappingRecord
from tests.serving.test_serving import NEW, _grown, world  # noqa: F401 - the module fixture

runner = CliRunner()


@pytest.fixture(scope="module")
def grown_run(world, tmp_path_factory):  # noqa: F811
    """A copy of the FREEDOM run, the grown catalog and store, and the servable whose loading
    fitted the run's mappers (once, into the copy)."""
    tmp = tmp_path_factory.mktemp("new-items")
    run = tmp / "freedom"
    shutil.copytree(world["runs"]["freedom"], run)
    folder, store = _grown(world, tmp)
    assert MappingRecord.load(run) is None
    return run, folder, store, load_servable(run, store, catalog=folder, mapper="regression")


@pytest.mark.slow  # the grown_run fixture trains and maps a model (about 75 s on a loaded host)
def test_a_forced_mapper_is_fitted_once_and_reaches_its_clusters_users(grown_run):
    run, folder, store, served = grown_run
    assert served.mapper == "regression" and served.calibration is not None
    mapped = set(served.item_ids[served.no_behaviour.cpu().numpy()])
    assert NEW <= mapped  # every new item (and any item the split never trained) is mapped
    assert set(MappingRecord.load(run).methods) == {"regression", "aldi"}  # fitted and written once
    recs = recommend(served, RecommendRequest(k=34, seen="none"))
    recs["a_user"] = recs["user_id"].str[1:].astype(int) < 10
    new_rows = recs[recs["item_id"].isin(NEW)]
    mean_rank = new_rows.groupby("a_user")["rank"].mean()
    assert mean_rank[True] < mean_rank[False]  # 6 held-out warm items calibrate here: a coarse, honest margin
    top10 = new_rows[new_rows["rank"] <= 10].groupby("a_user").size()
    assert top10.get(True, 0) > top10.get(False, 0)  # they reach A users' top 10 more than B users'
    # auto: a random split has no cold items to judge the mappers on, so the model's own content path
    auto = load_servable(run, store, catalog=folder)
    assert auto.mapper is None and auto.calibration is None and NEW <= set(auto.item_ids[auto.no_behaviour.numpy()])


@pytest.mark.slow  # the grown_run fixture trains and maps a model (about 75 s on a loaded host)
def test_new_item_slots_are_honoured_and_the_manifest_lists_the_mapped_items(grown_run, tmp_path):
    run, folder, store, served = grown_run
    written = write_recommendations(served, RecommendRequest(k=5, new_item_slots=2), tmp_path / "recs.parquet")
    manifest = read_manifest(written.path)
    recs = pd.read_parquet(written.path)
    per_user = recs.assign(new=recs["item_id"].isin(NEW)).groupby("user_id")["new"].sum()
    assert (per_user >= 2).all() and len(per_user) == 20
    assert (recs.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()
    assert NEW <= set(manifest["mapped_items"]) and manifest["new_item_slots"] == 2
    assert NEW <= set(manifest["items_without_behaviour"])
    assert manifest["mapper"] == "regression" and manifest["calibration"] == "relevance"
    assert manifest["calibration_note"] is None
    with pytest.raises(ServingError, match="--new-item-slots"):
        RecommendRequest(k=5, new_item_slots=6).check()


@pytest.mark.slow  # the grown_run fixture trains and maps a model (about 75 s on a loaded host)
def test_mapper_none_serves_the_models_own_representations_and_still_honours_slots(grown_run, tmp_path):
    run, folder, store, _ = grown_run
    served = load_servable(run, store, catalog=folder, mapper="none")
    assert served.mapper is None and served.calibration is None
    written = write_recommendations(served, RecommendRequest(k=3, new_item_slots=1), tmp_path / "own.parquet")
    recs = pd.read_parquet(written.path)
    assert (recs.assign(new=recs["item_id"].isin(NEW)).groupby("user_id")["new"].sum() >= 1).all()
    manifest = read_manifest(written.path)
    assert manifest["mapper"] is None and manifest["mapped_items"] == [] and manifest["items_without_behaviour"]


def test_slots_fill_from_the_best_new_items_and_keep_score_order():
    scores = torch.tensor([[9.0, 8, 7, 6, 1, 2], [9.0, 8, 7, 6, 1, float("-inf")]])
    new = torch.tensor([False, False, False, False, True, True])
    items, values = top_with_slots(scores, 3, new, 1)
    assert items.tolist() == [[0, 1, 5], [0, 1, 4]]  # the best new item takes the last place, in score order
    items, values = top_with_slots(scores, 3, new, 2)
    # row 2 has one allowed new item: it gets its place, the rest stay the best warm items
    assert items.tolist() == [[0, 5, 4], [0, 1, 4]] and torch.isfinite(values).all()


@pytest.mark.slow  # the grown_run fixture trains and maps a model (about 75 s on a loaded host)
def test_cli_recommend_with_new_item_slots(grown_run, tmp_path):
    run, folder, store, _ = grown_run
    out = tmp_path / "cli.parquet"
    args = ["recommend", str(run), "--catalog", str(folder), "--feature-store", str(store.root), "--k", "4",
            "--mapper", "regression", "--new-item-slots", "1", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "items without behaviour scored by the regression mapper" in result.output
    assert "1 place per list guaranteed" in result.output
    bad = runner.invoke(app, [*args[:-2], "--new-item-slots", "9", "--out", str(out)])
    assert bad.exit_code == 2 and "--new-item-slots" in bad.output
    bad = runner.invoke(app, [*args[:-2], "--mapper", "magic"])
    assert bad.exit_code == 2 and "--mapper" in bad.output


def _edited_copy(run, tmp_path, edit) -> object:
    """A copy of the run whose mapping.json's regression entry went through ``edit``."""
    copy = tmp_path / "run-copy"
    shutil.copytree(run, copy)
    record = json.loads((copy / MAPPING).read_text())
    edit(record["methods"]["regression"])
    (copy / MAPPING).write_text(json.dumps(record))
    return copy


@pytest.mark.slow  # the grown_run fixture trains and maps a model (about 75 s on a loaded host)
@pytest.mark.parametrize("likely", [True, False])
def test_serving_applies_the_stored_relevance_curves(grown_run, tmp_path, likely):
    run, folder, store, served = grown_run
    stored = MappingRecord.load(run).methods["regression"].relevance
    assert served.calibration.mode == "relevance" and served.calibration.relevance == stored
    assert stored.source == "calib"  # a random split has no cold items: learned on held-out warm items

    def edit(entry):  # new items likelier than every warm item, or never relevant
        entry["relevance"]["p_warm"] = [0.2] * entry["relevance"]["k"]
        entry["relevance"]["p_new"] = [0.5 if likely else 0.0] * len(entry["relevance"]["p_new"])

    edited = load_servable(_edited_copy(run, tmp_path, edit), store, catalog=folder, mapper="regression")
    unseen = set(edited.item_ids[edited.no_behaviour.cpu().numpy()])
    recs = recommend(edited, RecommendRequest(k=3))
    shown = recs["item_id"].isin(unseen)
    assert len(recs) == 3 * 20 and len(unseen) >= 4
    assert bool(shown.all()) if likely else not bool(shown.any())  # no evaluation data needed: the curves decide


@pytest.mark.slow  # the grown_run fixture trains and maps a model (about 75 s on a loaded host)
def test_an_old_mapping_json_without_curves_loads_and_falls_back_to_expected(grown_run, tmp_path):
    run, folder, store, _ = grown_run

    def edit(entry):  # as befa map wrote it before relevance mode
        entry.pop("relevance")
        entry["calibration"] = "expected"
        entry["hybrid_by_calibration"].pop("relevance")

    old = _edited_copy(run, tmp_path, edit)
    assert MappingRecord.load(old).methods["regression"].relevance is None
    served = load_servable(old, store, catalog=folder, mapper="regression")
    assert served.calibration.mode == "expected" and "no relevance curves" in served.calibration_note
    quantile = load_servable(old, store, catalog=folder, mapper="regression", calibration="quantile")
    assert quantile.calibration.mode == "quantile" and quantile.calibration_note is None  # asked for: no note
    out = tmp_path / "old.parquet"
    args = ["recommend", str(old), "--catalog", str(folder), "--feature-store", str(store.root), "--k", "3",
            "--mapper", "regression", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert (
        "calibrated (expected)" in result.output and "note:" in result.output and "no relevance curves" in result.output
    )
    assert read_manifest(out)["calibration"] == "expected" and read_manifest(out)["calibration_note"]
    bad = runner.invoke(app, [*args, "--calibration", "best"])
    assert bad.exit_code == 2 and "--calibration" in bad.output


@pytest.mark.slow  # the grown_run fixture trains and maps a model (about 75 s on a loaded host)
def test_befa_map_fits_on_the_items_the_run_trained_after_its_catalog_grew(grown_run, tmp_path):
    """The run's own catalog gains items after training (recorded path = the grown folder):
    `befa map` fits on the run's items (its items.parquet), not on the catalog as it is now."""
    run, folder, store, _ = grown_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / MAPPING).unlink()
    record = json.loads((copy / "run.json").read_text())
    record["sources"]["catalog"] = str(folder)  # as if the catalog folder had grown in place
    (copy / "run.json").write_text(json.dumps(record))
    args = ["map", str(copy), "--methods", "regression", "--feature-store", str(store.root)]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    mapped = MappingRecord.load(copy).methods["regression"]
    trained_items = len(pd.read_parquet(copy / "items.parquet"))
    assert trained_items == 30  # the grown folder has 34
    assert mapped.mapped_items < trained_items  # the run's never-trained items, none of the four new ones


@pytest.mark.slow  # the grown_run fixture trains and maps a model (about 75 s on a loaded host)
def test_a_mapper_blended_with_the_content_floor_serves_new_items_to_their_clusters_users(grown_run, tmp_path):
    """A mapping.json whose mapper was blended with ItemKNN-CBF (cbf_weight > 0, as befa map
    records it on a cold-items split) serves through the blended score."""
    run, folder, store, _ = grown_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    record = json.loads((copy / MAPPING).read_text())
    record["methods"]["regression"]["cbf_weight"] = 0.5
    (copy / MAPPING).write_text(json.dumps(record))
    served = load_servable(copy, store, catalog=folder, mapper="regression")
    calibration = served.calibration
    assert calibration is not None and calibration.mapped_users.size(1) > served.user_emb.size(1)  # widened sides
    recs = recommend(served, RecommendRequest(k=34, seen="none"))
    assert torch.isfinite(torch.tensor(recs["score"].to_numpy())).all()
    recs["a_user"] = recs["user_id"].str[1:].astype(int) < 10
    mean_rank = recs[recs["item_id"].isin(NEW)].groupby("a_user")["rank"].mean()
    assert mean_rank[True] < mean_rank[False]
