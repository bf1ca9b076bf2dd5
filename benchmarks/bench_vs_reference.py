"""befa against the reference toolbox (MMRec), run live, side by side, load-matched.

    python -m benchmarks.bench_vs_reference [--models lightgcn,bm3,freedom,mgcn,lattice]
        [--settings trained,frozen] [--epochs 12] [--features real|random] [--json out.json]
        [--home DIR] [--reference DIR] [--venv DIR] [--cores 0,1] [--split-seed 2024] [--seed 999]
        [--pair-timeout 1800] [--keep-work]

What it does, in order:

1. The reference's own venv (``benchmarks.reference_side``: built once under
   ``bench-results/vs-reference/mmrec-venv``, reused after) and a writable copy of its sources.
2. The data (``benchmarks.vs_reference_data``): befa's movielens-100k-posters catalog in the
   benchmark's own home, the seeded random split, the features (``real``: EfficientNet-Lite2
   + MiniLM, extracted once and cached in the home; ``random``: seeded rows of the same
   widths, labelled as such), exported with ``befa export-mmrec`` for the reference.
3. Per setting and model, one pair (``benchmarks.paired_run``): befa's training process
   (``benchmarks.befa_side``) and MMRec's (its runner) started together, one torch thread
   each, pinned to different cores (``--cores``: befa's, MMRec's), the same seed, until both
   have trained and evaluated ``--epochs`` epochs while the other was running; the faster
   keeps training meanwhile. Settings: ``trained`` (like for like: befa trains the raw feature
   tables, ``train_features=True``, as MMRec does) and ``frozen`` (befa's default).
4. Per pair, over the epochs during which both processes ran (``benchmarks.pair_timing``):
   the median training seconds per epoch and evaluation seconds (valid + test) of each, the
   ratio MMRec / befa, the number of overlapping epochs and the 1-minute load average at the
   pair's start and end. Fewer than 5 overlapping epochs on either side: no ratio, the cell
   says why. Each ratio is marked against the issue's target for the model (LightGCN, BM3,
   MGCN >= 5x, goal 10x; FREEDOM and LATTICE >= 8x).

Output: one Markdown table per setting, and ``--json``: every pair with its per-epoch spans.
A flag given wrong is refused with one line naming it (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import befa_side
from benchmarks.pair_timing import MIN_OVERLAP, Comparison, SideTiming, both_running, compare
from benchmarks.paired_run import run_pair
from benchmarks.reference_side import (
    ReferenceMissing,
    check_reference,
    runner_command,
    runner_env,
    side_venv,
    single_thread_env,
    writable_sources,
)
from benchmarks.vs_reference_data import CATALOG, FEATURE_LABELS, BenchData, prepare

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench-results" / "vs-reference"
MODELS = ("lightgcn", "bm3", "freedom", "mgcn", "lattice")
NAMES = {"lightgcn": "LightGCN", "bm3": "BM3", "freedom": "FREEDOM", "mgcn": "MGCN", "lattice": "LATTICE"}
TARGETS: dict[str, tuple[float, float | None]] = {  # model -> (target, goal) for MMRec / befa
    "lightgcn": (5.0, 10.0),
    "bm3": (5.0, 10.0),
    "mgcn": (5.0, 10.0),
    "freedom": (8.0, None),
    "lattice": (8.0, None),
}
SETTING_TITLES = {
    "trained": "like for like: befa trains the raw feature tables (train_features=True), as MMRec does",
    "frozen": "befa's default: frozen raw feature tables (MMRec trains its own, as always)",
}
EPOCH_CAP = 1000  # each side's epoch budget; the pair is stopped long before


class FlagError(ValueError):
    """A flag given wrong: one line naming it, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        raise FlagError(message)


@dataclass
class PairRow:
    """One pair's outcome, as the table and the JSON show it."""

    model: str
    setting: str
    train: Comparison | None = None
    evals: Comparison | None = None
    load_start: float | None = None
    load_end: float | None = None
    reason: str = ""
    errors: list[str] = field(default_factory=list)
    befa: dict[str, Any] = field(default_factory=dict)
    mmrec: dict[str, Any] = field(default_factory=dict)


def _names(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    names = [x.strip().lower() for x in value.split(",") if x.strip()]
    unknown = [x for x in names if x not in allowed]
    if unknown or not names:
        raise FlagError(f"{flag}: unknown {unknown[0]!r}" if unknown else f"{flag}: empty")
    return list(dict.fromkeys(names))


def _cores(value: str) -> tuple[int, int]:
    try:
        cores = tuple(int(x) for x in value.split(","))
    except ValueError:
        raise FlagError(f"--cores: {value!r} is not two core numbers, e.g. 0,1") from None
    usable = sorted(os.sched_getaffinity(0))
    if len(cores) != 2 or cores[0] == cores[1] or not set(cores) <= set(usable):
        raise FlagError(f"--cores: {value!r} must be two different cores of this process's {usable}, e.g. 0,1")
    return cores[0], cores[1]


def build_parser() -> Parser:
    p = Parser(prog="bench_vs_reference", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--settings", default="trained,frozen", help="trained (like for like), frozen (befa's default)")
    p.add_argument("--epochs", type=int, default=12, help="overlapping epochs each side must reach")
    p.add_argument("--features", choices=("real", "random"), default="real")
    p.add_argument("--json", type=Path, default=None, help="also write every pair here")
    p.add_argument("--home", type=Path, default=RESULTS / "home", help="the benchmark's BEFA_HOME (cached)")
    p.add_argument("--reference", type=Path, default=REPO.parent / "shared" / "reference-impl")
    p.add_argument("--venv", type=Path, default=RESULTS / "mmrec-venv", help="the reference's venv (built once)")
    p.add_argument("--cores", default="0,1", help="befa's core, MMRec's core")
    p.add_argument("--split-seed", type=int, default=2024)
    p.add_argument("--seed", type=int, default=999, help="training seed of both sides")
    p.add_argument("--pair-timeout", type=float, default=1800.0, help="seconds one pair may take")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder (logs, exports, runs)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, checked; a wrong one raises :class:`FlagError` naming it."""
    args = build_parser().parse_args(argv)
    args.models = _names(args.models, MODELS, "--models")
    args.settings = _names(args.settings, tuple(SETTING_TITLES), "--settings")
    args.cores = _cores(args.cores)
    if args.epochs < 1:
        raise FlagError(f"--epochs: {args.epochs} must be at least 1 (a ratio needs {MIN_OVERLAP})")
    if args.pair_timeout <= 0:
        raise FlagError(f"--pair-timeout: {args.pair_timeout:g} must be positive")
    try:
        check_reference(args.reference.resolve())
    except ReferenceMissing as exc:
        raise FlagError(str(exc)) from None
    check_datasets(args.home)
    if shutil.which("taskset") is None:
        raise FlagError("--cores: taskset (util-linux) is not installed, so the sides cannot be pinned")
    return args


def check_datasets(home: Path) -> None:
    """The catalog is in ``home`` already, or its raw files are under ``BEFA_DATASETS_ROOT``."""
    from pipeline.data.versions import is_ingested
    from pipeline.settings import get_settings

    settings = get_settings(home=home)
    raw = settings.datasets_root / CATALOG
    if not is_ingested(settings.catalog_dir(CATALOG)) and not raw.is_dir():
        raise FlagError(f"BEFA_DATASETS_ROOT: no {raw} to ingest into --home {home} (set it to the datasets folder)")


# -- one pair --------------------------------------------------------------------------------------
def side_record(side: SideTiming, window: tuple[float, float]) -> dict[str, Any]:
    return {
        "started": side.started,
        "ended": side.ended,
        "train_s": [s.seconds for s in side.train],
        "train_end": [s.end for s in side.train],
        "eval_s": [s.seconds for s in side.evals],
        "eval_end": [s.end for s in side.evals],
        "window": list(window),
    }


def run_one(
    model: str, setting: str, args: argparse.Namespace, data: BenchData, python: Path, src: Path, work: Path
) -> PairRow:
    tag = f"{model}-{setting}"
    befa_out, ref_out = work / f"{tag}.befa.jsonl", work / f"{tag}.mmrec.json"
    fps = {} if model in befa_side.CONTENT_FREE else data.fingerprints
    befa_cmd = befa_side.command(
        data.home, data.catalog, data.split, fps, model, setting, befa_out, work / "runs" / tag, EPOCH_CAP, args.seed
    )
    ref_cmd = runner_command(python, args.reference, model, data.data_dir, data.catalog, ref_out, EPOCH_CAP, args.seed)
    befa_env = {**os.environ, **single_thread_env(), "BEFA_HOME": str(data.home), "HF_HUB_OFFLINE": "1"}
    res = run_pair(
        befa_cmd,
        ref_cmd,
        befa_out,
        ref_out,
        cores=args.cores,
        cwd=(REPO, src),
        env=(befa_env, runner_env()),
        logs=(work / f"{tag}.befa.log", work / f"{tag}.mmrec.log"),
        epochs=args.epochs,
        timeout_s=args.pair_timeout,
    )
    window = both_running(res.befa, res.ref, time.time())
    row = PairRow(model, setting, reason=res.reason, errors=res.errors)
    row.load_start, row.load_end = res.load_start[0], res.load_end[0]
    row.befa, row.mmrec = side_record(res.befa, window), side_record(res.ref, window)
    if not res.errors:
        row.train = compare(res.befa.train, res.ref.train, window)
        row.evals = compare(res.befa.evals, res.ref.evals, window)
    return row


# -- output ----------------------------------------------------------------------------------------
def seconds_cell(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def ratio_cell(model: str, c: Comparison) -> str:
    """``12.2x (>= 8x met)``, ``10.4x (goal 10x met)``, ``3.0x (UNDER 5x)``, or the refusal."""
    if c.ratio is None:
        return f"refused: {c.refused}"
    target, goal = TARGETS[model]
    if goal is not None and c.ratio >= goal:
        verdict = f"goal {goal:g}x met"
    elif c.ratio >= target:
        verdict = f">= {target:g}x met"
    else:
        verdict = f"UNDER {target:g}x"
    return f"{c.ratio:.1f}x ({verdict})"


def overlap_cell(row: PairRow) -> str:
    t, e = row.train, row.evals
    cell = f"{t.befa_n} / {t.ref_n}"
    return cell if (e.befa_n, e.ref_n) == (t.befa_n, t.ref_n) else f"{cell} (evaluations {e.befa_n} / {e.ref_n})"


HEADER = (
    "| model | befa train s/epoch | MMRec | ratio | befa eval s | MMRec | ratio | "
    "overlapping epochs (befa / MMRec) | load (start / end) |"
)


def table(rows: list[PairRow], setting: str) -> str:
    """The Markdown table of one setting."""
    lines = [f"{setting}: {SETTING_TITLES[setting]}", "", HEADER, "|" + " --- |" * 9]
    for r in (r for r in rows if r.setting == setting):
        name = NAMES[r.model]
        if r.errors or r.train is None or r.evals is None:
            lines.append(f"| {name} | error: {'; '.join(r.errors) or r.reason} |" + " |" * 7)
            continue
        t, e = r.train, r.evals
        lines.append(
            f"| {name} | {seconds_cell(t.befa_s)} | {seconds_cell(t.ref_s)} | {ratio_cell(r.model, t)} "
            f"| {seconds_cell(e.befa_s)} | {seconds_cell(e.ref_s)} | {ratio_cell(r.model, e)} "
            f"| {overlap_cell(r)} | {r.load_start:.1f} / {r.load_end:.1f} |"
        )
    return "\n".join(lines)


def header(args: argparse.Namespace, data: BenchData) -> str:
    return "\n".join(
        [
            f"bench-vs-reference, {time.strftime('%Y-%m-%d %H:%M')}: befa vs the reference toolbox (MMRec), run live",
            f"catalog {data.catalog} (ratings >= 4), split {data.split} (8:1:1 per user)",
            f"features: {FEATURE_LABELS[data.features]}",
            f"pairs: started together, 1 torch thread each, befa on core {args.cores[0]}, MMRec on core "
            f"{args.cores[1]}, seed {args.seed}; stopped once both trained and evaluated {args.epochs} epochs "
            "while the other ran",
            f"medians over the epochs during which both processes ran; ratio = MMRec / befa; no ratio from "
            f"fewer than {MIN_OVERLAP} overlapping epochs",
            "targets (issue #24), for both ratios: LightGCN, BM3, MGCN >= 5x (goal 10x); FREEDOM, LATTICE >= 8x",
            f"machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the start",
        ]
    )


def write_report(path: Path, args: argparse.Namespace, data: BenchData, rows: list[PairRow]) -> None:
    from storage.atomic import write_json

    meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "json"}
    write_json(path, {"args": meta, "features": FEATURE_LABELS[data.features], "pairs": [asdict(r) for r in rows]})


# -- main ------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, work: Path) -> list[PairRow]:
    python = side_venv(args.venv.resolve())
    src = writable_sources(args.reference, work / "mmrec-src")
    data = prepare(args.home.resolve(), args.features, args.split_seed, 0, work / "data")
    print(header(args, data) + "\n", flush=True)
    rows = []
    for setting in args.settings:
        for model in args.models:
            t0 = time.perf_counter()
            row = run_one(model, setting, args, data, python, src, work)
            done = f"befa {len(row.befa['train_s'])} epochs, MMRec {len(row.mmrec['train_s'])}; {row.reason}"
            print(f"{model} {setting}: {done} ({time.perf_counter() - t0:.0f} s)", flush=True)
            rows.append(row)
    print()
    print("\n\n".join(table(rows, s) for s in args.settings))
    if args.json:
        write_report(args.json, args, data, rows)
        print(f"\nwrote {args.json}")
    return rows


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except FlagError as exc:
        print(f"bench_vs_reference: error: {exc}", file=sys.stderr)
        return 2
    args.reference = args.reference.resolve()
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=RESULTS))
    keep, failed = args.keep_work, True
    try:
        failed = any(r.errors for r in run(args, work))
    finally:
        if keep or failed:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
