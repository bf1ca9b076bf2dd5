"""Fault injection at the named write points (issue 23, section 4: "keep it held").

One suite over one world: a tiny text-only catalog (``tests.job.test_small_catalogs``)
ingested, extracted and served by a MostPop pipeline run, registered for the watch. At a
named write point of each stage it injects a fault: the real CLI in a subprocess ``kill -9``ed
there (``storage.faults`` pause points, via ``tests.job.test_crash._kill_at``), a full disk
there (``ENOSPC`` raised at that atomic write, in-process: ``disk_full_at``), or a part of the
feature store cut short. Each time: nothing committed is lost (the previous catalog version,
snapshot, checkpoint, recommendation pair or served record is still current and reads back,
or is refused by name, never mixed), and the next run of the same command recovers. A case
leaves the world healthy for the next; a failed case makes the next one build a fresh world.

Every write point, and where its faults are injected (``CASES`` below is "here"):

| stage    | write point                    | fault      | checked                                       | test        |
| -------- | ------------------------------ | ---------- | --------------------------------------------- | ----------- |
| ingest   | catalog-switch                 | kill       | old version current, loads; next ingest ok    | here        |
| ingest   | write:CURRENT                  | full       | the same; no .tmp-* left                      | here        |
| ingest   | catalog-write, write:CURRENT   | kill       | home byte-identical; gc removes .tmp-*        | [versions]  |
| extract  | write:CURRENT (snapshot)       | kill, full | old snapshot reads; rerun encodes nothing 2x  | here        |
| extract  | extract-part, write:part-*     | kill       | rerun bit-identical to an uninterrupted run   | [crash]     |
| extract  | write:part-*                   | full       | message names the folder; snapshot kept       | [store_cli] |
| extract  | extract-locked                 | pause      | a second extraction waits, encodes nothing    | [crash]     |
| train    | write:run.json (3rd)           | kill       | last.pt loads; --resume keeps its epochs      | here        |
| train    | write:last.pt (2nd)            | full       | epoch 0's last.pt kept; --resume finishes     | here        |
| train    | write:last.pt (2nd)            | kill       | --resume gives the uninterrupted metrics      | [crash]     |
| recommend| write:recommendations.parquet  | full       | refused by name, never read as the old pair   | here        |
| recommend| write:recommendations.json     | kill, full | refused by name (new Parquet, no manifest)    | here        |
| recommend| each step of the pair          | raised     | old pair, new pair or refusal naming both     | [ranked]    |
| watch    | write:summary.json (retrain)   | kill, full | served pair kept; watch: retrain due; STALE   | here        |
| watch    | write:last.pt; recommend/report| kill/raise | retrain asked for again until one succeeds    | [served]    |
| store    | a part cut in half             | damage     | check --repair; extract re-encodes only it    | here        |

[versions] tests/data/test_catalog_versions.py, [crash] tests/job/test_crash.py, [store_cli]
tests/cli/test_store_cli.py, [ranked] tests/serving/test_ranked_files.py, [served]
tests/job/test_served.py.

Full disk: here, in CI, ``ENOSPC`` is raised at the atomic write's pause point, after its
temporary is written and before the rename: where a real ``ENOSPC`` at a write, the
``fsync`` or the rename leaves the write. CI runs unprivileged and cannot mount. A real
small filesystem (a tmpfs filled to the last byte, the same commands) needs root and a
mount: ``make fault-injection-root`` (``benchmarks/fault_injection_root.py``).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.data.catalog import Catalog
from pipeline.data.versions import VERSIONS, current_version
from pipeline.job.run import run_pipeline
from pipeline.job.served import current_catalog, served_record
from pipeline.serving.ranked_files import PairMismatch, read_ranked
from pipeline.settings import Settings, get_settings
from pipeline.training.record import FINISHED, LAST
from storage import atomic
from storage.atomic import TMP_PREFIX, clean_temporaries
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey
from tests.job.test_crash import _env, _kill_at
from tests.job.test_small_catalogs import TEXT_ENCODER, _write_csvs

runner = CliRunner()


@contextlib.contextmanager
def disk_full_at(point: str, hit: int = 1) -> Iterator[None]:
    """The ``hit``-th atomic write matching ``point`` (``write:<file name>``, shell patterns)
    finds the disk full: ``OSError(ENOSPC)`` where its temporary is written, before the rename."""
    real, seen = atomic.pause_point, [0]

    def full(name: str) -> None:
        if fnmatch.fnmatchcase(name, point):
            seen[0] += 1
            if seen[0] == hit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(atomic, "pause_point", full)
        yield
    assert seen[0] >= hit, f"{point} was reached {seen[0]} times, never the {hit}-th"


@dataclass
class World:
    root: Path
    settings: Settings
    files: dict[str, str]
    env: dict[str, str]
    catalog_dir: Path
    healthy: bool = True
    edits: Iterator[int] = field(default_factory=lambda: itertools.count(1))  # makes each edit unique

    def key(self) -> FeatureSetKey:
        (fp,) = [p.name for p in (self.settings.home / "features" / "shop").iterdir() if p.is_dir()]
        return FeatureSetKey("shop", fp, "text")

    def store(self) -> FeatureStore:
        return FeatureStore(str(self.settings.home / "features"))


def _build(root: Path, datasets_root: Path) -> World:
    files = _write_csvs(root / "src", n_users=40, n_items=30, per_user=6)
    home = root / "home"
    settings = get_settings(home=home, feature_store=str(home / "features"), datasets_root=datasets_root)
    params = {"dataset": "shop", "importer": "generic", "ingest_options": files, "encoder": TEXT_ENCODER}
    run_pipeline({**params, "models": ["mostpop"], "adapters": ["none"], "recommend_k": 3}, settings)
    return World(root, settings, files, _env(home, root / "pause", datasets_root), settings.catalog_dir("shop"))


_WORLD: dict[str, World] = {}  # the world the cases share, while they leave it healthy


@pytest.fixture
def world(tmp_path_factory, datasets_root) -> World:
    w = _WORLD.get("w")
    if w is None or not w.healthy:  # the first case, or the previous one failed half-way
        w = _WORLD["w"] = _build(tmp_path_factory.mktemp("world"), datasets_root)
    w.healthy = False  # until this case has recovered
    return w


def _invoke(w: World, *args: str):
    return runner.invoke(app, [str(a) for a in args], env=w.env)


def _said(output: str) -> str:
    return " ".join(output.split())  # rich wraps long lines


def _ok(w: World, *args: str) -> str:
    res = _invoke(w, *args)
    assert res.exit_code == 0, res.output
    return _said(res.output)


# -- the stages: prepare something new to commit (returns what is committed now), the command
# that commits it (and the one that recovers), what a full disk says, what a fault keeps, the recovery
@dataclass(frozen=True)
class Case:
    stage: str
    fault: str  # kill (SIGKILL at the point) or full (ENOSPC at the point)
    point: str
    hit: int = 1

    def __str__(self) -> str:
        return f"{self.stage}-{self.fault}-{self.point}" + (f"#{self.hit}" if self.hit > 1 else "")


S = dict[str, Any]  # one case's state: what was committed before the fault, where it writes


class Ingest:
    """A new customer with 3 purchases, re-ingested."""

    def prepare(self, w: World, case: Case) -> S:
        user, events = f"new-user-{next(w.edits)}", pd.read_csv(w.files["interactions"])
        extra = pd.DataFrame({"user_id": user, "item_id": events["item_id"].unique()[:3], "rating": 1.0,
                              "timestamp": events["timestamp"].max() + 1})  # fmt: skip
        pd.concat([events, extra]).to_csv(w.files["interactions"], index=False)
        return {
            "user": user,
            "version": current_version(w.catalog_dir),
            "fp": Catalog.load(w.catalog_dir).fingerprint(),
        }

    def command(self, w: World, s: S) -> list[str]:
        return ["ingest", "generic", "--as", "shop", "--items", w.files["items"], "--interactions",
                w.files["interactions"]]  # fmt: skip

    recover = command

    def said_on_full(self, w: World, case: Case, s: S) -> str:
        return f"holding {w.catalog_dir} while writing CURRENT; nothing was committed: CURRENT was not replaced"

    def kept(self, w: World, case: Case, s: S) -> None:
        kept = Catalog.load(w.catalog_dir)  # verifies every file against catalog.json
        assert current_version(w.catalog_dir) == s["version"] and kept.fingerprint() == s["fp"]
        assert s["user"] not in set(kept.interactions["user_id"])

    def recovered(self, w: World, case: Case, s: S) -> None:
        now = Catalog.load(w.catalog_dir)
        assert current_version(w.catalog_dir) != s["version"] and now.fingerprint() != s["fp"]
        assert s["user"] in set(now.interactions["user_id"])
        for folder in (w.catalog_dir, w.catalog_dir / VERSIONS):
            assert not list(folder.glob(f"{TMP_PREFIX}*"))  # the killed write's temporary removed under the lock


class Extract:
    """Two new items, ingested in-process; the extraction encodes them and commits a snapshot."""

    def prepare(self, w: World, case: Case) -> S:
        edit, items = next(w.edits), pd.read_csv(w.files["items"])
        new = pd.DataFrame({"item_id": [f"new-{edit}-{k}" for k in range(2)], "title": "new",
                            "text": [f"a new product {edit}.{k}" for k in range(2)]})  # fmt: skip
        pd.concat([items, new]).to_csv(w.files["items"], index=False)
        _ok(w, *Ingest().command(w, {}))
        key, store, old = w.key(), w.store(), items["item_id"].astype(str).tolist()
        vectors, found = store.read(key, old)
        assert found.all()
        return {"snap": store.current_snapshot(key).id, "old": old, "vectors": vectors.copy(),
                "new": new["item_id"].tolist()}  # fmt: skip

    def command(self, w: World, s: S) -> list[str]:
        return ["extract", "--dataset", "shop", "--encoder", TEXT_ENCODER]

    recover = command

    def said_on_full(self, w: World, case: Case, s: S) -> str:
        return f"nothing was committed: feature set shop/{w.key().fingerprint}/text keeps snapshot {s['snap']} as"

    def kept(self, w: World, case: Case, s: S) -> None:
        key, store = w.key(), w.store()
        vectors, found = store.read(key, s["old"])
        assert store.current_snapshot(key).id == s["snap"] and found.all() and (vectors == s["vectors"]).all()
        assert not store.read(key, s["new"])[1].any()

    def recovered(self, w: World, case: Case, s: S) -> None:
        key, store = w.key(), w.store()
        keys = Catalog.load(w.catalog_dir).content_keys("text")
        assert store.read(key, keys["item_id"].tolist(), keys["content_hash"].tolist())[1].all()
        assert store.current_snapshot(key).id != s["snap"] and (store.read(key, s["old"])[0] == s["vectors"]).all()
        parts = sorted((Path(store.feature_set_path(key)) / "parts").glob("part-*.parquet"))
        rows = pd.concat([pq.read_table(p, columns=["item_id", "content_hash"]).to_pandas() for p in parts])
        assert not rows.duplicated().any()  # the part written before the fault was reused: nothing encoded twice


class Train:
    """LightGCN, 3 epochs, in a run folder of its own; recovered with ``--resume``."""

    def prepare(self, w: World, case: Case) -> S:
        return {"run": w.root / f"train-{case.fault}"}

    def command(self, w: World, s: S) -> list[str]:
        return ["train", "--dataset", "shop", "--model", "lightgcn", "--encoder", TEXT_ENCODER, "--epochs", "3",
                "--patience", "3", "--set", "embedding_dim=8", "--run-dir", str(s["run"])]  # fmt: skip

    def recover(self, w: World, s: S) -> list[str]:
        return [*self.command(w, s), "--resume"]

    def said_on_full(self, w: World, case: Case, s: S) -> str:
        return f"holding {s['run']} while writing last.pt; nothing was committed: last.pt was not replaced"

    def kept(self, w: World, case: Case, s: S) -> None:
        record = json.loads((s["run"] / "run.json").read_text())  # the record reads back, whatever the fault
        last = torch.load(s["run"] / LAST, map_location="cpu", weights_only=True)
        committed = json.loads(last["record"])["epochs"]  # what a resume continues from
        assert [e["epoch"] for e in committed] == list(range(last["epoch"] + 1))
        if case.fault == "kill":  # killed writing epoch 1's record: the record on disk is one epoch behind last.pt
            assert record["status"] == "running" and len(record["epochs"]) == 1 and len(committed) == 2
        else:  # epoch 1's checkpoint found the disk full: the run says so; epoch 0's checkpoint stands
            assert record["status"] == "failed" and record["error"].startswith("DiskFull: disk full")
            assert len(committed) == 1
        s["committed"] = [e["valid"] for e in committed]

    def recovered(self, w: World, case: Case, s: S) -> None:
        record = json.loads((s["run"] / "run.json").read_text())
        assert record["status"] in FINISHED and record["resumed_at"] and record["error"] is None
        assert [e["epoch"] for e in record["epochs"]] == [0, 1, 2]
        committed = s["committed"]
        assert [e["valid"] for e in record["epochs"][: len(committed)]] == committed  # kept, not recomputed


class Recommend:
    """A MostPop run on the current catalog, a pair written with k=3, then the same file asked for with k=5."""

    def prepare(self, w: World, case: Case) -> S:
        where = w.root / f"recs-{case.fault}-{case.point.split('.')[-1]}"
        run, out = where / "run", where / "out" / "recommendations.parquet"
        _ok(w, "train", "--dataset", "shop", "--model", "mostpop", "--encoder", TEXT_ENCODER, "--run-dir", run)
        _ok(w, "recommend", run, "--k", "3", "--out", out)
        table, info = read_ranked(out)
        assert info["k"] == 3
        return {"run": run, "out": out, "table": table, "manifest": info}

    def command(self, w: World, s: S) -> list[str]:
        return ["recommend", str(s["run"]), "--k", "5", "--out", str(s["out"])]

    recover = command

    def said_on_full(self, w: World, case: Case, s: S) -> str:
        return (f"while writing {case.point.removeprefix('write:')}; nothing was committed: readers refuse "
                "recommendations.parquet until the pair is written again (its old manifest recommendations.json "
                "was removed first)")  # fmt: skip

    def kept(self, w: World, case: Case, s: S) -> None:
        """The pair's order (``ranked_files``) removes the old manifest before the new Parquet's
        rename: at either point the Parquet there has no manifest, and every reader refuses it
        by name rather than read it with a manifest it does not match."""
        with pytest.raises(PairMismatch) as err:
            read_ranked(s["out"])
        assert f"{s['out']} has no manifest recommendations.json beside it: its write was interrupted" in str(err.value)
        there = pq.read_table(s["out"])  # the old Parquet (not renamed over) or the new one (its manifest not renamed)
        assert there.equals(s["table"]) == case.point.endswith(".parquet")

    def recovered(self, w: World, case: Case, s: S) -> None:
        out = s["out"]
        table, info = read_ranked(out)
        assert info["k"] == 5 and table.num_rows == 5 * info["users"] > s["table"].num_rows
        litter = [p for p in out.parent.iterdir() if p.name.startswith(TMP_PREFIX)]
        assert sorted(clean_temporaries(out.parent)) == sorted(litter)  # a dead writer's: litter at once, any age
        assert sorted(p.name for p in out.parent.iterdir()) == ["recommendations.json", "recommendations.parquet"]


class WatchRetrain:
    """A text edited at the source and seen by ``befa watch``; the retrain it triggers (``befa run`` of the
    stored catalog, as the Prefect watch's deployment runs it)."""

    def prepare(self, w: World, case: Case) -> S:
        items = pd.read_csv(w.files["items"])
        items.loc[0, "text"] = f"rewritten {next(w.edits)}"
        items.to_csv(w.files["items"], index=False)
        assert "shop changed (content changed)" in _ok(w, "watch", "shop")  # re-ingested, re-encoded: retrain!
        served = served_record(w.settings, "shop")
        return {"served": served, "table": read_ranked(served.recommendations)[0]}

    def command(self, w: World, s: S) -> list[str]:
        return ["run", "shop", "--encoder", TEXT_ENCODER, "--models", "mostpop", "--adapters", "none",
                "--recommend-k", "3"]  # fmt: skip

    recover = command

    def said_on_full(self, w: World, case: Case, s: S) -> str:
        return "while writing summary.json; nothing was committed: summary.json was not replaced"

    def kept(self, w: World, case: Case, s: S) -> None:
        served = s["served"]
        assert served_record(w.settings, "shop") == served
        assert read_ranked(served.recommendations)[0].equals(s["table"])  # still served, still whole
        said = _ok(w, "watch", "shop")
        assert "shop: retrain due: the served recommendations were made from catalog version" in said
        assert "shop: STALE: the served recommendations are older than the catalog" in _ok(w, "status", "shop")

    def recovered(self, w: World, case: Case, s: S) -> None:
        served = served_record(w.settings, "shop")
        assert served.fingerprint == current_catalog(w.settings, "shop").fingerprint != s["served"].fingerprint
        assert read_ranked(served.recommendations)[1]["k"] == 3
        assert "shop unchanged (source files untouched)" in _ok(w, "watch", "shop")
        assert "shop: up to date" in _ok(w, "status", "shop")


STAGES = {"ingest": Ingest(), "extract": Extract(), "train": Train(), "recommend": Recommend(),
          "watch-retrain": WatchRetrain()}  # fmt: skip
CASES = [
    Case("ingest", "kill", "catalog-switch"),
    Case("ingest", "full", "write:CURRENT"),
    Case("extract", "kill", "write:CURRENT"),
    Case("extract", "full", "write:CURRENT"),
    Case("train", "kill", "write:run.json", hit=3),
    Case("train", "full", "write:last.pt", hit=2),
    Case("recommend", "kill", "write:recommendations.json"),
    Case("recommend", "full", "write:recommendations.parquet"),
    Case("recommend", "full", "write:recommendations.json"),
    Case("watch-retrain", "kill", "write:summary.json"),
    Case("watch-retrain", "full", "write:summary.json"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_fault_at_a_write_point_loses_nothing_committed_and_the_next_run_recovers(world, case):
    stage = STAGES[case.stage]
    state = stage.prepare(world, case)
    if case.fault == "kill":
        _kill_at(world.env, case.point, *stage.command(world, state), hit=case.hit)
    else:
        with disk_full_at(case.point, case.hit):
            res = _invoke(world, *stage.command(world, state))
        said = _said(res.output)
        assert res.exit_code == 2, res.output
        assert "error: disk full: no space left on the device holding" in said and "Traceback" not in said
        assert stage.said_on_full(world, case, state) in said, said
    stage.kept(world, case, state)
    res = _invoke(world, *stage.recover(world, state))
    assert res.exit_code == 0, res.output
    stage.recovered(world, case, state)
    world.healthy = True


def test_a_truncated_part_is_moved_aside_and_only_its_items_re_encoded(world):
    """The newest part (the last extraction's two new items) cut in half: the store check
    names it, ``--repair`` quarantines it, and the next extract encodes those two items only."""
    state = Extract().prepare(world, Case("extract", "damage", "part"))
    _ok(world, *Extract().command(world, state))
    key, store = world.key(), world.store()
    parts = sorted((Path(store.feature_set_path(key)) / "parts").glob("part-*.parquet"))
    damaged = parts[-1]
    lost = set(pq.read_table(damaged, columns=["item_id"])["item_id"].to_pylist())
    assert lost == set(state["new"])
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])

    res = _invoke(world, "store", "check")
    assert res.exit_code == 1 and f"damaged part {damaged}" in _said(res.output)
    said = _ok(world, "store", "check", "--repair")
    assert "2 items without a vector (the next `befa extract` re-encodes them)" in said
    vectors, found = world.store().read(key, state["old"])  # committed vectors kept, readable at once
    assert found.all() and (vectors == state["vectors"]).all()

    _ok(world, *Extract().command(world, state))
    now = sorted((Path(store.feature_set_path(key)) / "parts").glob("part-*.parquet"))
    assert now[:-1] == parts[:-1]  # the intact parts untouched
    assert set(pq.read_table(now[-1], columns=["item_id"])["item_id"].to_pylist()) == lost  # only the lost items
    assert _invoke(world, "store", "check").exit_code == 0
    world.healthy = True
