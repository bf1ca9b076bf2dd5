"""Training and evaluation speed / memory on amazon-baby-5core (and LATTICE at 63k items).

    python -m benchmarks.bench_train [--models bm3,freedom,mgcn,lattice,lightgcn]
        [--epochs 3] [--warmup 1] [--device cpu] [--threads 2] [--json out.json]
        [--big-batches 20 | --no-big] [--no-paired]

Data: the given train/val/test split of amazon-baby-5core
(``$BEFA_DATASETS_ROOT/amazon-baby-5core/{train,val,test}.json``: 19,445 users, 7,050 items,
119,674 train interactions = 59 batches of 2048). Features: SEEDED RANDOM matrices of the
benchmark's shapes (4096-d image, 384-d text). They are for speed only; no quality figure
is or may be read from this benchmark.

Per model, base and +BeFA, each in a fresh subprocess (so peak RSS is per config):
graph-building time (model construction: kNN graphs, adjacency), seconds per training
epoch (median over ``--epochs`` epochs after ``--warmup``), seconds per full evaluation of
valid + test (inference embeddings + full ranking, median of 3 after one warm-up) and peak
RSS (``ru_maxrss``), each printed next to its target.

The +BeFA ratio comes from one more process per content model ("paired"): base and +BeFA
trained side by side, taking optimiser steps in turn, summed +BeFA time over summed base
time. The ratio of the two separate runs is printed in brackets for comparison only: on a
shared host it mostly measures how the load changed between them.

LATTICE at scale: a seeded random catalog of 63,001 items (random 4096-d + 384-d
features) and a random graph of 192,403 users and 1,689,188 interactions; it times model
construction and the first ``--big-batches`` training batches of an epoch (the first
includes the epoch's learned-graph rebuild) and extrapolates an epoch time from them
(825 batches), stated as such, plus peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TARGET_EPOCH_S = {"bm3": 3.3, "freedom": 3.4, "mgcn": 4.8, "lattice": 8.9}
TARGET_EVAL_S = 1.5
TARGET_RSS_GB = 1.7
TARGET_BEFA_RATIO = 1.15
CONTENT_FREE = {"lightgcn", "mostpop"}
BIG = {"items": 63_001, "users": 192_403, "interactions": 1_689_188}
REPO = Path(__file__).resolve().parents[1]


def datasets_root() -> Path:
    return Path(os.environ.get("BEFA_DATASETS_ROOT") or REPO.parent / "shared" / "datasets").resolve()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


# -- child: one configuration ---------------------------------------------------------
def amazon_baby_split():
    """The given split as a (user_idx, item_idx, label) frame; sizes from the id maps."""
    import numpy as np
    import pandas as pd

    root = datasets_root() / "amazon-baby-5core"
    frames = []
    for label, name in ((0, "train"), (1, "val"), (2, "test")):
        path = root / f"{name}.json"
        if not path.exists():
            raise SystemExit(f"{path}: missing (set BEFA_DATASETS_ROOT)")
        blob = json.loads(path.read_text())
        users = np.concatenate([np.full(len(v), int(u), dtype=np.int64) for u, v in blob.items()])
        items = np.concatenate([np.asarray(v, dtype=np.int64) for v in blob.values()])
        frames.append(pd.DataFrame({"user_idx": users, "item_idx": items, "label": np.int8(label)}))
    num_users = len(json.loads((root / "user2id.json").read_text()))
    num_items = len(json.loads((root / "item2id.json").read_text()))
    return pd.concat(frames, ignore_index=True), num_users, num_items


def random_features(num_items: int, seed: int = 0, image_dim: int = 4096, text_dim: int = 384):
    import torch

    from pipeline.features.bundle import FeatureBundle

    g = torch.Generator().manual_seed(seed)
    feats = {
        "image": torch.randn(num_items, image_dim, generator=g),
        "text": torch.randn(num_items, text_dim, generator=g),
    }
    masks = {m: torch.ones(num_items, dtype=torch.bool) for m in feats}
    snaps = {m: f"random-speed-only-seed{seed}" for m in feats}
    return FeatureBundle(feats, masks, snaps)


def model_class(name: str):
    from models import get_model_class

    try:
        return get_model_class(name)
    except KeyError as exc:
        raise SystemExit(str(exc)) from None


def setup_process(args: argparse.Namespace):
    """Threads, seed and (on CPU) the trainer's malloc settings for this child; its device."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.device == "cpu":
        from pipeline.training.allocator import keep_freed_memory

        keep_freed_memory()  # as the trainer does
    return torch.device(args.device)


def training_state(model, config, data, num_items: int, device):
    """(optimiser, batch generator, negative sampler or None), seeded as the trainer seeds them."""
    import torch

    from pipeline.training.epochs import make_optimiser
    from pipeline.training.sampling import NegativeSampler

    optimiser, _ = make_optimiser(model, config)
    generator = torch.Generator(device=device).manual_seed(0)
    sampler = (
        NegativeSampler(num_items, data.train_users, data.train_items, generator) if config.uses_negatives else None
    )
    return optimiser, generator, sampler


def timed_epochs(model, optimiser, data, config, generator, sampler, warmup: int, epochs: int) -> list[float]:
    """Seconds of each of ``epochs`` training epochs of one model, after ``warmup`` untimed ones."""
    from pipeline.training.epochs import run_epoch

    times = []
    for epoch in range(warmup + epochs):
        t0 = time.perf_counter()
        run_epoch(model, optimiser, data, config.batch_size, generator, sampler, epoch)
        if epoch >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def paired_times(model_cls, data, num_items: int, device, warmup: int, epochs: int) -> dict[str, list[float]]:
    """Seconds per epoch of base and +BeFA of one model, trained step by step in turn.

    Why: two separate processes minutes apart see different load on a shared host (the same
    epoch varied by +-20% between runs here), so a ratio of separate runs mostly measures the
    host. Here the two models take alternate optimiser steps (the order flips every epoch),
    so both see the same conditions down to a fraction of a second. Each model's epoch time
    is the sum of its own steps (``pre_epoch`` included, in its first step); the first
    ``warmup`` epochs are not returned."""
    import torch

    from models import make_config
    from pipeline.training.epochs import epoch_steps

    runs = {}
    for variant in ("base", "befa"):
        torch.manual_seed(0)
        config = make_config(model_cls, {"adapter": "befa"} if variant == "befa" else {})
        model = model_cls(data, config).to(device).train()
        runs[variant] = (model, *training_state(model, config, data, num_items, device), config)
    times: dict[str, list[float]] = {"base": [], "befa": []}
    for epoch in range(warmup + epochs):
        order = ("base", "befa") if epoch % 2 == 0 else ("befa", "base")
        steps, spent = {}, {}
        for v in order:
            model, optimiser, generator, sampler, config = runs[v]
            steps[v] = epoch_steps(model, optimiser, data, config.batch_size, generator, sampler, epoch)
            spent[v] = 0.0
        active = list(order)
        while active:
            for v in list(active):
                t0 = time.perf_counter()
                loss = next(steps[v], None)
                if loss is not None:
                    loss.item()  # waits for the device
                spent[v] += time.perf_counter() - t0
                if loss is None:
                    active.remove(v)
        if epoch >= warmup:
            for v in order:
                times[v].append(spent[v])
    return times


def paired_child(args: argparse.Namespace) -> dict[str, Any]:
    """Base and +BeFA of one model in one process, in turn (:func:`paired_times`): the +BeFA ratio,
    summed +BeFA time over summed base time across the timed epochs."""
    from pipeline.training.prepare import prepare_data

    device = setup_process(args)
    model_cls = model_class(args.model)
    frame, num_users, num_items = amazon_baby_split()
    data = prepare_data(frame, num_items, random_features(num_items), num_users=num_users, device=device).train
    times = paired_times(model_cls, data, num_items, device, args.warmup, args.epochs)
    return {
        "model": args.model,
        "paired": True,
        "epoch_s": {v: statistics.median(t) for v, t in times.items()},
        "epoch_s_all": times,
        "befa_ratio": sum(times["befa"]) / sum(times["base"]),
        "befa_ratio_per_epoch": [b / a for a, b in zip(times["base"], times["befa"])],
    }


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from models import make_config
    from pipeline.evaluation.evaluator import evaluate_model
    from pipeline.training.epochs import run_epoch
    from pipeline.training.prepare import prepare_data

    device = setup_process(args)
    rss_after_imports = peak_rss_gb()
    out: dict[str, Any] = {"model": args.model, "variant": args.variant, "threads": args.threads, "device": str(device)}
    model_cls = model_class(args.model)
    config = make_config(model_cls, {"adapter": "befa"} if args.variant == "befa" else {})
    if args.big:
        import pandas as pd

        g = torch.Generator().manual_seed(1)
        n = BIG["interactions"]
        keys = torch.unique(torch.randint(0, BIG["users"] * BIG["items"], (int(n * 1.01),), generator=g))
        keys = keys[torch.randperm(keys.numel(), generator=g)[:n]]
        frame = pd.DataFrame(
            {"user_idx": (keys // BIG["items"]).numpy(), "item_idx": (keys % BIG["items"]).numpy(), "label": 0}
        )
        num_users, num_items = BIG["users"], BIG["items"]
        out["data"] = f"random graph: {num_users} users, {num_items} items, {n} train interactions"
    else:
        frame, num_users, num_items = amazon_baby_split()
        out["data"] = "amazon-baby-5core given split"
    prepared = prepare_data(frame, num_items, random_features(num_items), num_users=num_users, device=device)
    data = prepared.train
    out["counts"] = prepared.counts

    t0 = time.perf_counter()
    model = model_cls(data, config).to(device)
    out["graph_build_s"] = time.perf_counter() - t0
    out["params"] = model.parameter_report()
    optimiser, generator, sampler = training_state(model, config, data, num_items, device)
    model.train()
    if args.big:
        times: list[float] = []
        t1 = time.perf_counter()
        _, nb = run_epoch(
            model,
            optimiser,
            data,
            config.batch_size,
            generator,
            sampler,
            0,
            max_batches=args.big_batches,
            batch_times=times,
        )
        total = time.perf_counter() - t1
        per_epoch = -(-data.train_users.numel() // config.batch_size)
        rest = times[1:] or times
        out.update(
            batches_timed=nb,
            batches_per_epoch=per_epoch,
            first_batch_s=times[0],
            batch_mean_s=sum(rest) / len(rest),
            timed_s=total,
            epoch_extrapolated_s=times[0] + (per_epoch - 1) * sum(rest) / len(rest),
        )
    else:
        epoch_times = timed_epochs(model, optimiser, data, config, generator, sampler, args.warmup, args.epochs)
        # the median: on a shared VM one slow epoch should not move the figure
        out["epoch_s"] = statistics.median(epoch_times)
        out["epoch_s_all"] = epoch_times
        eval_times = []
        for i in range(4):
            t2 = time.perf_counter()
            res = evaluate_model(model, prepared.evaluator, ("valid", "test"))
            if i:
                eval_times.append(time.perf_counter() - t2)
        out["eval_s"] = statistics.median(eval_times)
        out["eval_users"] = {p: r.num_users for p, r in res.items()}
    out["peak_rss_gb"] = peak_rss_gb()
    out["rss_after_imports_gb"] = rss_after_imports
    if device.type == "cuda":
        out["cuda_max_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


# -- parent: run every configuration in its own process ------------------------------
def run_child(argv: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench_train", "--child", *argv]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}


def mark(value: float | None, target: float | None) -> str:
    if value is None:
        return "-"
    if target is None:
        return f"{value:.2f}"
    return f"{value:.2f} / {target:g} {'ok' if value <= target else 'OVER'}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="bm3,freedom,mgcn,lattice,lightgcn")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (after --warmup)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write all figures here")
    p.add_argument("--big-batches", type=int, default=20, help="batches timed for LATTICE at 63k items")
    p.add_argument("--no-big", action="store_true", help="skip LATTICE at 63k items")
    p.add_argument("--big-only", action="store_true", help="only LATTICE at 63k items")
    p.add_argument("--big-variants", default="base", help="variants of LATTICE at 63k items: base, befa or base,befa")
    p.add_argument(
        "--no-paired", action="store_true", help="skip the paired base / +BeFA runs that give the +BeFA ratio"
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    # internal: one configuration in this process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="base", help=argparse.SUPPRESS)
    p.add_argument("--big", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--paired", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        print(json.dumps(paired_child(args) if args.paired else child(args)), flush=True)
        return 0

    common = [
        "--epochs",
        str(args.epochs),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    print("amazon-baby-5core, given split; features: SEEDED RANDOM 4096-d image + 384-d text (speed only)")
    print(f"device {args.device}, {args.threads} threads, {args.warmup} warm-up + {args.epochs} timed epochs")
    load_start = os.getloadavg()
    print(
        f"machine load average at start (1/5/15 min): {load_start[0]:.1f} / {load_start[1]:.1f} / {load_start[2]:.1f} "
        f"on {os.cpu_count()} CPUs (timings are only meaningful when this is below the CPU count)\n"
    )
    results: list[dict[str, Any]] = []
    header = (
        f"{'model':<10} {'variant':<6} {'graph s':>8} {'epoch s / target':>22} {'eval v+t s / target':>22} "
        f"{'peak RSS GB / target':>22} {'+BeFA ratio / target':>22}"
    )
    print(header)
    print("-" * len(header))
    for model in [] if args.big_only else models:
        base_epoch = None
        for variant in ("base",) if model in CONTENT_FREE else ("base", "befa"):
            r = run_child([*common, "--model", model, "--variant", variant], args.timeout)
            r.setdefault("model", model)
            r.setdefault("variant", variant)
            results.append(r)
            if "error" in r:
                print(f"{model:<10} {variant:<6} ERROR: {r['error']}")
                continue
            ratio = ""
            if variant == "base":
                base_epoch = r["epoch_s"]
            elif base_epoch:
                r["befa_ratio_separate"] = r["epoch_s"] / base_epoch
                ratio = f"({r['befa_ratio_separate']:.2f} separate)"
            print(
                f"{model:<10} {variant:<6} {r['graph_build_s']:>8.2f} "
                f"{mark(r['epoch_s'], TARGET_EPOCH_S.get(model)):>22} "
                f"{mark(r['eval_s'], TARGET_EVAL_S):>22} {mark(r['peak_rss_gb'], TARGET_RSS_GB):>22} {ratio:>22}",
                flush=True,
            )
        if model not in CONTENT_FREE and not args.no_paired:
            r = run_child([*common, "--model", model, "--paired"], args.timeout)
            r.setdefault("model", model)
            r["variant"] = "paired"
            results.append(r)
            if "error" in r:
                print(f"{model:<10} paired ERROR: {r['error']}")
                continue
            e = r["epoch_s"]
            print(
                f"{model:<10} {'paired':<6} {'':>8} {e['base']:>9.2f} | {e['befa']:<10.2f} "
                f"{'base | +BeFA, in turn':>24}"
                f"{'':>22} {mark(r['befa_ratio'], TARGET_BEFA_RATIO):>22}",
                flush=True,
            )
    if args.big_only or (not args.no_big and "lattice" in models):
        print(
            f"\nLATTICE at {BIG['items']:,} items "
            f"(random graph {BIG['users']:,} users, {BIG['interactions']:,} interactions, random features):"
        )
        for variant in [v.strip() for v in args.big_variants.split(",") if v.strip()]:
            r = run_child(
                [*common, "--model", "lattice", "--variant", variant, "--big", "--big-batches", str(args.big_batches)],
                args.timeout,
            )
            r.setdefault("model", "lattice-63k")
            r["model"] = "lattice-63k"
            r.setdefault("variant", variant)
            results.append(r)
            if "error" in r:
                print(f"  {variant}: ERROR: {r['error']}")
                continue
            print(
                f"  {variant}: graph build {r['graph_build_s']:.1f} s; "
                f"{r['batches_timed']} of {r['batches_per_epoch']} batches timed: "
                f"first {r['first_batch_s']:.2f} s (incl. learned-graph rebuild), "
                f"then {r['batch_mean_s']:.3f} s/batch; "
                f"epoch extrapolated {r['epoch_extrapolated_s']:.0f} s; peak RSS {r['peak_rss_gb']:.2f} GB",
                flush=True,
            )
    load_end = os.getloadavg()
    print(f"\nmachine load average at end (1/5/15 min): {load_end[0]:.1f} / {load_end[1]:.1f} / {load_end[2]:.1f}")
    rss0 = [r["rss_after_imports_gb"] for r in results if "rss_after_imports_gb" in r]
    if rss0:
        print(
            f"peak RSS includes {min(rss0):.2f} GB reached by the imports alone "
            "(torch CUDA build, PyG, pandas, pyarrow)"
        )
    if args.json:
        from storage.atomic import write_json

        write_json(
            args.json,
            {
                "features": "seeded random, speed only",
                "targets": {
                    "epoch_s": TARGET_EPOCH_S,
                    "eval_s": TARGET_EVAL_S,
                    "peak_rss_gb": TARGET_RSS_GB,
                    "befa_ratio": TARGET_BEFA_RATIO,
                },
                "load_average": {"start": load_start, "end": load_end},
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "results": results,
            },
        )
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
