"""The BeFA study at the full protocol, resumable: `make bench-study-full`.

    python -m benchmarks.bench_study_full [--max-trials 4] [--seeds 999,1000,1001]
        [--device cuda] [--threads N] [--name bench-study-full] [--fresh] [--json out.json]

What it runs (``pipeline.study.run.run_study``) on movielens-100k-posters (ratings >= 4,
the MMRec 8:1:1 split, seed 2024), with real features: EfficientNet-Lite2 ImageNet image
features and MiniLM text features (``image=effnet:lite2,text=minilm``):

- BM3, LATTICE, FREEDOM, MGCN, each base and +BeFA;
- the protocol: early stopping on VALID Recall@20, patience 10, at most 1000 epochs,
  3 seeds everywhere (main table, t sweep, modality ablation, sparsity, cold items);
- search budget: ``--max-trials`` (default 4) configurations per model and adapter, the
  model's defaults first, then a seeded random sample of its documented grid (+BeFA adds
  t x dropout from the authors' grid); judged on VALID only, trials with the first seed;
- the decoupling-size sweep (t = 0.125 ... 8) and the image / text / both ablation on
  FREEDOM, the sparsity sweep at 100 / 50 / 25 % of each user's train interactions, and
  the item cold-start split (20 % of items with no train interaction) for every model.

Resumable: the study folder ``$BEFA_HOME/runs/studies/<--name>`` is kept between
invocations, and every run is content-addressed (model config, modalities, split,
budget, feature snapshots), so a finished run is reused and a killed one resumes from
its ``last.pt``: run the same command again to continue. ``--fresh`` deletes the folder
first. Each invocation appends its wall time and run counts to ``sessions.json`` in the
folder, so the report can say how long the whole study took and in how many parts.

The report (``report.html``/``report.md`` in the folder) has mean ± std over seeds, the
relative gain, paired per-user Wilcoxon tests with Holm correction, the item-group table
(warm / cold / long tail) and the number of runs that hit the epoch cap.
Expect hours on CPU (MGCN alone is ~13 s per epoch on 2 cores); this is the long run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENCODER = {"image": "effnet:lite2", "text": "minilm"}
MODELS = ["bm3", "lattice", "freedom", "mgcn"]


def build_params(args: argparse.Namespace) -> dict:
    """The study's parameters: the protocol's defaults, stated explicitly."""
    return dict(
        name=args.name,
        dataset=args.dataset,
        encoder=dict(ENCODER),
        models=args.models.split(","),
        seeds=[int(s) for s in args.seeds.split(",")],
        epochs=args.epochs,
        patience=args.patience,
        max_trials=args.max_trials,
        focus_model="freedom",
        experiment_seeds=None,  # every seed in every experiment
        train_fractions=[1.0, 0.5, 0.25],
        cold_fraction=0.2,
        num_threads=args.threads,
        device=args.device,
    )


def record_session(folder: Path, entry: dict) -> list[dict]:
    """Append one invocation to ``sessions.json`` (atomic write) and return them all."""
    from storage.atomic import write_json

    path = folder / "sessions.json"
    sessions = json.loads(path.read_text()) if path.exists() else []
    sessions.append(entry)
    write_json(path, sessions)
    return sessions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="movielens-100k-posters")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="999,1000,1001")
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--max-trials", type=int, default=4, help="search budget per model and adapter (valid only)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--name", default="bench-study-full")
    ap.add_argument("--fresh", action="store_true", help="delete the study folder first (default: resume it)")
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("BEFA_DATASETS_ROOT", str((REPO.parent / "shared" / "datasets").resolve()))
    from pipeline.settings import get_settings
    from pipeline.study.params import StudyParams
    from pipeline.study.run import run_study, study_folder

    settings = get_settings()
    params = StudyParams(**build_params(args))
    folder = study_folder(params, settings)
    if folder.exists() and args.fresh:
        shutil.rmtree(folder)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    result = run_study(params, settings, log=lambda m: print(m, flush=True))
    wall = time.perf_counter() - start
    sessions = record_session(
        Path(result.folder),
        {
            "started_at": started,
            "wall_s": wall,
            "runs_trained": result.runs_trained,
            "runs_reused": result.runs_reused,
        },
    )
    total = sum(s["wall_s"] for s in sessions)
    print("\n" + result.verdict)
    print("\nphase wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result.timings.items()))
    print(f"this part: {wall:.0f} s, runs trained {result.runs_trained}, reused {result.runs_reused}")
    print(f"whole study: {total / 3600:.2f} h in {len(sessions)} part(s); report: {result.files['report_html']}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"wall_s": wall, "total_wall_s": total, "parts": len(sessions), "folder": result.folder}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
