"""Defaults on sparse catalogs (issue 23, item 1): each default model against MostPop on valid and
test Recall@20, at plain defaults and after ``befa run``'s fit.

    python -m benchmarks.bench_sparse_defaults [--datasets tiktok,movielens-sparse]
        [--models lightgcn,bm3,freedom,lattice,mgcn] [--adapters none,befa] [--epochs 1000]
        [--patience 10] [--fit-trials 8] [--fit-minutes M] [--threads 1] [--home DIR] [--json out.json]

Two catalogs, each through ``run_pipeline`` (what ``befa run`` calls) with ``--fit on``:

- ``tiktok``: ``befa ingest mmrec --folder $BEFA_DATASETS_ROOT/tiktok-mmrec --as tiktok``, trained
  on its imported features and given split (``--encoder imported --split-kind given``);
- ``movielens-sparse``: movielens-100k-posters (ratings >= 4), its interactions a seeded random
  subset at density 0.2% (:func:`sparse_subset`: interactions / (users x items), every movie kept
  as an item), the default encoder (EfficientNet-Lite2 posters + MiniLM text).

"Defaults" is the fit's first trial: the default configuration with the run's seed, epochs and
patience, which is exactly the run ``--fit off`` trains (CPU training is deterministic). "Fit" is
the fit's winner on valid. Test values are read here, after every decision, from the trials'
records; the fit never reads them. A model's row says whether it reached MostPop's valid
Recall@20 and, when it did not, that the recommend step left it out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.catalog import build_catalog
from pipeline.data.importers.base import ImportResult
from pipeline.data.importers.movielens import MovieLensImporter
from pipeline.data.ingest import ingest
from pipeline.job.run import run_pipeline
from pipeline.settings import get_settings
from pipeline.training.record import RunRecord

DENSITY = 0.002
SUBSET_SEED = 2024
ML_SPARSE = "movielens-sparse"
METRIC = "recall@20"


def sparse_subset(interactions: pd.DataFrame, n_items: int, density: float, seed: int) -> pd.DataFrame:
    """The shortest prefix of a seeded permutation of the interactions whose density
    (rows / (its users x ``n_items``)) reaches ``density``: a uniform random subset."""
    order = np.random.default_rng(seed).permutation(len(interactions))
    shuffled = interactions.iloc[order].reset_index(drop=True)
    first_seen = ~shuffled["user_id"].duplicated()
    users_so_far = np.cumsum(first_seen.to_numpy())  # users among the first n + 1 rows
    n = np.arange(1, len(shuffled) + 1)
    reached = np.flatnonzero(n / (users_so_far * n_items) >= density)
    if not len(reached):
        raise ValueError(f"the catalog is sparser than {density:.2%} already")
    return shuffled.iloc[: reached[0] + 1].sort_values(["user_id", "timestamp"]).reset_index(drop=True)


class SparseMovieLens(MovieLensImporter):
    """movielens-100k-posters with a seeded 0.2%-dense subset of its interactions."""

    name = ML_SPARSE

    def run(self, options: Any) -> ImportResult:
        full = super().run(options)
        items = full.catalog.items[["item_id", "title", "text", "image", "image_hash"]]
        inter = full.catalog.interactions[["user_id", "item_id", "rating", "timestamp"]]
        subset = sparse_subset(inter, len(items), DENSITY, SUBSET_SEED)
        meta = {**full.catalog.meta, "subset": {"density": DENSITY, "seed": SUBSET_SEED, "of": len(inter)}}
        full.report.notes.append(f"a seeded random subset: {len(subset):,} of {len(inter):,} interactions")
        return ImportResult(build_catalog(ML_SPARSE, items, subset, meta=meta), full.report, rejects=full.rejects)


def prepare(settings: Any, dataset: str, datasets_root: Path) -> dict[str, Any]:
    """Ingest the catalog into the benchmark's home; returns its pipeline parameters."""
    if dataset == "tiktok":
        ingest("mmrec", settings, folder=str(datasets_root / "tiktok-mmrec"), name="tiktok")
        return {"dataset": "tiktok", "encoder": "imported", "split_kind": "given"}
    if dataset == ML_SPARSE:
        ingest(SparseMovieLens(), settings, root=str(datasets_root / "movielens-100k-posters"), verify=False)
        return {"dataset": ML_SPARSE}
    raise SystemExit(f"bench-sparse-defaults: unknown dataset {dataset!r}; use tiktok or {ML_SPARSE}")


def run_dataset(settings: Any, dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    data = prepare(settings, dataset, Path(os.environ.get("BEFA_DATASETS_ROOT", "../shared/datasets")))
    params = {
        **data,
        "models": args.models.split(","),
        "adapters": args.adapters.split(","),
        "epochs": args.epochs,
        "patience": args.patience,
        "fit": "on",
        "fit_trials": args.fit_trials,
        "fit_minutes": args.fit_minutes,
        "num_threads": args.threads,
        "verify_checkpoints": False,
        "run_name": f"bench-{dataset}",
    }
    result = run_pipeline(params, settings, log=print)
    return {"dataset": dataset, "result": result, "params": params}


def rows_of(done: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trained run: defaults (the fit's first trial) and the fit's winner, valid and test."""
    result = done["result"]
    runs = {f"{r.model}-{r.adapter}": r for r in result.runs}
    floor = runs["mostpop-none"]
    left = {n.split(":")[0] for n in (result.recommendations.left_out if result.recommendations else [])}
    rows = []
    for key, run in runs.items():
        if run.fit is None:
            continue
        default = RunRecord.load(run.fit.trials[0].run_dir)
        rows.append(
            {
                "dataset": done["dataset"],
                "run": run.label,
                "mostpop_valid": floor.valid[METRIC],
                "mostpop_test": floor.test[METRIC],
                "default_valid": default.best_valid.get(METRIC),
                "default_test": default.test.get(METRIC),
                "fit_valid": run.valid.get(METRIC),
                "fit_test": run.test.get(METRIC),
                "winner": run.fit.winner_text(),
                "trials": len(run.fit.trials),
                "fit_seconds": run.fit.seconds,
                "served_candidate": run.label not in left,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    columns = [
        "catalog",
        "run",
        "MostPop valid / test",
        "defaults valid / test",
        "fit valid / test",
        "fit's winner (trials)",
        ">= MostPop on valid: defaults / fit",
    ]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for r in rows:
        d_ok = "yes" if (r["default_valid"] or 0) >= r["mostpop_valid"] else "no"
        f_ok = "yes" if (r["fit_valid"] or 0) >= r["mostpop_valid"] else "no (left out of recommend)"
        lines.append(
            f"| {r['dataset']} | {r['run']} | {num(r['mostpop_valid'])} / {num(r['mostpop_test'])} | "
            f"{num(r['default_valid'])} / {num(r['default_test'])} | {num(r['fit_valid'])} / {num(r['fit_test'])} | "
            f"{r['winner']} ({r['trials']}) | {d_ok} / {f_ok} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench-sparse-defaults", description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=f"tiktok,{ML_SPARSE}")
    ap.add_argument("--models", default="lightgcn,bm3,freedom,lattice,mgcn")
    ap.add_argument("--adapters", default="none,befa")
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--fit-trials", type=int, default=8)
    ap.add_argument("--fit-minutes", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--home", type=Path, default=None, help="BEFA_HOME for the runs (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here too")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="befa-sparse-defaults-"))
    settings = get_settings(home=home)
    rows: list[dict[str, Any]] = []
    for dataset in args.datasets.split(","):
        rows += rows_of(run_dataset(settings, dataset, args))
    header = (
        f"bench-sparse-defaults {dt.date.today()} on {platform.node()} ({os.cpu_count()} CPUs), "
        f"{args.threads} thread(s): epochs {args.epochs}, patience {args.patience}, "
        f"fit trials {args.fit_trials}, fit minutes {args.fit_minutes}"
    )
    print(markdown(rows, header))
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
