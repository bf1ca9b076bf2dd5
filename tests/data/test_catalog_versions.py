"""Catalog versions (issue 14, item 2): one ingest is one unit, switched in atomically.

A killed re-ingest (an exception mid-write, and a real ``kill -9`` at a pause point) leaves
the previous version and its splits intact and loadable; two concurrent ingests of one
catalog take its lock in turn and end consistent; ``Catalog.load`` names a tampered file;
a catalog folder written before versions still loads and is adopted by the next ingest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import pipeline.data.catalog as catalog_module
from pipeline.cli.main import app
from pipeline.data.catalog import Catalog, CatalogError
from pipeline.data.ingest import ingest
from pipeline.data.splits import Split, split_random
from pipeline.data.stats import catalog_stats
from pipeline.data.versions import (
    CURRENT,
    KEEP_VERSIONS,
    VERSIONS,
    CatalogLockTimeout,
    catalog_lock,
    current_version,
    files_dir,
    version_ids,
)
from pipeline.settings import get_settings

REPO = Path(__file__).resolve().parents[2]


def jpeg(k: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (40 * k % 256, 100, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def make_catalog(root: Path, n_users: int = 5, n_items: int = 6) -> dict[str, Path]:
    """Items with real JPEGs next to them, and every user buying four items."""
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"i{k}" for k in range(n_items)]
    for k, iid in enumerate(ids):
        (root / f"{iid}.jpg").write_bytes(jpeg(k))
    pd.DataFrame({"item_id": ids, "title": [f"item {i}" for i in ids], "image": [f"{i}.jpg" for i in ids]}).to_csv(
        root / "items.csv", index=False
    )
    rows = [
        (f"u{u}", ids[(u + j) % n_items], 1_700_000_000 + 10 * u + j, 1 + (u + j) % 5)
        for u in range(n_users)
        for j in range(4)
    ]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]).to_csv(root / "events.csv", index=False)
    return {"items": root / "items.csv", "interactions": root / "events.csv"}


def tree_hashes(root: Path, skip=lambda p: False) -> dict[str, str]:
    """sha256 of every file under ``root`` (the state a failed command must leave as it was)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not skip(p.relative_to(root))
    }


@pytest.fixture
def settings(tmp_path):
    return get_settings(home=tmp_path / "home", datasets_root=tmp_path / "datasets", feature_store=str(tmp_path / "fs"))


def _ingest_with_split(tmp_path, settings):
    paths = make_catalog(tmp_path / "src")
    catalog, _ = ingest("generic", settings, name="shop", **paths)
    split = split_random(catalog, seed=1)
    split.save(catalog.splits_dir)
    return paths, catalog, split


def _add_interaction(paths) -> None:
    events = pd.read_csv(paths["interactions"], dtype=str)
    events.loc[len(events)] = [f"u{len(events) + 100}", "i0", "1700009999", "5"]  # a new user each time
    events.to_csv(paths["interactions"], index=False)


def _assert_previous_intact(settings, catalog: Catalog, split: Split) -> None:
    again = Catalog.load(settings.catalog_dir("shop"))
    assert again.version == catalog.version and again.fingerprint() == catalog.fingerprint()
    assert Split.load(again.splits_dir / f"{split.name}.parquet").id == split.id
    assert catalog_stats(settings.catalog_dir("shop"))["splits"][split.name]["id"] == split.id


# -- layout ---------------------------------------------------------------------------
def test_ingest_writes_a_version_switches_current_and_keeps_the_last_few(tmp_path, settings):
    paths = make_catalog(tmp_path / "src")
    first, _ = ingest("generic", settings, name="shop", **paths)
    folder = settings.catalog_dir("shop")
    assert (folder / CURRENT).read_text().strip() == first.version == current_version(folder)
    version_dir = folder / VERSIONS / first.version
    assert files_dir(folder) == version_dir
    meta = json.loads((version_dir / "catalog.json").read_text())
    assert meta["files"]["interactions.parquet"]["rows"] == 20 and meta["num_interactions"] == 20
    assert (
        meta["files"]["items.parquet"]["sha256"]
        == hashlib.sha256((version_dir / "items.parquet").read_bytes()).hexdigest()
    )
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "catalog.json",
        "ingest_report.json",
        "ingest_report.md",
        "interactions.parquet",
        "items.parquet",
        "rejects.parquet",
    ]
    assert not (folder / "items.parquet").exists()  # nothing at the top but the pointer, the lock and the folders

    split_random(first, seed=1).save(first.splits_dir)
    seen, split_dirs = [first.version], [first.splits_dir]
    for _ in range(KEEP_VERSIONS + 1):
        _add_interaction(paths)  # changes the interactions: each version has its own split folder
        new, _ = ingest("generic", settings, name="shop", **paths)
        split_random(new, seed=1).save(new.splits_dir)
        seen.append(new.version)
        split_dirs.append(new.splits_dir)
    assert version_ids(folder) == seen[-KEEP_VERSIONS:]
    assert current_version(folder) == seen[-1]
    # the split folders of pruned versions went with them (pruning runs at the ingest after a split is made)
    assert [d.exists() for d in split_dirs] == [False, False, True, True, True]
    assert Catalog.load(folder).num_users == 5 + KEEP_VERSIONS + 1


# -- Catalog.load names the file that does not belong -----------------------------------
def test_load_names_a_file_from_another_ingest_or_edited(tmp_path, settings):
    paths = make_catalog(tmp_path / "src")
    old, _ = ingest("generic", settings, name="shop", **paths)
    _add_interaction(paths)
    new, _ = ingest("generic", settings, name="shop", **paths)
    folder = settings.catalog_dir("shop")
    old_dir, new_dir = folder / VERSIONS / old.version, folder / VERSIONS / new.version

    # the mix of issue 14: catalog.json of one run, interactions of another
    (new_dir / "interactions.parquet").write_bytes((old_dir / "interactions.parquet").read_bytes())
    with pytest.raises(CatalogError) as err:
        Catalog.load(folder)
    assert str(err.value).startswith(f"{new_dir / 'interactions.parquet'}: changed after ingest")

    # same row count, other content: the recorded sha256 tells
    table = pq.read_table(old_dir / "items.parquet").to_pandas()
    table.loc[0, "title"] = "edited by hand"
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), old_dir / "items.parquet")
    (folder / CURRENT).write_text(old.version + "\n")
    with pytest.raises(
        CatalogError, match=r"items\.parquet: changed after ingest: its sha256 is not the one catalog\.json records"
    ):
        Catalog.load(folder)

    (folder / CURRENT).write_text("0099-gone\n")  # a pointer to a version that is not there
    with pytest.raises(CatalogError) as err:
        Catalog.load(folder)
    assert str(err.value) == (
        f"{folder / CURRENT}: names version 0099-gone, "
        f"but {folder / VERSIONS / '0099-gone' / 'catalog.json'} is missing: "
        "the catalog folder was damaged; re-run `befa ingest`"
    )


# -- a killed re-ingest leaves the previous version and its splits usable ----------------------
def test_an_exception_mid_write_leaves_the_previous_version_and_its_splits(tmp_path, settings, monkeypatch):
    paths, catalog, split = _ingest_with_split(tmp_path, settings)
    home_before = tree_hashes(settings.home)
    _add_interaction(paths)

    def crash(name):
        if name == "catalog-write":
            raise RuntimeError("disk full (injected)")

    monkeypatch.setattr(catalog_module, "pause_point", crash)
    with pytest.raises(RuntimeError, match="injected"):
        ingest("generic", settings, name="shop", **paths)
    monkeypatch.undo()
    # the half-written version was removed by its own writer; nothing else changed
    assert tree_hashes(settings.home) == home_before
    _assert_previous_intact(settings, catalog, split)

    new, report = ingest("generic", settings, name="shop", **paths)  # and the next ingest works
    assert new.version != catalog.version and new.num_users == 6
    assert any("splits random-s1 do not apply to the new catalog version" in w for w in report.warnings)


def _ingest_process(settings, paths, env_extra: dict[str, str], *extra: str) -> subprocess.Popen:
    env = dict(os.environ, BEFA_HOME=str(settings.home), BEFA_DATASETS_ROOT=str(settings.datasets_root), **env_extra)
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli.main",
        "ingest",
        "generic",
        "--as",
        "shop",
        "--items",
        str(paths["items"]),
        "--interactions",
        str(paths["interactions"]),
        *extra,
    ]
    out = open(settings.home.parent / f"ingest-out-{time.monotonic_ns()}.txt", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    proc.out_path = out.name  # type: ignore[attr-defined]
    return proc


def _wait_for(predicate, proc: subprocess.Popen, what: str) -> None:
    """Poll until ``predicate()`` holds; fail when the process ended first (no timing assertion)."""
    deadline = time.monotonic() + 120
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the ingest exited ({proc.returncode}) before {what}: {Path(proc.out_path).read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_kill_9_mid_ingest_leaves_the_previous_version_and_its_splits(tmp_path, settings):
    paths, catalog, split = _ingest_with_split(tmp_path, settings)
    folder = settings.catalog_dir("shop")
    before = tree_hashes(folder)
    _add_interaction(paths)
    pause = tmp_path / "pause"
    proc = _ingest_process(settings, paths, {"BEFA_PAUSE_AT": "catalog-write", "BEFA_PAUSE_DIR": str(pause)})
    _wait_for(lambda: (pause / "catalog-write.reached").exists(), proc, "the pause point")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # the killed writer left its temporary version folder (and the lock file); all else as before
    def leftover(rel):
        return rel.parts[:2] and rel.parts[0] == VERSIONS and rel.parts[1].startswith(".tmp-") or rel.name == ".lock"

    assert tree_hashes(folder, skip=leftover) == {k: v for k, v in before.items() if k != ".lock"}
    assert any(p.name.startswith(".tmp-") for p in (folder / VERSIONS).iterdir())
    _assert_previous_intact(settings, catalog, split)

    new, _ = ingest("generic", settings, name="shop", **paths)  # the OS released the dead process's lock
    assert new.num_users == 6 and not any(p.name.startswith(".tmp-") for p in (folder / VERSIONS).iterdir())


def test_an_ingest_killed_at_the_switch_leaves_a_tmp_current_that_gc_and_the_next_ingest_remove(tmp_path, settings):
    paths = make_catalog(tmp_path / "src")
    ingest("generic", settings, name="shop", **paths)
    folder = settings.catalog_dir("shop")
    first = current_version(folder)
    _add_interaction(paths)
    pause = tmp_path / "pause"
    proc = _ingest_process(settings, paths, {"BEFA_PAUSE_AT": "write:CURRENT", "BEFA_PAUSE_DIR": str(pause)})
    _wait_for(lambda: (pause / "write_CURRENT.reached").exists(), proc, "the pause point")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (left,) = folder.glob(".tmp-*-CURRENT")  # the new CURRENT, written, never renamed into place
    assert current_version(folder) == first and Catalog.load(folder).version == first

    # its name says its writer is dead: `befa gc` lists it at once, seconds old as it is
    env = {"BEFA_HOME": str(settings.home), "BEFA_FEATURE_STORE": str(settings.feature_store)}
    res = CliRunner().invoke(app, ["gc", "--dry-run"], env=env)
    assert res.exit_code == 0 and f"would remove {left}" in " ".join(res.output.split()) and left.exists()

    unknown = folder / ".tmp-abc123-CURRENT"  # one whose writer cannot be told (an older name)
    unknown.write_text(first + "\n")
    new, _ = ingest("generic", settings, name="shop", **paths)  # under the lock every top-level temporary is dead
    assert not list(folder.glob(".tmp-*")) and current_version(folder) == new.version != first


# -- two ingests at once take the lock in turn --------------------------------------------------
def test_two_concurrent_ingests_with_different_options_end_consistent(tmp_path, settings):
    paths = make_catalog(tmp_path / "src")
    pause = tmp_path / "pause"
    first = _ingest_process(settings, paths, {"BEFA_PAUSE_AT": "catalog-switch", "BEFA_PAUSE_DIR": str(pause)})
    _wait_for(lambda: (pause / "catalog-switch.reached").exists(), first, "the first ingest held the lock")
    second = _ingest_process(settings, paths, {}, "--min-rating", "3")
    _wait_for(lambda: "waiting up to" in Path(second.out_path).read_text(), second, "the second ingest waited")
    (pause / "catalog-switch.release").write_text("")
    assert first.wait(timeout=120) == 0, Path(first.out_path).read_text()
    assert second.wait(timeout=120) == 0, Path(second.out_path).read_text()
    out = Path(second.out_path).read_text()
    assert "another ingest (pid" in out and str(first.pid) in out

    folder = settings.catalog_dir("shop")
    loaded = Catalog.load(folder)  # verifies every file against catalog.json
    assert len(version_ids(folder)) == 2
    assert loaded.meta["ingest"]["options"]["min_rating"] == 3.0  # the second (waiting) one is current
    assert (loaded.interactions["rating"] >= 3).all() and loaded.meta["num_interactions"] == len(loaded.interactions)
    assert loaded.meta["fingerprint"] == loaded.fingerprint()


def test_a_lock_held_too_long_fails_clearly(tmp_path, settings):
    paths = make_catalog(tmp_path / "src")
    told = []
    with catalog_lock(settings.catalog_dir("shop")):
        with pytest.raises(
            CatalogLockTimeout, match=r"another ingest of this catalog held its lock .* for more than 0\.2 s"
        ):
            ingest("generic", settings, name="shop", lock_timeout_s=0.2, on_wait=told.append, **paths)
    assert len(told) == 1 and "waiting up to 0.2 s" in told[0]
    assert current_version(settings.catalog_dir("shop")) is None


# -- a folder written before versions -----------------------------------------------------------
def _write_unversioned(folder: Path, catalog: Catalog) -> None:
    """The layout the code before versions wrote: files at the top, splits/*.parquet."""
    catalog.write_files(folder)
    meta = json.loads((folder / "catalog.json").read_text())
    del meta["files"]  # it did not record file hashes
    (folder / "catalog.json").write_text(json.dumps(meta))


def test_an_unversioned_catalog_loads_and_the_next_ingest_adopts_its_splits(tmp_path, settings):
    paths = make_catalog(tmp_path / "src")
    built, _ = ingest("generic", settings, name="scratch", **paths)
    folder = settings.catalog_dir("shop")
    folder.mkdir(parents=True)
    built.name = "shop"
    _write_unversioned(folder, built)
    legacy = Catalog.load(folder)
    assert legacy.version is None and legacy.splits_dir == folder / "splits"
    split = split_random(legacy, seed=4)
    split.save(legacy.splits_dir)
    assert catalog_stats(folder)["splits"]["random-s4"]["id"] == split.id

    new, report = ingest("generic", settings, name="shop", **paths)  # same interactions
    assert (
        new.version is not None and not (folder / "items.parquet").exists() and not (folder / "catalog.json").exists()
    )
    assert (folder / "splits" / "random-s4.parquet").exists()  # left where it was: runs record split paths
    assert Split.load(Catalog.load(folder).splits_dir / "random-s4.parquet").id == split.id
    assert not report.warnings


def test_an_unversioned_catalog_with_a_short_file_names_it(tmp_path, settings):
    paths = make_catalog(tmp_path / "src")
    built, _ = ingest("generic", settings, name="shop", **paths)
    folder = tmp_path / "old"
    folder.mkdir()
    _write_unversioned(folder, built)
    short = built.interactions.iloc[:-3]
    pq.write_table(pa.Table.from_pandas(short, preserve_index=False), folder / "interactions.parquet")
    with pytest.raises(CatalogError) as err:
        Catalog.load(folder)
    assert str(err.value) == (
        f"{folder / 'interactions.parquet'}: holds 17 rows, but catalog.json records 20: the files come from different "
        "ingests; re-run `befa ingest`"
    )
