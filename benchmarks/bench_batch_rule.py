"""What the opt-in large-catalog rule costs in quality and saves in time (issue 15, part 2).

    python -m benchmarks.bench_batch_rule [--model lightgcn] [--max-batches 16] [--seeds 0]
        [--epochs 400] [--patience 10] [--threads 2] [--json out.json]

``--set max_batches_per_epoch=N`` caps an epoch's optimiser steps: the batch grows to
``ceil(train / N)`` and the lr by the square root of that growth (``pipeline.training.batching``).
Its point is the epoch's growth with the catalog (``make bench-scale ARGS="--max-batches 59"``);
its price is fewer, larger steps. This benchmark reads that price on real interactions:
amazon-baby-5core's given split (119,674 train interactions, 59 batches of 2,048), a
content-free model (default LightGCN, so no features are involved and the figures are real
quality figures), trained by the pipeline's own trainer to early stop on valid Recall@20,
once at the protocol's batch and once per cap. A cap of 16 (the least the small-catalog rule
allows) gives a batch of 7,480, near the ~8.1k that a
catalog 4x amazon-baby's gets at a cap of 59.

Per arm it prints batch, lr, epochs, best epoch, best valid and test Recall@20, the training
seconds and the seconds to the best epoch (training + per-epoch validation up to it). One
run per arm and seed, alone on the machine; the seconds are this host's and carry its noise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_train import amazon_baby_split


def train_arm(prepared, model: str, cap: int | None, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from models import get_model_class, make_config
    from pipeline.training.trainer import TrainerConfig, fit

    cls = get_model_class(model)
    config = make_config(cls, {} if cap is None else {"max_batches_per_epoch": cap})
    trainer = TrainerConfig(
        max_epochs=args.epochs,
        patience=args.patience,
        seed=seed,
        device="cpu",
        num_threads=args.threads,
        quiet=True,
        floor=False,
    )
    with tempfile.TemporaryDirectory(prefix="befa-batch-rule-") as tmp:
        t0 = time.perf_counter()
        result = fit(cls, config, prepared, Path(tmp) / "run", trainer)
        wall = time.perf_counter() - t0
    rec = result.record
    best = rec.best_epoch or 0
    to_best = sum(e.train_s + e.eval_s for e in rec.epochs[: best + 1])
    return {
        "model": model,
        "cap": cap,
        "seed": seed,
        "batch_size": rec.batching.batch_size,
        "lr": rec.config["lr"],
        "batches_per_epoch": rec.batching.batches_per_epoch,
        "epochs": len(rec.epochs),
        "best_epoch": best,
        "valid_recall@20": rec.best_valid.get("recall@20"),
        "test_recall@20": rec.test.get("recall@20"),
        "train_s": sum(e.train_s for e in rec.epochs),
        "to_best_s": to_best,
        "wall_s": wall,
        "state": rec.state,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lightgcn", help="a content-free model (no features are loaded)")
    p.add_argument("--max-batches", default="16", help="caps to compare with the protocol, comma-separated")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=400, help="max epochs per run")
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import torch

    from pipeline.training.prepare import prepare_data

    torch.set_num_threads(args.threads)
    frame, num_users, num_items = amazon_baby_split()
    prepared = prepare_data(frame, num_items, None, num_users=num_users, device="cpu")  # once: every arm trains on it
    caps = [None] + [int(c) for c in args.max_batches.split(",") if c.strip()]
    print(
        f"amazon-baby-5core given split, {args.model}, early stop on valid Recall@20 (patience {args.patience}, "
        f"max {args.epochs} epochs), {args.threads} threads; REAL interactions, no features\n"
    )
    head = (
        f"{'arm':<16} {'seed':>4} {'batch':>6} {'lr':>9} {'b/epoch':>7} {'epochs':>6} {'best':>5} "
        f"{'valid R@20':>10} {'test R@20':>9} {'train s':>8} {'to best s':>9}"
    )
    print(head + "\n" + "-" * len(head), flush=True)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        for cap in caps:
            r = train_arm(prepared, args.model, cap, seed, args)
            rows.append(r)
            arm = "protocol" if cap is None else f"cap {cap}"
            print(
                f"{arm:<16} {seed:>4} {r['batch_size']:>6} {r['lr']:>9.2e} {r['batches_per_epoch']:>7} "
                f"{r['epochs']:>6} {r['best_epoch']:>5} {r['valid_recall@20']:>10.4f} {r['test_recall@20']:>9.4f} "
                f"{r['train_s']:>8.1f} {r['to_best_s']:>9.1f}",
                flush=True,
            )
    base = [r for r in rows if r["cap"] is None]
    for cap in caps[1:]:
        arm = [r for r in rows if r["cap"] == cap]
        dv = sum(a["test_recall@20"] / b["test_recall@20"] - 1 for a, b in zip(arm, base)) / len(arm)
        dt = sum(a["to_best_s"] / b["to_best_s"] for a, b in zip(arm, base)) / len(arm)
        de = sum(a["train_s"] / a["epochs"] / (b["train_s"] / b["epochs"]) for a, b in zip(arm, base)) / len(arm)
        print(
            f"\ncap {cap}: test Recall@20 {dv:+.1%} against the protocol; epoch time x{de:.2f}; "
            f"time to the best epoch x{dt:.2f}"
        )
    if args.json:
        from storage.atomic import write_json

        write_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
