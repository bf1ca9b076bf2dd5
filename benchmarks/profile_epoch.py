"""Where one training epoch's time goes, per model, against its arithmetic floor.

    python -m benchmarks.profile_epoch [--models lightgcn,bm3,freedom,mgcn,lattice] [--adapter none|befa]
        [--epochs 5] [--threads 1] [--top 8] [--train-features] [--features random|real]
        [--home DIR] [--json out.json]

Catalog: movielens-100k-posters (befa's ingest, ratings >= 4, seeded 8:1:1 random split,
44,630 train interactions = 22 batches of 2048), with SEEDED RANDOM features of the
widths befa extracts (1280-d EfficientNet-Lite2 image, 384-d MiniLM text): speed only, no
quality figure may be read here. ``--features real`` trains on befa's default encoders'
features instead (extracted into ``--home``'s store the first time: minutes): real
features can take slow paths random ones never do (MiniLM's near-zero dimensions once made
a gradient denormal, ``models.content.without_negligible``). One process, ``--threads``
torch threads (1 by default, as the live reference comparison runs).

Per model it prints:
- the median training seconds per epoch over ``--epochs`` epochs after one warm-up;
- the epoch's arithmetic: FLOPs of every dense product (``torch.utils.flop_counter``:
  mm, addmm, bmm, ...) plus the sparse products, which run as ``embedding_bag`` on CPU
  (counted here as 2 x entries x columns each), forward and backward;
- the floor: those FLOPs at this machine's matmul rate, measured in the same process
  (float32 ``mm`` of a 2048 x 1280 by 1280 x 64 product, the shape of a feature
  projection, at the same thread count), and measured / floor;
- the top ``--top`` operators by self CPU time (``torch.profiler``, one epoch).

Reading it: measured / floor near 1 means the epoch is arithmetic-bound (only fewer FLOPs
help); far above 1 means the rest (elementwise passes, gathers and scatters, the
optimiser, Python) bounds it. The findings are copied into each model's docstring.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

MODELS = ("lightgcn", "bm3", "freedom", "mgcn", "lattice")
IMAGE_DIM, TEXT_DIM = 1280, 384


def movielens_train_data(home: Path, image_dim: int = IMAGE_DIM, text_dim: int = TEXT_DIM, features: str = "random"):
    """movielens-100k-posters' seeded random split as befa trains it, with seeded random
    features, or (``features="real"``) befa's default encoders' features from ``home``'s
    store, extracted there first if missing (minutes on CPU)."""
    import torch

    from benchmarks.bench_train import random_features
    from benchmarks.vs_reference_data import REAL_ENCODER  # befa's defaults, as bench-vs-reference trains
    from pipeline.data.catalog import Catalog
    from pipeline.data.ingest import ingest
    from pipeline.data.splits import split_random
    from pipeline.data.versions import is_ingested
    from pipeline.features.load import features_for_training
    from pipeline.settings import get_settings
    from pipeline.training.prepare import prepare_data
    from storage.feature_store import FeatureStore

    settings = get_settings(home=home)
    folder = settings.catalog_dir("movielens-100k-posters")
    catalog = Catalog.load(folder) if is_ingested(folder) else ingest("movielens-100k-posters", settings)[0]
    frame = split_random(catalog, seed=2024).frame
    if features == "real":
        store = FeatureStore(settings.feature_store)
        feats = features_for_training(catalog, REAL_ENCODER, store, device="cpu", progress=False)
    else:
        feats = random_features(catalog.num_items, image_dim=image_dim, text_dim=text_dim)
    cpu = torch.device("cpu")
    return prepare_data(frame, catalog.num_items, feats, num_users=catalog.num_users, device=cpu).train


def matmul_gflops(threads: int, repeats: int = 50) -> float:
    """This machine's float32 matmul rate at ``threads`` threads (GFLOP/s), median of ``repeats``."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, IMAGE_DIM), torch.randn(IMAGE_DIM, 64)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * 2048 * IMAGE_DIM * 64 / statistics.median(times) / 1e9


def _embedding_bag_flop(weight_shape, indices_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * indices_shape[0] * weight_shape[1]


def epoch_flops(run_one_epoch) -> int:
    """FLOPs of one epoch (forward and backward): dense products plus CPU sparse products."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {
        aten._embedding_bag_forward_only: _embedding_bag_flop,  # keys are op packets
        aten._embedding_bag: _embedding_bag_flop,
    }
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        run_one_epoch()
    return counter.get_total_flops()


def top_ops(run_one_epoch, top: int) -> list[dict[str, Any]]:
    """The ``top`` operators of one epoch by self CPU time, with their share of the epoch."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_one_epoch()
    events = [e for e in prof.key_averages() if not e.key.startswith(("Optimizer.", "autograd::engine"))]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"op": e.key, "ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total, "calls": e.count}
        for e in events[:top]
    ]


def profile_model(name: str, data, args: argparse.Namespace, gflops: float) -> dict[str, Any]:
    import torch

    from benchmarks.bench_train import model_class, timed_epochs, training_state
    from models import make_config
    from pipeline.training.epochs import run_epoch

    cls = model_class(name)
    overrides: dict[str, Any] = {} if name == "lightgcn" else {"adapter": args.adapter}
    if args.train_features and name != "lightgcn":
        overrides["train_features"] = True
    torch.manual_seed(0)
    config = make_config(cls, overrides)
    model = cls(data, config).train()
    optimiser, generator, sampler = training_state(model, config, data, data.num_items, torch.device("cpu"))
    times = timed_epochs(model, optimiser, data, config, generator, sampler, 1, args.epochs)
    epoch = iter(range(1000, 2000))

    def one() -> None:
        run_epoch(model, optimiser, data, config.batch_size, generator, sampler, next(epoch))

    flops = epoch_flops(one)
    seconds = statistics.median(times)
    floor_s = flops / (gflops * 1e9)
    return {
        "model": name,
        "adapter": overrides.get("adapter", "none"),
        "train_features": bool(overrides.get("train_features")),
        "epoch_s": seconds,
        "epoch_s_all": times,
        "gflop": flops / 1e9,
        "floor_s": floor_s,
        "over_floor": seconds / floor_s if floor_s else None,
        "top": top_ops(one, args.top),
    }


def print_report(rows: list[dict[str, Any]], gflops: float, threads: int) -> None:
    print(f"\nmatmul rate: {gflops:.1f} GFLOP/s float32 at {threads} thread(s)")
    print(f"{'model':<9} {'adapter':<7} {'s/epoch':>8} {'GFLOP':>7} {'floor s':>8} {'x floor':>8}")
    for r in rows:
        print(
            f"{r['model']:<9} {r['adapter']:<7} {r['epoch_s']:8.3f} {r['gflop']:7.2f} "
            f"{r['floor_s']:8.3f} {r['over_floor']:7.1f}x"
        )
    for r in rows:
        print(f"\n{r['model']} ({r['adapter']}): top operators by self CPU time, one epoch")
        for op in r["top"]:
            print(f"  {op['op']:<44} {op['ms']:8.1f} ms  {op['share']:6.1%}  {op['calls']:5d} calls")


def main(argv: list[str] | None = None) -> int:
    import os
    import tempfile

    import torch

    parser = argparse.ArgumentParser(prog="make profile-epoch ARGS=", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--adapter", choices=("none", "befa"), default="none")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--train-features", action="store_true", help="trainable raw feature tables (reference)")
    parser.add_argument(
        "--features",
        choices=("random", "real"),
        default="random",
        help="seeded random rows of the real widths, or befa's default encoders' features (from --home's store)",
    )
    parser.add_argument("--home", type=Path, default=None, help="befa home to ingest movielens into (default: temp)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)} (choose from {', '.join(MODELS)})")
    from pipeline.training.allocator import keep_freed_memory

    keep_freed_memory()  # as the trainer does
    gflops = matmul_gflops(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="befa-profile-") as tmp:
        data = movielens_train_data(args.home or Path(tmp), features=args.features)
        rows = [profile_model(m, data, args, gflops) for m in models]
    print_report(rows, gflops, args.threads)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"gflops": gflops, "threads": args.threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
