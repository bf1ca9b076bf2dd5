"""A film added to the catalog, from `befa ingest` to `befa recommend`: `make bench-new-item`.

    python -m benchmarks.bench_new_item [--item 50] [--model freedom] [--epochs 5] [--encoder SPEC]
        [--backend auto] [--mapper auto] [--k 20] [--threads 1] [--modes process,in-process] [--home DIR]
        [--json out.json]

Issue #22: serving a product added to the catalog costs no retraining (extract its features,
map, serve). This measures the time a user waits, on ``movielens-100k-posters``:

- **Setup** (timed, not part of the result): a copy of the dataset's source files
  (``items.csv``, ``ml-100k/u.data``, ``posters/``) under ``<home>/datasets`` without one film
  (``--item``, default 50, Star Wars (1977), the most rated): its items.csv rows, its poster
  and its ratings (a new product has none). Then, as a user would: ``befa ingest`` (the copy
  is not the pinned upstream, so ``--no-verify``), ``befa extract`` (the default encoders:
  EfficientNet-Lite2 + MiniLM), ``befa train`` of one small content model (FREEDOM, 5 epochs:
  the quality of the lists is not the point, only that a trained run serves).
- **Timed**: the film's row is appended to items.csv and its poster copied back (as a shop
  adds a product), then ``befa ingest`` (a new catalog version), ``befa extract`` (only the
  new item may be encoded: the store before and after says what was encoded and reused),
  no mapping step (``befa recommend`` grows the trained model over items added since
  training, ``pipeline.serving.servable``, and scores them from their content; ``--mapper
  regression|aldi``: that content mapper, fitted in setup by ``befa map``), and ``befa
  recommend`` for every user of the run, once as is and once with ``--new-item-slots 1``:
  in how many lists the film appears, and its best rank.

Each step runs as a user runs it, a new ``befa`` process (``process``: start-up and imports
included); ``in-process`` runs the same commands through the CLI in this process, the command
modules imported first (a warm service), from the state setup left. ``--threads N`` pins this
process and its children to N CPUs (torch and ONNX Runtime size their pools to them).
``--max-items`` / ``--max-users``: the most rated films and the first users only (tests).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATASET = "movielens-100k-posters"
DEFAULT_ENCODER = "image=effnet:lite2,text=minilm"  # pipeline.job.params.DEFAULT_ENCODER (a test holds them equal)
MODES = ("process", "in-process")
CHILD_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "200"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--item", default="50", help="movie_id of the film held out and added back (50: Star Wars)")
    ap.add_argument("--model", default="freedom", help="a content model (it serves new items)")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs of the setup's run (quality not measured)")
    ap.add_argument("--encoder", default=DEFAULT_ENCODER, help="encoder spec (default: befa's)")
    ap.add_argument("--backend", default="auto", help="befa extract --backend")
    ap.add_argument("--mapper", default="auto", choices=("auto", "none", "regression", "aldi"),
                    help="befa recommend --mapper; a named one is fitted in setup (befa map)")  # fmt: skip
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="CPUs this process and its children may use (0: all)")
    ap.add_argument("--modes", default=",".join(MODES), help="process, in-process or both (the first runs setup)")
    ap.add_argument("--home", default=None, help="BEFA_HOME to work in (default: a temporary folder, removed)")
    ap.add_argument("--max-items", type=int, default=None, help="keep only the N most rated other films")
    ap.add_argument("--max-users", type=int, default=None, help="keep only the ratings of the first N users")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        ap.error(f"--modes: choose from {', '.join(MODES)}")
    return args


# -- the source files: one film held out, then added back --------------------------------------
@dataclass
class HeldOut:
    folder: Path  # the copy of the dataset folder
    item: str
    title: str
    header: list[str]
    rows: list[list[str]]  # the film's rows of items.csv (as the source has them)
    poster: Path | None  # its poster in the source folder
    ratings_dropped: int


def _write_rows(path: Path, rows: list[list[str]], mode: str = "w") -> None:
    with open(path, mode, newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def _most_rated(ratings: Path, n: int, item: str) -> set[str]:
    with open(ratings, encoding="utf-8") as f:
        counts = Counter(line.split("\t", 2)[1] for line in f)
    counts.pop(item, None)
    return {item, *sorted(counts, key=lambda i: (-counts[i], int(i)))[:n]}


def copy_without(
    source: Path, root: Path, item: str, max_items: int | None = None, max_users: int | None = None
) -> HeldOut:
    """``source`` (a movielens-100k-posters folder) copied to ``root/movielens-100k-posters``
    without ``item``: its items.csv rows, its poster and its ratings. ``max_items``: only the
    most rated films (and ``item``); ``max_users``: only the ratings of users 1..N."""
    dest = root / DATASET
    (dest / "ml-100k").mkdir(parents=True)
    (dest / "posters").mkdir()
    with open(source / "items.csv", newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    col = header.index("movie_id")
    held = [r for r in rows if r[col] == item]
    if not held:
        raise ValueError(f"--item {item}: no movie_id {item} in {source / 'items.csv'}")
    films = _most_rated(source / "ml-100k" / "u.data", max_items, item) if max_items else None
    kept = [r for r in rows if r[col] != item and (films is None or r[col] in films)]
    _write_rows(dest / "items.csv", [header, *kept])
    dropped = 0
    with open(source / "ml-100k" / "u.data", encoding="utf-8") as f, open(dest / "ml-100k" / "u.data", "w") as out:
        for line in f:
            user, film = line.split("\t", 2)[:2]
            if film == item:
                dropped += 1
            elif (films is None or film in films) and (max_users is None or int(user) <= max_users):
                out.write(line)
    for movie in {r[col] for r in kept}:
        poster = source / "posters" / f"{movie}.jpg"
        if poster.exists():
            shutil.copyfile(poster, dest / "posters" / poster.name)
    poster = source / "posters" / f"{item}.jpg"
    title = held[0][header.index("title")]
    return HeldOut(dest, item, title, header, held, poster if poster.exists() else None, dropped)


def add_back(held: HeldOut) -> None:
    """The film as a shop adds a product: its row appended to items.csv, its poster copied in."""
    _write_rows(held.folder / "items.csv", held.rows[:1], "a")  # one row (the source repeats some films)
    if held.poster is not None:
        shutil.copyfile(held.poster, held.folder / "posters" / held.poster.name)


def take_out(held: HeldOut) -> None:
    """The source files as they were before :func:`add_back`."""
    with open(held.folder / "items.csv", newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    col = header.index("movie_id")
    _write_rows(held.folder / "items.csv", [header, *(r for r in rows if r[col] != held.item)])
    (held.folder / "posters" / f"{held.item}.jpg").unlink(missing_ok=True)


# -- running befa ------------------------------------------------------------------------------
def befa_command() -> list[str]:
    """The ``befa`` script of this interpreter's environment (what a user types), else its module."""
    script = Path(sys.executable).with_name("befa")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli.main"]


@dataclass
class Befa:
    """Runs ``befa`` commands in a new process each (``process``) or through the CLI in this one."""

    home: Path
    mode: str
    log: Path

    def __call__(self, *args: str) -> float:
        args = (*args, "--home", str(self.home))
        start = time.perf_counter()
        if self.mode == "process":
            done = subprocess.run([*befa_command(), *args], env=CHILD_ENV, capture_output=True, text=True)
            code, out = done.returncode, done.stdout + done.stderr
        else:
            from typer.testing import CliRunner

            from pipeline.cli.main import app

            result = CliRunner().invoke(app, list(args))
            code, out = result.exit_code, result.output
        seconds = time.perf_counter() - start
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"\n$ befa {' '.join(args)}   # {self.mode}, {seconds:.2f} s, exit {code}\n{out}")
        if code != 0:
            raise RuntimeError(f"befa {' '.join(args)} failed (exit {code}):\n{out[-4000:]}")
        return seconds


def import_commands() -> float:
    """Seconds to import the command modules (the in-process mode has them, as a running service would)."""
    start = time.perf_counter()
    import pipeline.cli.data  # noqa: F401
    import pipeline.cli.features  # noqa: F401
    import pipeline.cli.serving  # noqa: F401
    import pipeline.cli.train  # noqa: F401

    return time.perf_counter() - start


@dataclass
class Commands:
    """The command lines of each step (``--home`` added by :class:`Befa`)."""

    datasets_root: Path
    encoder: str
    backend: str
    run_dir: Path
    k: int
    mapper: str

    def ingest(self) -> list[str]:
        return ["ingest", DATASET, "--datasets-root", str(self.datasets_root), "--no-verify"]

    def extract(self) -> list[str]:
        return ["extract", "--dataset", DATASET, "--encoder", self.encoder, "--backend", self.backend]

    def train(self, model: str, epochs: int) -> list[str]:
        return ["train", "--dataset", DATASET, "--model", model, "--encoder", self.encoder, "--epochs", str(epochs),
                "--patience", str(epochs), "--run-dir", str(self.run_dir)]  # fmt: skip

    def recommend(self, out: Path, slots: int) -> list[str]:
        return ["recommend", str(self.run_dir), "--k", str(self.k), "--out", str(out), "--new-item-slots", str(slots),
                "--mapper", self.mapper]  # fmt: skip


# -- what a step did ---------------------------------------------------------------------------
def store_keys(store_root: Path) -> dict[str, set[tuple[str, str]]]:
    """modality -> every (item_id, content_hash) the store holds for the catalog."""
    from storage.feature_store import FeatureSetKey, FeatureStore

    store, base, out = FeatureStore(store_root), store_root / DATASET, {}
    for fp in sorted(p for p in base.glob("*/") if p.is_dir() and not p.name.startswith((".", "_"))):
        for modality in sorted(p.name for p in fp.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            out.setdefault(modality, set()).update(store.existing_keys(FeatureSetKey(DATASET, fp.name, modality)))
    return out


def extraction(before: dict[str, set], after: dict[str, set]) -> dict[str, Any]:
    """Per modality: the items encoded (new keys) and the rows reused (keys already there)."""
    return {
        m: {"encoded": sorted({i for i, _ in keys - before.get(m, set())}), "reused": len(keys & before.get(m, set()))}
        for m, keys in sorted(after.items())
    }


def served(path: Path, item: str) -> dict[str, Any]:
    """In how many of the served lists the item is, its best rank, and what the manifest says."""
    import pandas as pd

    from pipeline.serving.ranked_files import manifest_path

    frame = pd.read_parquet(path, columns=["user_id", "rank", "item_id"])
    hit = frame[frame["item_id"] == item]
    info = json.loads(manifest_path(path).read_text())
    return {
        "users": int(frame["user_id"].nunique()),
        "lists_with_item": int(hit["user_id"].nunique()),
        "best_rank": int(hit["rank"].min()) if len(hit) else None,
        "new_items": info.get("new_items"),
        "items_without_behaviour": len(info.get("items_without_behaviour") or []),
        "mapper": info.get("mapper"),
    }


def timed_cycle(befa: Befa, cmd: Commands, held: HeldOut, settings: Any, out_dir: Path) -> dict[str, Any]:
    """Add the film back, then time each step a user runs until it is served."""
    from pipeline.data.catalog import Catalog

    store_root = Path(settings.feature_store)
    add_back(held)
    before = store_keys(store_root)
    steps: dict[str, dict[str, Any]] = {"ingest": {"seconds": befa(*cmd.ingest())}}
    catalog = Catalog.load(settings.catalog_dir(DATASET))
    steps["ingest"].update(version=catalog.version, items=catalog.num_items)
    steps["extract"] = {"seconds": befa(*cmd.extract()), "modalities": extraction(before, store_keys(store_root))}
    steps["map"] = {"seconds": 0.0}  # none: befa recommend grows the run over the new item itself
    for name, slots in (("recommend", 0), ("recommend_slots1", 1)):
        out = out_dir / f"recommendations-{befa.mode}-slots{slots}.parquet"
        steps[name] = {"seconds": befa(*cmd.recommend(out, slots)), **served(out, held.item)}
    total = sum(steps[s]["seconds"] for s in ("ingest", "extract", "map", "recommend"))
    return {"steps": steps, "total_s": total}


# -- the benchmark -----------------------------------------------------------------------------
def save_state(home: Path, *folders: Path) -> list[tuple[Path, Path]]:
    """Copies of the catalog and the store as setup left them, to time a second mode from the same state."""
    pairs = [(folder, home / f"saved-{i}-{folder.name}") for i, folder in enumerate(folders)]
    for folder, copy in pairs:
        shutil.copytree(folder, copy, symlinks=True)
    return pairs


def restore_state(pairs: list[tuple[Path, Path]]) -> None:
    for folder, copy in pairs:
        shutil.rmtree(folder)
        shutil.copytree(copy, folder, symlinks=True)


def pin_threads(n: int) -> int:
    """Pin this process (and so its children) to ``n`` CPUs; the number it may use."""
    cpus = sorted(os.sched_getaffinity(0))
    if n and n < len(cpus):
        os.sched_setaffinity(0, cpus[-n:])
    return len(os.sched_getaffinity(0))


def machine() -> dict[str, Any]:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return {"host": platform.node(), "cpus": os.cpu_count(), "cpu": model}


def run(args: argparse.Namespace, home: Path, source: Path) -> dict[str, Any]:
    """Setup, then one timed cycle per mode; everything the table and the JSON show."""
    from pipeline.settings import get_settings

    meta = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "load_start": os.getloadavg()[0]}
    meta.update(threads=pin_threads(args.threads), **machine(), encoder=args.encoder, backend=args.backend)
    meta.update(model=args.model, epochs=args.epochs, k=args.k, mapper=args.mapper)
    if "in-process" in args.modes:  # first, before anything else here imports them
        meta["in_process_imports_s"] = import_commands()
    settings = get_settings(home=home, datasets_root=home / "datasets", feature_store=str(home / "features"))
    start = time.perf_counter()
    held = copy_without(source, home / "datasets", args.item, args.max_items, args.max_users)
    prep = {"copy": time.perf_counter() - start}
    meta.update(item=held.item, title=held.title, ratings_dropped=held.ratings_dropped)
    run_dir = home / "runs" / f"bench-new-item-{args.model}"
    cmd = Commands(home / "datasets", args.encoder, args.backend, run_dir, args.k, args.mapper)
    log = home / "bench-new-item.log"
    first = Befa(home, args.modes[0], log)
    prep.update(ingest=first(*cmd.ingest()), extract=first(*cmd.extract()))
    prep["train"] = first(*cmd.train(args.model, args.epochs))
    if args.mapper not in ("auto", "none"):  # fitted once after training, before the catalog changes
        prep["map"] = first("map", str(run_dir), "--methods", args.mapper)
    saved = save_state(home, settings.catalog_dir(DATASET), Path(settings.feature_store)) if args.modes[1:] else []
    modes = {}
    for i, mode in enumerate(args.modes):
        if i:
            take_out(held)
            restore_state(saved)
        modes[mode] = timed_cycle(Befa(home, mode, log), cmd, held, settings, home)
    meta["load_end"] = os.getloadavg()[0]
    return {"meta": meta, "setup": prep, "modes": modes, "log": str(log)}


def _lists(step: dict[str, Any]) -> str:
    where = f", best rank {step['best_rank']}" if step["best_rank"] else ""
    return f"in {step['lists_with_item']} of {step['users']} lists{where}"


def _cells(result: dict[str, Any], step: str) -> str:
    return " | ".join(f"{result['modes'][m]['steps'][step]['seconds']:.1f}" for m in result["modes"])


def markdown(result: dict[str, Any]) -> str:
    meta, modes = result["meta"], result["modes"]
    first = modes[next(iter(modes))]["steps"]
    enc = "; ".join(
        f"{m}: encoded {len(v['encoded'])} ({', '.join(v['encoded'][:5]) or 'none'}), reused {v['reused']}"
        for m, v in first["extract"]["modalities"].items()
    )
    rec = first["recommend"]
    how = f"the {rec['mapper']} mapper" if rec["mapper"] else "the model's own content path"
    mapper = f" --mapper {meta['mapper']}" if meta["mapper"] != "auto" else ""
    new = f"catalog version {first['ingest']['version']}: {first['ingest']['items']} items, the film among them"
    rows = [
        ("1 ingest", "`befa ingest movielens-100k-posters --no-verify`", new),
        ("2 extract", "`befa extract --dataset movielens-100k-posters`", enc),
        ("3 map", "none: `befa recommend` grows the run over new items", f"{rec['new_items']} new item, {how}"),
        ("4 recommend", f"`befa recommend <run> --k {meta['k']}{mapper}`", f"the film {_lists(rec)}"),
    ]
    head = " | ".join(f"{m} s" for m in modes)
    lines = [
        f"### A new film, `befa ingest` to `befa recommend`: {meta['title']} (item {meta['item']})",
        "",
        f"{meta['date']}, {meta['host']} ({meta['cpus']} CPUs, {meta['cpu']}), {meta['threads']} thread(s); "
        f"1-min load {meta['load_start']:.2f} at the start, {meta['load_end']:.2f} at the end. Run: {meta['model']}, "
        f"{meta['epochs']} epochs, {meta['encoder']} (backend {meta['backend']}): its quality is not measured here.",
        "",
        f"| step | command | {head} | what it did |",
        "|" + " --- |" * (3 + len(modes)),
    ]
    lines += [f"| {s} | {c} | {_cells(result, s.split()[1])} | {w} |" for s, c, w in rows]
    totals = " | ".join(f"**{modes[m]['total_s']:.1f}**" for m in modes)
    lines.append(f"| **total 1-4** | | {totals} | |")
    slot = first["recommend_slots1"]
    lines.append(
        f"| 4' recommend | `... --new-item-slots 1` | {_cells(result, 'recommend_slots1')} | the film {_lists(slot)} "
        f"({slot['items_without_behaviour']} items without behaviour compete for the place) |"
    )
    setup_s = ", ".join(f"{k} {v:.1f} s" for k, v in result["setup"].items())
    lines += ["", f"Setup ({next(iter(modes))}, not in the total): {setup_s}."]
    if "in-process" in modes:
        lines.append(f"In-process: the command modules imported first ({meta['in_process_imports_s']:.1f} s).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    root = Path(os.environ.get("BEFA_DATASETS_ROOT") or REPO.parent / "shared" / "datasets").resolve()
    with tempfile.TemporaryDirectory(prefix="bench-new-item-") as tmp:
        home = Path(args.home).resolve() if args.home else Path(tmp)
        if args.home and any(home.glob("*")):
            raise SystemExit(f"--home {home}: not empty; the benchmark needs a fresh home")
        home.mkdir(parents=True, exist_ok=True)
        result = run(args, home, root / DATASET)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
