"""A new user's first hour with their own sparse catalog (issue 16, the catalog half).

Every catalog here is built inside the test: a small fashion shop with zero-padded ids,
photos in nested folders (real JPEGs made with PIL), sparse and repeated purchases."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import pipeline.cli.job as cli_job
from pipeline.cli.main import app
from pipeline.data.catalog import Catalog, CatalogError
from pipeline.data.importers import IMPORTERS
from pipeline.data.ingest import ingest
from pipeline.data.splits import Split, split_random
from pipeline.data.versions import files_dir, is_ingested, meta_path
from pipeline.job.params import PipelineError, PipelineParams, resolve_importer, validate_params
from pipeline.job.watch import register_catalog, registered_params, watch_catalogs
from pipeline.settings import get_settings

runner = CliRunner()
TEMPLATE = "photos/{item_id[:3]}/{item_id}.jpg"


def jpeg(k: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 28), (17 * k % 256, 90, 200 - 7 * k % 200)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def item_ids(n: int) -> list[str]:
    return [f"{k:06d}" if k % 2 else f"10{k:04d}" for k in range(1, n + 1)]  # zero-padded, and two prefixes


def make_shop(root: Path, n_items: int = 12, photos: bool = True) -> dict[str, Path]:
    """Items with zero-padded ids, photos at photos/<first 3 id chars>/<id>.jpg, and sparse
    purchases with repeats; the last two items are never bought."""
    root.mkdir(parents=True, exist_ok=True)
    ids = item_ids(n_items)
    pd.DataFrame(
        {"item_id": ids, "title": [f"dress {i}" for i in ids], "text": [f"A summer dress, model {i}." for i in ids]}
    ).to_csv(root / "items.csv", index=False)
    if photos:
        for k, iid in enumerate(ids):
            path = root / "photos" / iid[:3] / f"{iid}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg(k))
    rows = []
    for u in range(6):
        for j in range(4):
            rows.append((f"c{u}", ids[(u * 3 + j) % (n_items - 2)], 1_700_000_000 + 100 * u + j))
    rows += [("c0", rows[0][1], 1_700_009_000), ("c0", rows[0][1], 1_700_009_500), ("c3", rows[13][1], 1_700_009_900)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(root / "events.csv", index=False)
    return {"items": root / "items.csv", "interactions": root / "events.csv"}


@pytest.fixture
def settings(tmp_path):
    return get_settings(home=tmp_path / "home", datasets_root=tmp_path / "datasets", feature_store=str(tmp_path / "fs"))


def cli(args: list[str], settings) -> object:
    return runner.invoke(
        app, args, env={"BEFA_HOME": str(settings.home), "BEFA_DATASETS_ROOT": str(settings.datasets_root)}
    )


# -- 5: images: a template for nested folders, and no silent zero ----------------------
def test_image_template_finds_photos_in_nested_folders(tmp_path, settings):
    shop = make_shop(tmp_path / "shop")
    catalog, report = ingest(
        "generic", settings, name="shop", images=tmp_path / "shop", image_template=TEMPLATE, **shop
    )
    assert report.counts_out["items_with_image"] == 12 and not report.warnings
    first = catalog.items.iloc[0]
    assert first["image"] == str(tmp_path / "shop" / "photos" / "000" / "000001.jpg")
    assert first["image_hash"] is not None


@pytest.mark.parametrize("template", ["{item_id.__class__}", "{0}", "photos/{id}.jpg", "photos/shop.jpg"])
def test_image_template_allows_the_item_id_and_slices_only(tmp_path, settings, template):
    shop = make_shop(tmp_path / "shop", photos=False)
    with pytest.raises(ValueError, match="--image-template") as err:
        ingest("generic", settings, name="shop", image_template=template, **shop)
    assert "image_template" not in str(err.value)


def test_wrong_template_fails_unless_allowed(tmp_path, settings):
    shop = make_shop(tmp_path / "shop")
    wrong = "photos/{item_id}.jpg"  # forgets the sub-folder: every image is missing
    with pytest.raises(CatalogError) as err:
        ingest("generic", settings, name="shop", image_template=wrong, **shop)
    msg = str(err.value)
    assert "12 of 12 images (100%) cannot be used (12 image file missing" in msg
    assert "--max-missing-images 20%" in msg and "--allow-missing-images" in msg
    assert not is_ingested(settings.catalog_dir("shop"))  # nothing half-written

    catalog, report = ingest("generic", settings, name="shop", image_template=wrong, allow_missing_images=True, **shop)
    assert catalog.items["image_hash"].isna().all() and catalog.items["text_hash"].notna().all()
    assert any("ingested anyway (--allow-missing-images)" in w for w in report.warnings)


def test_images_folder_without_column_or_template_is_an_error(tmp_path, settings):
    shop = make_shop(tmp_path / "shop")
    with pytest.raises(CatalogError, match=r"--images .* no 'image' column and there is no --image-template"):
        ingest("generic", settings, name="shop", images=tmp_path / "shop" / "photos", **shop)


def test_missing_images_hint_at_leading_zeros_and_case(tmp_path, settings):
    shop = make_shop(tmp_path / "shop", photos=False)
    ids = item_ids(12)
    flat = tmp_path / "shop" / "flat"
    flat.mkdir()
    for k, iid in enumerate(ids):  # the photo export dropped the zeros, or wrote upper-case extensions
        name = f"{int(iid)}.jpg" if k < 8 else f"{iid}.JPG"
        (flat / name).write_bytes(jpeg(k))
    with pytest.raises(CatalogError) as err:
        ingest("generic", settings, name="shop", images=flat, image_template="{item_id}.jpg", **shop)
    msg = str(err.value)
    assert "8 of 12 images (67%) cannot be used" in msg  # 100002.jpg, ... have no zeros to lose: found
    assert "4 missing images have a file whose name differs only in leading zeros (e.g. '000001.jpg' vs '1.jpg'" in msg
    assert "4 missing images have a file whose name differs only in case (e.g. '000009.jpg' vs '000009.JPG'" in msg


# -- 6: messages speak CLI, name rows a user can find -----------------------------------
def test_every_interaction_unknown_says_so_and_why(tmp_path, settings):
    shop = make_shop(tmp_path / "shop", photos=False)
    items = pd.read_csv(shop["items"], dtype=str)
    items["item_id"] = items["item_id"].map(lambda i: f"{int(i):08d}")
    items.to_csv(shop["items"], index=False)
    events = pd.read_csv(shop["interactions"], dtype=str)
    events["item_id"] = events["item_id"].map(lambda i: str(int(i)))  # a spreadsheet round trip ate the zeros
    events.to_csv(shop["interactions"], index=False)
    for policy in ("error", "skip"):
        with pytest.raises(CatalogError) as err:
            ingest("generic", settings, name="shop", on_unknown_items=policy, **shop)
        msg = str(err.value)
        assert "none of the 27 interactions names an item of the item table" in msg
        assert "'1' (line 2)" in msg and "item table ids look like '00000001'" in msg
        assert "once case and leading zeros are ignored (e.g. '1' vs '00000001')" in msg and "in leading zeros" in msg


def test_unknown_item_error_names_file_line_and_flag(tmp_path, settings):
    shop = make_shop(tmp_path / "shop", photos=False)
    events = pd.read_csv(shop["interactions"], dtype=str)
    events.loc[4, "item_id"] = "999999"
    events.to_parquet(tmp_path / "events.parquet")
    with pytest.raises(CatalogError) as err:
        ingest("generic", settings, name="shop", items=shop["items"], interactions=tmp_path / "events.parquet")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'events.parquet'}, data row 5: 1 interaction(s)")
    assert "'999999' (data row 5)" in msg and "--on-unknown-items skip" in msg and "on_unknown_items" not in msg

    result = cli(
        [
            "ingest",
            "generic",
            "--as",
            "shop",
            "--items",
            str(shop["items"]),
            "--interactions",
            str(tmp_path / "events.parquet"),
            "--on-unknown-items",
            "maybe",
        ],
        settings,
    )
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert "--on-unknown-items: Input should be 'error' or 'skip'" in " ".join(result.output.split())


# -- 4: one rule for repeats, stated at ingest, kept by the split ------------------------
def test_repeats_are_folded_once_at_ingest_and_the_split_agrees(tmp_path, settings):
    shop = make_shop(tmp_path / "shop", photos=False)
    catalog, report = ingest("generic", settings, name="shop", **shop)
    assert report.counts_in["interactions"] == 27
    assert report.counts_out["repeat_interactions_folded"] == 3 and report.counts_out["interactions"] == 24
    (note,) = [n for n in report.notes if n.startswith("repeats:")]
    assert "3 interactions repeat an earlier (user, item) pair (2 pairs)" in note and "latest event" in note
    inter = catalog.interactions
    assert not inter.duplicated(["user_id", "item_id"]).any()
    c0 = inter[(inter["user_id"] == "c0") & (inter["item_id"] == "000001")]
    assert c0["timestamp"].tolist() == [1_700_009_500]  # the latest of the three
    split = split_random(catalog, seed=1)
    assert sum(split.counts().values()) == len(inter)  # nothing else is dropped by the split


# -- 14d: items without interactions are counted ----------------------------------------
def test_report_counts_items_without_interactions(tmp_path, settings):
    shop = make_shop(tmp_path / "shop", photos=False)
    _, report = ingest("generic", settings, name="shop", **shop)
    assert report.counts_out["items_without_interactions"] == 2
    assert any("2 of 12 items (17%) have no interaction" in n for n in report.notes)
    md = (files_dir(settings.catalog_dir("shop")) / "ingest_report.md").read_text()
    assert "| items_without_interactions |  | 2 |" in md


# -- 2: splits survive content edits; when one must go, ingest says so -------------------
def test_reingest_keeps_splits_when_only_content_changed(tmp_path, settings):
    shop = make_shop(tmp_path / "shop")
    opts = dict(name="shop", images=tmp_path / "shop", image_template=TEMPLATE, **shop)
    catalog, _ = ingest("generic", settings, **opts)
    splits = catalog.splits_dir  # shared by the versions with these interactions
    split_random(catalog, seed=3).save(splits)
    before = Split.load(splits / "random-s3.parquet").id

    items = pd.read_csv(shop["items"], dtype=str)
    items.loc[0, "text"] = "A summer dress, now in linen."
    items.loc[len(items)] = ["200001", "new scarf", "A silk scarf."]  # a new item, appended, nobody bought it yet
    items.to_csv(shop["items"], index=False)
    (tmp_path / "shop" / "photos" / "200").mkdir()
    (tmp_path / "shop" / "photos" / "200" / "200001.jpg").write_bytes(jpeg(40))
    (tmp_path / "shop" / "photos" / "000" / "000003.jpg").write_bytes(jpeg(41))
    new, report = ingest("generic", settings, **opts)
    assert new.fingerprint() != catalog.fingerprint() and new.version != catalog.version and new.splits_dir == splits
    assert Split.load(splits / "random-s3.parquet").id == before == split_random(new, seed=3).id
    assert any("interactions unchanged: splits kept (random-s3)" in n for n in report.notes) and not report.warnings

    events = pd.read_csv(shop["interactions"], dtype=str)
    events.loc[len(events)] = ["c5", "200001", "1700020000"]
    events.to_csv(shop["interactions"], index=False)
    latest, report = ingest("generic", settings, **opts)
    assert not (latest.splits_dir / "random-s3.parquet").exists()
    assert Split.load(splits / "random-s3.parquet").id == before  # the previous versions keep theirs until pruned
    (warning,) = report.warnings
    assert warning.startswith("splits random-s3 do not apply to the new catalog version: the interactions changed")
    assert "splits random-s3 do not apply" in (files_dir(settings.catalog_dir("shop")) / "ingest_report.md").read_text()


# -- 14a, 1: the command line -----------------------------------------------------------
def test_ingest_generic_help_is_the_generic_help(settings):
    result = cli(["ingest", "generic", "--help"], settings)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Usage:" in out and "ingest generic [OPTIONS]" in out
    assert "Item table" in out and "--image-template" in out and "--allow-missing-images" in out and "--items" in out
    assert "--folder" not in out and "--verify" not in out  # mmrec's and the known datasets' options are not generic's


def test_ingest_cli_records_how_to_reingest_and_prints_warnings(tmp_path, settings):
    shop = make_shop(tmp_path / "shop")
    result = cli(
        [
            "ingest",
            "generic",
            "--as",
            "shop",
            "--items",
            str(shop["items"]),
            "--interactions",
            str(shop["interactions"]),
            "--images",
            str(tmp_path / "shop"),
            "--image-template",
            "photos/{item_id}.jpg",
            "--allow-missing-images",
        ],
        settings,
    )
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "12 of 12 images (100%) cannot be used" in result.output
    assert "repeats: 3 interactions repeat" in result.output
    record = json.loads(meta_path(settings.catalog_dir("shop")).read_text())["ingest"]
    assert record["importer"] == "generic"
    assert (
        record["options"]["items"] == str(shop["items"])
        and record["options"]["image_template"] == "photos/{item_id}.jpg"
    )
    assert record["options"]["allow_missing_images"] is True
    assert Catalog.load(settings.catalog_dir("shop")).meta["ingest"] == record


def test_run_takes_the_ingest_options_derived_from_the_importers(settings):
    # a wide terminal: rich shortens long flag names to the column width (--keep-negative-ratin…)
    env = {"BEFA_HOME": str(settings.home), "BEFA_DATASETS_ROOT": str(settings.datasets_root), "COLUMNS": "200"}
    result = runner.invoke(app, ["run", "--help"], env=env)
    assert result.exit_code == 0, result.output
    for flag in (
        "--items",
        "--interactions",
        "--images",
        "--image-template",
        "--max-missing-images",
        "--column",
        "--on-unknown-items",
        "--importer",
        "--ingest",
    ):
        assert flag in result.output, flag
    for key, options in ((k, imp.Options.model_fields) for k, imp in IMPORTERS.items()):
        for field in options:
            if field not in ("root", "name", "image_cache") and not field.endswith("_column"):
                assert "--" + field.replace("_", "-") in result.output, (key, field)


# -- 1: every catalog that was run can be watched; one bad catalog does not stop the others
TINY_ENCODER = "imagebind:tiny@random"


def test_watch_reingests_cli_catalogs_and_skips_a_failing_one(tmp_path, settings):
    shop = make_shop(tmp_path / "shop")
    result = cli(
        [
            "ingest",
            "generic",
            "--as",
            "shop",
            "--items",
            str(shop["items"]),
            "--interactions",
            str(shop["interactions"]),
            "--images",
            str(tmp_path / "shop"),
            "--image-template",
            TEMPLATE,
        ],
        settings,
    )
    assert result.exit_code == 0, result.output
    split_random(Catalog.load(settings.catalog_dir("shop")), seed=5).save(
        Catalog.load(settings.catalog_dir("shop")).splits_dir
    )
    # what `befa run shop` registers: no ingest options given, the catalog's own record is used
    register_catalog(settings, PipelineParams(dataset="shop", encoder=TINY_ENCODER, models=["lightgcn"]))
    assert registered_params(settings, "shop").ingest_options["image_template"] == TEMPLATE
    gone = tmp_path / "gone"
    register_catalog(
        settings,
        PipelineParams(
            dataset="gone",
            encoder=TINY_ENCODER,
            importer="generic",
            ingest_options={"items": str(gone / "items.csv"), "interactions": str(gone / "e.csv")},
        ),
    )
    register_catalog(
        settings, PipelineParams(dataset="legacy", encoder=TINY_ENCODER)
    )  # stored before catalogs recorded it

    changes = {c.catalog: c for c in watch_catalogs(settings)}
    # re-ingested, same content; but no pipeline run of it ever succeeded: a retrain is due
    assert changes["shop"].error is None and changes["shop"].retrain_only and not changes["shop"].diff.any
    assert changes["gone"].error.startswith(f"{gone / 'items.csv'}: missing item table")
    assert "nothing says which files it is ingested from" in changes["legacy"].error

    items = pd.read_csv(shop["items"], dtype=str)
    items.loc[2, "text"] = "A summer dress in a new colour."
    items.to_csv(shop["items"], index=False)
    result = cli(["watch"], settings)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # failures reported, no traceback
    out = " ".join(result.output.split())
    assert "gone: watch failed, skipped:" in out and "legacy: watch failed, skipped:" in out
    assert "2 of 3 catalogs failed: gone, legacy; the others were watched" in out
    # the sentence the Prefect watch logs, not a dict
    assert "shop changed (content changed): +0 -0 items, 1 texts and 0 images edited; 1 items re-encoded" in out
    assert "'catalog'" not in out and "{" not in out
    assert (
        Catalog.load(settings.catalog_dir("shop")).splits_dir / "random-s5.parquet"
    ).exists()  # a text edit keeps the split


# -- end to end, as a new user ------------------------------------------------------------
def test_new_user_ingest_run_edit_watch(tmp_path, settings):
    shop = make_shop(tmp_path / "shop")
    result = cli(
        [
            "ingest",
            "generic",
            "--as",
            "shop",
            "--items",
            str(shop["items"]),
            "--interactions",
            str(shop["interactions"]),
            "--images",
            str(tmp_path / "shop"),
            "--image-template",
            TEMPLATE,
        ],
        settings,
    )
    assert result.exit_code == 0, result.output
    result = cli(
        [
            "run",
            "shop",
            "--encoder",
            TINY_ENCODER,
            "--models",
            "lightgcn",
            "--adapters",
            "none",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--run-name",
            "first",
        ],
        settings,
    )
    assert result.exit_code == 0, result.output
    folder = settings.runs_dir / "pipelines" / "first"
    summary = json.loads((folder / "summary.json").read_text())
    assert {r["model"] for r in summary["runs"]} >= {"mostpop", "lightgcn"}
    assert "mostpop" in (folder / "report.md").read_text().lower()
    split_path = Path(summary["split"]["path"])
    assert registered_params(settings, "shop").ingest_options["image_template"] == TEMPLATE

    ids = item_ids(12)
    items = pd.read_csv(shop["items"], dtype=str)
    items.loc[2, "text"] = "A summer dress, now with pockets."
    items.to_csv(shop["items"], index=False)
    (tmp_path / "shop" / "photos" / ids[4][:3] / f"{ids[4]}.jpg").write_bytes(jpeg(77))
    result = cli(["watch"], settings)
    assert result.exit_code == 0, result.output
    state = json.loads((settings.home / "watch" / "state" / "shop.json").read_text())["last"]
    assert state["diff"]["text_changed"] == [ids[2]] and state["diff"]["image_changed"] == [ids[4]]
    assert sorted(state["items_reencoded"]) == sorted([ids[2], ids[4]])
    assert state["encoded"] == {"image": 1, "text": 1} and state["reused"] == {"image": 11, "text": 11}
    assert split_path.exists() and Split.load(split_path).id == summary["split"]["id"]  # the split survived
    (again,) = watch_catalogs(settings)  # nothing new, but the served recommendations are now older than the catalog
    assert again.changed and again.retrain_only and again.reason.startswith("retrain due")


def test_run_passes_generic_ingest_options_to_the_pipeline(tmp_path, settings, monkeypatch):
    """`befa run NAME --items ...` gives the pipeline what the deployment's ingest_options give it."""
    shop = make_shop(tmp_path / "shop")
    seen = {}

    def validate_only(params, settings_, log=None):
        seen["params"] = validate_params(params, settings_)
        raise PipelineError("validated; stopping before any work")

    monkeypatch.setattr(cli_job, "run_pipeline", validate_only)
    monkeypatch.chdir(tmp_path)
    result = cli(
        [
            "run",
            "shop2",
            "--items",
            "shop/items.csv",
            "--interactions",
            "shop/events.csv",
            "--images",
            "shop",
            "--image-template",
            TEMPLATE,
            "--column",
            "text_column=text",
            "--allow-missing-images",
            "--encoder",
            TINY_ENCODER,
        ],
        settings,
    )
    assert "validated; stopping" in result.output, result.output
    params = seen["params"]
    assert resolve_importer(params) == "generic" and params.ingest == "auto"
    assert params.ingest_options == {
        "items": shop["items"],
        "interactions": shop["interactions"],
        "images": tmp_path / "shop",
        "image_template": TEMPLATE,
        "allow_missing_images": True,
        "text_column": "text",
    }
    importer, options = params.ingest_call()
    catalog, _ = ingest(importer, settings, **options)
    assert catalog.name == "shop2" and catalog.items["image_hash"].notna().all()


def test_some_unknown_ids_get_the_zero_padding_hint(tmp_path, settings):
    shop = make_shop(tmp_path / "shop", photos=False)
    events = pd.read_csv(shop["interactions"], dtype=str)
    events.loc[[0, 2], "item_id"] = events.loc[[0, 2], "item_id"].map(lambda i: str(int(i)))  # '000001' -> '1'
    events.to_csv(shop["interactions"], index=False)
    with pytest.raises(CatalogError) as err:
        ingest("generic", settings, name="shop", **shop)
    msg = str(err.value)
    assert msg.startswith(
        f"{shop['interactions']}, data row 1 (line 2): 2 interaction(s) name items that are not in the item table"
    )
    assert "'1' (line 2), '3' (line 4)" in msg
    assert "2 of 2 unknown ids match an item id once case and leading zeros are ignored" in msg
    _, report = ingest("generic", settings, name="shop", on_unknown_items="skip", **shop)
    assert any(
        w.startswith("2 interactions skipped for unknown items: 2 of 2 unknown ids match") for w in report.warnings
    )


def test_a_registration_without_options_watches_the_recorded_files(tmp_path, settings):
    """A registration made before runs passed ingest options: the stamp must still cover the files."""
    shop = make_shop(tmp_path / "shop", photos=False)
    ingest("generic", settings, name="shop", **shop)
    registry = settings.home / "watch" / "catalogs.json"
    registry.parent.mkdir(parents=True)
    params = PipelineParams(dataset="shop", encoder=TINY_ENCODER).model_dump(mode="json")
    registry.write_text(json.dumps({"shop": {"params": params, "registered_at": "2026-11-30T00:00:00+00:00"}}))
    assert watch_catalogs(settings)[0].error is None
    events = pd.read_csv(shop["interactions"], dtype=str)
    events.loc[len(events)] = ["c9", item_ids(12)[0], "1700030000"]
    events.to_csv(shop["interactions"], index=False)
    (change,) = watch_catalogs(settings)
    assert change.changed and change.diff.interactions_changed and change.error is None
