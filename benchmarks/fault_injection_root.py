"""A real full disk at the named write points: ``befa`` on a small tmpfs filled to the last byte (root only).

Run: ``make fault-injection-root`` (``python -m benchmarks.fault_injection_root [--size-mb 64] [--keep]``).

Why here and not in CI: mounting a filesystem needs root (``CAP_SYS_ADMIN``); CI and
``make test`` run unprivileged, so ``tests/job/test_fault_injection.py`` raises ``ENOSPC``
in-process at the same named write points instead. This target mounts a tmpfs of
``--size-mb`` as ``BEFA_HOME`` (the catalog, the feature store, the runs, the served record
all on it) and drives the real CLI in subprocesses. For each stage it starts the command
paused at a named point (``storage.faults``: ``BEFA_PAUSE_AT``), fills the filesystem with
a ballast file until a write of one byte fails, releases the command, and checks that:

- the command fails with exit code 2 and one line naming the full disk, no traceback;
- nothing committed is lost: the previous catalog version, feature-store snapshot,
  checkpoint, recommendation pair and served record are still current and read back;
- with the ballast removed, the same command (``--resume`` for training) succeeds.

Stages and where the disk fills: ingest while it writes the new version (``catalog-write``),
extract before it encodes (``extract-locked``), training after epoch 0's checkpoint
(``write:last.pt``), recommend before it starts (the Parquet's own writes fail), and a
watch-triggered retrain (``befa run``) once its recommendations are staged
(``write:recommendations.parquet``), after which ``befa watch`` must say "retrain due".
It refuses (exit code 2) when not root or when the mount is refused (a container without
``CAP_SYS_ADMIN``). No ``strace`` is needed: the tmpfs gives real ``ENOSPC`` errors.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pipeline.data.catalog import Catalog
from pipeline.data.versions import current_version
from pipeline.job.served import served_record
from pipeline.serving.ranked_files import read_ranked
from pipeline.settings import Settings, get_settings
from storage.faults import marker_stem
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey

REPO = Path(__file__).resolve().parents[1]
ENCODER = "text=imagebind:tiny@random"
SAFETY_S = 300


class Bench:
    def __init__(self, root: Path, mnt: Path):
        self.root, self.mnt, self.home = root, mnt, mnt / "home"
        self.src, self.pause = root / "src", root / "pause"
        self.env = {**os.environ, "BEFA_HOME": str(self.home), "BEFA_FEATURE_STORE": str(self.home / "features"),
                    "BEFA_PAUSE_DIR": str(self.pause), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
        self.rows: list[tuple[str, str, str]] = []

    # -- the disk --------------------------------------------------------------------------
    def fill(self) -> int:
        """Write a ballast file until not one more byte fits; return its size."""
        size, chunk = 0, 1 << 20
        with open(self.mnt / "ballast", "wb", buffering=0) as fh:
            while chunk:
                try:
                    size += fh.write(b"\0" * chunk)
                except OSError:
                    chunk //= 2
        return size

    def unfill(self) -> None:
        (self.mnt / "ballast").unlink(missing_ok=True)

    # -- the CLI ---------------------------------------------------------------------------
    def befa(self, *args: str, pause: str | None = None, then: Callable[[], object] | None = None) -> tuple[int, str]:
        """Run ``befa args``; with ``pause``, hold it at that point, call ``then`` and release it."""
        env = {**self.env, **({"BEFA_PAUSE_AT": pause} if pause else {})}
        out = self.root / "out.txt"
        with open(out, "w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", *args], env=env, cwd=REPO,
                                    stdout=fh, stderr=subprocess.STDOUT, text=True)  # fmt: skip
            if pause:
                stem = marker_stem(pause)
                deadline = time.monotonic() + SAFETY_S
                while not (self.pause / f"{stem}.reached").exists():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"befa {' '.join(args)} ended before {pause}:\n{out.read_text()[-3000:]}")
                    time.sleep(0.05)
                then()
                (self.pause / f"{stem}.release").write_text("")
            rc = proc.wait(timeout=SAFETY_S)
        for marker in self.pause.glob("*"):
            marker.unlink()
        return rc, " ".join(out.read_text().split())

    def check(self, stage: str, ok: bool, what: str) -> None:
        self.rows.append((stage, "ok" if ok else "FAIL", what))
        print(f"{'ok  ' if ok else 'FAIL'} {stage}: {what}", flush=True)

    def fault(self, stage: str, args: list[str], pause: str | None) -> None:
        """``befa args`` with the disk filled (at ``pause``, or before it starts): exit 2, one line."""
        if pause is None:
            self.fill()
            rc, said = self.befa(*args)
        else:
            rc, said = self.befa(*args, pause=pause, then=self.fill)
        self.unfill()
        line = said[said.find("error: disk full") :][:240] if "error: disk full" in said else said[-400:]
        self.check(stage, rc == 2 and "error: disk full" in said and "Traceback" not in said, f"rc {rc}: {line}")

    def recover(self, stage: str, args: list[str]) -> None:
        rc, said = self.befa(*args)
        self.check(stage, rc == 0, f"rerun with space: rc {rc}" + ("" if rc == 0 else f": {said[-600:]}"))


def _write_source(src: Path, n_users: int = 40, n_items: int = 30) -> dict[str, str]:
    rng = np.random.default_rng(0)
    src.mkdir(parents=True, exist_ok=True)
    ids = [f"sku{i:03d}" for i in range(n_items)]
    pd.DataFrame({"item_id": ids, "title": ids, "text": [f"product {i} in colour {i % 7}" for i in range(n_items)]}
                 ).to_csv(src / "items.csv", index=False)  # fmt: skip
    rows = [
        (f"u{u}", ids[i], 1.0, 6 * u + k) for u in range(n_users) for k, i in enumerate(rng.choice(n_items, 6, False))
    ]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(src / "events.csv", index=False)
    return {"items": str(src / "items.csv"), "interactions": str(src / "events.csv")}


def _append(path: str, rows: pd.DataFrame) -> None:
    pd.concat([pd.read_csv(path), rows]).to_csv(path, index=False)


def _ok(b: Bench, *args: str) -> str:
    rc, said = b.befa(*args)
    assert rc == 0, f"befa {' '.join(args)}: rc {rc}: {said[-2000:]}"
    return said


def _ingest_case(b: Bench, files: dict[str, str], ingest: list[str]) -> None:
    """The new version's tables written, the disk fills before the rest of the version."""
    _append(files["interactions"], pd.DataFrame({"user_id": "new", "item_id": ["sku000", "sku001"], "rating": 1.0,
                                                 "timestamp": 10_000}))  # fmt: skip
    folder = b.home / "catalogs" / "shop"
    version = current_version(folder)
    b.fault("ingest", ingest, "catalog-write")
    b.check("ingest", current_version(folder) == version and Catalog.load(folder).num_users == 40, "old version kept")
    b.recover("ingest", ingest)
    b.check("ingest", current_version(folder) != version, "new version current")


def _extract_case(b: Bench, files: dict[str, str], ingest: list[str]) -> None:
    """Two new items ingested; the disk fills before anything is encoded."""
    _append(files["items"], pd.DataFrame({"item_id": ["sku900", "sku901"], "title": "new", "text": ["n1", "n2"]}))
    _ok(b, *ingest)
    (fp,) = [p.name for p in (b.home / "features" / "shop").iterdir() if p.is_dir()]
    key, old = FeatureSetKey("shop", fp, "text"), [f"sku{i:03d}" for i in range(30)]
    snap = _store(b).current_snapshot(key).id
    extract = ["extract", "--dataset", "shop", "--encoder", ENCODER]
    b.fault("extract", extract, "extract-locked")
    kept = _store(b)
    b.check("extract", kept.current_snapshot(key).id == snap and kept.read(key, old)[1].all(), "old snapshot kept")
    b.recover("extract", extract)
    b.check("extract", _store(b).read(key, ["sku900", "sku901"])[1].all(), "the new items encoded")


def _train_case(b: Bench, run: Path) -> None:
    """Epoch 0's checkpoint written, the disk fills before its record."""
    train = ["train", "--dataset", "shop", "--model", "lightgcn", "--encoder", ENCODER, "--epochs", "3",
             "--set", "embedding_dim=8", "--run-dir", str(run)]  # fmt: skip
    b.fault("train", train, "write:last.pt")
    b.check("train", (run / "last.pt").exists() and (run / "run.json").exists(), "epoch 0's checkpoint kept")
    b.recover("train", [*train, "--resume"])
    b.check("train", '"resumed_at": [' in (run / "run.json").read_text(), "resumed from it")


def _recommend_case(b: Bench, run: Path) -> None:
    """A pair written, then the disk full before the next one starts."""
    out = b.home / "recs" / "recommendations.parquet"
    _ok(b, "recommend", str(run), "--k", "3", "--out", str(out))
    before = read_ranked(out)[1]
    recommend = ["recommend", str(run), "--k", "5", "--out", str(out)]
    b.fault("recommend", recommend, None)
    b.check("recommend", read_ranked(out)[1] == before, "old pair reads back")
    b.recover("recommend", recommend)
    b.check("recommend", read_ranked(out)[1]["k"] == 5, "new pair reads back")


def _retrain_case(b: Bench, files: dict[str, str]) -> None:
    """A text edited and seen by the watch; the retrain's recommendations staged, the disk fills before their rename."""
    served = served_record(_settings(b), "shop")
    items = pd.read_csv(files["items"])
    items.loc[0, "text"] = "rewritten"
    items.to_csv(files["items"], index=False)
    _ok(b, "watch", "shop")
    retrain = ["run", "shop", "--encoder", ENCODER, "--models", "mostpop", "--adapters", "none", "--recommend-k", "3"]
    b.fault("retrain", retrain, "write:recommendations.parquet")
    b.check("retrain", served_record(_settings(b), "shop") == served, "served record kept")
    said = _ok(b, "watch", "shop")
    b.check("retrain", "shop: retrain due" in said, f"watch: {said[said.find('shop: retrain') :][:100]}")
    b.recover("retrain", retrain)
    b.check("retrain", "shop unchanged (source files untouched)" in _ok(b, "watch", "shop"), "watch: shop unchanged")


def run_cases(b: Bench, files: dict[str, str]) -> None:
    ingest = ["ingest", "generic", "--as", "shop", "--items", files["items"], "--interactions", files["interactions"]]
    _ok(b, "run", "shop", "--items", files["items"], "--interactions", files["interactions"], "--encoder", ENCODER,
        "--models", "mostpop", "--adapters", "none", "--recommend-k", "3")  # fmt: skip
    _ingest_case(b, files, ingest)
    _extract_case(b, files, ingest)
    _train_case(b, b.home / "runs" / "lightgcn")
    _recommend_case(b, b.home / "runs" / "lightgcn")
    _retrain_case(b, files)


def _settings(b: Bench) -> Settings:
    return get_settings(home=b.home, feature_store=str(b.home / "features"))


def _store(b: Bench) -> FeatureStore:
    return FeatureStore(str(b.home / "features"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=64, help="size of the tmpfs (BEFA_HOME)")
    parser.add_argument("--keep", action="store_true", help="leave the folder (unmounted) for inspection")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("fault-injection-root: needs root, to mount a tmpfs (CI runs tests/job/test_fault_injection.py instead)")
        raise SystemExit(2)
    root = Path(tempfile.mkdtemp(prefix="befa-fault-root-"))
    mnt = root / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size_mb}m", "none", str(mnt)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        print(f"fault-injection-root: mounting a tmpfs was refused: {mounted.stderr.strip()}")
        raise SystemExit(2)
    b = Bench(root, mnt)
    start = time.perf_counter()
    try:
        run_cases(b, _write_source(b.src))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    failed = [r for r in b.rows if r[1] != "ok"]
    print(f"\n{len(b.rows) - len(failed)} of {len(b.rows)} checks passed in {time.perf_counter() - start:.0f} s "
          f"on a {args.size_mb} MB tmpfs")  # fmt: skip
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
