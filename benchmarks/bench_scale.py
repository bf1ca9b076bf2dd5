"""How cost grows with catalog size: seeded random catalogs at 1x, 4x, 16x amazon-baby (speed only).

    python -m benchmarks.bench_scale [--sizes 1,4,16] [--models lightgcn,bm3,freedom,mgcn,lattice]
        [--batches 10] [--eval-users 4096] [--max-batches 0] [--threads 2] [--device cpu] [--json out.json]
    python -m benchmarks.bench_scale --knn [--knn-items 7050,63001] [--knn-data lowdim,fullrank] [--knn-exact-rows 4096]
    python -m benchmarks.bench_scale --knn-quality [--epochs 10]

Catalogs (default mode): at scale s, s x amazon-baby's 19,445 users, 7,050 items and 160,792
interactions, drawn uniformly at random (seeded, duplicates removed), split 74/13/13 into
train/valid/test as amazon-baby's given split is; features SEEDED RANDOM 4096-d image + 384-d
text (``bench_train.random_features``). SPEED ONLY: no quality figure is or may be read here.
Per model and size, each in a fresh subprocess (so peak RSS is per configuration):
- graph-building time (model construction: adjacency and kNN graphs; the kNN method is
  ``auto``, so the 16x catalog, >= ``APPROX_KNN_MIN_ITEMS`` items, uses the approximate
  search; on random features its recall means nothing, only its time is read here);
- seconds per epoch, EXTRAPOLATED from ``--batches`` timed batches (after 2 warm-up batches):
  first batch (it includes ``pre_epoch``: FREEDOM's edge sampling, LATTICE's graph rebuild)
  + (batches per epoch - 1) x the mean of the others;
- seconds per full evaluation (valid + test): the inference embeddings once, plus the full
  ranking of ``--eval-users`` sampled evaluation users scaled to all of them (EXTRAPOLATED when
  there are more; exact below);
- peak RSS (``ru_maxrss``).
``--max-batches N`` applies the opt-in large-catalog rule (at most N batches per epoch, the
batch and lr growing; ``pipeline.training.batching``), so the epoch's growth can be read with it;
``--eval-users 0`` skips the evaluation. Then the growth exponent e from the smallest to the largest
size (cost ~ size^e) of the epoch, of the evaluation per user (whose catalog grows with the size, so 1 is
linear) and of the graph build, next to the targets: e <= 1.1 (training, evaluation per user), graph build not
quadratic in items (e <= 1.5). It first prints the share of users and items within two hops of
one training batch at each size (what a propagation restricted to the batch would still
touch). Default run on 2 cores: 18.5 min (2026-12-02; figures in the README).

``--knn``: build time and recall@10 of the approximate kNN graph against the exact one, per
modality, at 7,050 and 63,001 items. Features: SEEDED SYNTHETIC with neighbourhoods, ``lowdim``
(low intrinsic dimension, as encoder features have) and ``fullrank`` (a hard case), see
``structured_features``; on pure noise no neighbour structure exists for any index to find. The
exact search is timed on ``--knn-exact-rows`` sampled rows and EXTRAPOLATED linearly to all
rows (its cost is the same per row); recall is measured on those rows. Targets: recall >= 0.95,
>= 10x faster at 63k items.

``--knn-quality``: FREEDOM on amazon-baby's given split, ``--epochs`` epochs, once with the exact
and once with the approximate graph (forced: 7,050 items is below the automatic threshold),
valid Recall@20 of each. Features: SYNTHETIC BEHAVIOUR-DERIVED (each item's train-interaction
vector through a seeded random projection, plus noise), so that the item graph carries signal;
the figure is the effect of the approximation on one model, not a quality figure for real
features.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_train import (
    amazon_baby_split,
    model_class,
    peak_rss_gb,
    random_features,
    setup_process,
    training_state,
)

BASE = {"users": 19_445, "items": 7_050, "interactions": 160_792}  # amazon-baby-5core
SPLIT = (0.744, 0.128)  # train, valid shares of amazon-baby's given split (test: the rest)
MODELS = "lightgcn,bm3,freedom,mgcn,lattice"
TARGET_E = 1.1
TARGET_GRAPH_E = 1.5
REPO = Path(__file__).resolve().parents[1]


# -- catalogs -------------------------------------------------------------------------
def random_catalog(scale: float, seed: int = 0):
    """(split frame, num_users, num_items) of a seeded random catalog ``scale`` x amazon-baby."""
    import pandas as pd
    import torch

    users, items = int(BASE["users"] * scale), int(BASE["items"] * scale)
    n = int(BASE["interactions"] * scale)
    g = torch.Generator().manual_seed(seed)
    keys = torch.unique(torch.randint(0, users * items, (int(n * 1.02),), generator=g))
    keys = keys[torch.randperm(keys.numel(), generator=g)[:n]]
    draw = torch.rand(keys.numel(), generator=g)
    label = (draw >= SPLIT[0]).to(torch.int8) + (draw >= SPLIT[0] + SPLIT[1]).to(torch.int8)
    frame = pd.DataFrame(
        {"user_idx": (keys // items).numpy(), "item_idx": (keys % items).numpy(), "label": label.numpy()}
    )
    return frame, users, items


def structured_features(num_items: int, dim: int, seed: int = 0, kind: str = "lowdim", group: int = 32):
    """Seeded features with neighbourhoods: items around num_items / group random centres.

    ``lowdim``: the centres and items live in a 32-d latent space (items at half the centres'
    spread), mapped to ``dim`` by a random linear map, plus isotropic noise at 0.3 of the signal
    per dimension: a low intrinsic dimension, as encoder features have. ``fullrank``: a hard
    case, items around centres in all ``dim`` dimensions, noise as large as the centres' spread,
    power-law spectrum 1/sqrt(j): neighbourhoods exist (top-10 cosine ~0.55) but are spread
    over every direction."""
    import torch

    g = torch.Generator().manual_seed(seed)
    width = 32 if kind == "lowdim" else dim
    centres = torch.randn(max(1, num_items // group), width, generator=g)
    pick = torch.randint(0, centres.size(0), (num_items,), generator=g)
    if kind == "lowdim":
        latent = centres[pick] + 0.5 * torch.randn(num_items, width, generator=g)
        signal = latent @ torch.randn(width, dim, generator=g) / width**0.5
        return signal + 0.3 * torch.randn(num_items, dim, generator=g)
    scale = torch.arange(1, dim + 1, dtype=torch.float32).rsqrt()
    return (centres[pick] + torch.randn(num_items, dim, generator=g)) * scale


def behaviour_features(frame, num_users: int, num_items: int, seed: int = 0):
    """FeatureBundle of synthetic features derived from the train interactions (see --knn-quality)."""
    import numpy as np
    import torch

    from pipeline.features.bundle import FeatureBundle

    train = frame[frame["label"] == 0]
    idx = torch.from_numpy(np.stack([train["item_idx"].to_numpy(np.int64), train["user_idx"].to_numpy(np.int64)]))
    r = torch.sparse_coo_tensor(idx, torch.ones(idx.size(1)), (num_items, num_users)).coalesce()
    g = torch.Generator().manual_seed(seed)
    feats = {}
    for name, dim in (("image", 4096), ("text", 384)):
        proj = torch.randn(num_users, dim, generator=g)
        x = torch.sparse.mm(r, proj)
        feats[name] = x + x.std() * torch.randn(num_items, dim, generator=g)
    masks = {m: torch.ones(num_items, dtype=torch.bool) for m in feats}
    return FeatureBundle(feats, masks, {m: f"behaviour-derived-seed{seed}" for m in feats})


# -- child: one model at one size -----------------------------------------------------
def eval_subset(evaluator, users, num_users: int):
    """An Evaluator over the held-out rows of ``users`` only (same train mask and items)."""
    from pipeline.evaluation.evaluator import Evaluator, UserItems

    heldout = {}
    for part, table in evaluator.heldout.items():
        row, item = table.rows(users)
        heldout[part] = UserItems.from_pairs(num_users, users[row], item)
    return Evaluator(evaluator.train, heldout, evaluator.num_items)


def timed_eval(model, prepared, num_users: int, sample: int, seed: int = 0) -> dict[str, Any]:
    """Inference embeddings once + ranking of ``sample`` evaluation users, scaled to all."""
    import torch

    from pipeline.device import sync

    ev = prepared.evaluator
    users = torch.unique(torch.cat([h.users_with_items() for h in ev.heldout.values()]))
    total = users.numel()
    picked = users[torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:sample]].sort().values
    sub = eval_subset(ev, picked, num_users) if picked.numel() < total else ev
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        user_emb, item_emb = model.inference_embeddings()
        sync(user_emb.device)
        embed_s = time.perf_counter() - t0
        sub.evaluate(user_emb, item_emb)  # warm-up: builds the evaluation plan once
        t1 = time.perf_counter()
        sub.evaluate(user_emb, item_emb)  # its results come back to the CPU: no sync needed
        rank_s = time.perf_counter() - t1
    model.train()
    full = embed_s + rank_s * total / picked.numel()
    return {
        "eval_users": total,
        "eval_users_ranked": int(picked.numel()),
        "embed_s": embed_s,
        "rank_s": rank_s,
        "eval_s": full,
        "eval_extrapolated": picked.numel() < total,
        "eval_ms_per_user": 1000 * full / total,
    }


def child(args: argparse.Namespace) -> dict[str, Any]:
    from models import make_config
    from pipeline.training.batching import plan_batches
    from pipeline.training.epochs import run_epoch
    from pipeline.training.prepare import prepare_data

    device = setup_process(args)
    frame, num_users, num_items = random_catalog(args.scale)
    prepared = prepare_data(frame, num_items, random_features(num_items), num_users=num_users, device=device)
    data = prepared.train
    out: dict[str, Any] = {"model": args.model, "scale": args.scale, "counts": prepared.counts, "device": str(device)}
    model_cls = model_class(args.model)
    config = make_config(model_cls, {})
    if args.max_batches:  # the opt-in large-catalog rule, as the trainer applies it
        plan = plan_batches(
            int(data.train_users.numel()), config.batch_size, max_batches=args.max_batches, lr=config.lr
        )
        config = config.model_copy(update={"batch_size": plan.batch_size, "lr": plan.lr})
        out["batch_size"] = plan.batch_size
    t0 = time.perf_counter()
    model = model_cls(data, config).to(device)
    out["graph_build_s"] = time.perf_counter() - t0
    optimiser, generator, sampler = training_state(model, config, data, num_items, device)
    model.train()
    run_epoch(model, optimiser, data, config.batch_size, generator, sampler, 0, max_batches=2)  # warm-up
    times: list[float] = []
    _, nb = run_epoch(
        model, optimiser, data, config.batch_size, generator, sampler, 1, max_batches=args.batches, batch_times=times
    )
    per_epoch = -(-data.train_users.numel() // config.batch_size)
    rest = times[1:] or times
    out.update(
        batches_timed=nb,
        batches_per_epoch=per_epoch,
        first_batch_s=times[0],
        batch_mean_s=sum(rest) / len(rest),
        epoch_s=times[0] + (per_epoch - 1) * sum(rest) / len(rest),
        epoch_extrapolated=nb < per_epoch,
    )
    if args.eval_users:
        out.update(timed_eval(model, prepared, num_users, args.eval_users))
    else:
        out.update(eval_s=float("nan"), eval_ms_per_user=float("nan"), eval_extrapolated=False)
    out["peak_rss_gb"] = peak_rss_gb()
    return out


# -- --knn: approximate against exact -----------------------------------------------
def knn_report(items: list[int], kinds: list[str], exact_rows: int, threads: int, k: int = 10) -> list[dict[str, Any]]:
    import torch

    from models import graphs

    torch.set_num_threads(threads)
    rows_out = []
    for kind, n in [(kind, n) for kind in kinds for n in items]:
        total = {"exact": 0.0, "approx": 0.0}
        for name, dim in (("image", 4096), ("text", 384)):
            x = torch.nn.functional.normalize(structured_features(n, dim, seed=dim, kind=kind), dim=1)
            t0 = time.perf_counter()
            _, approx_i = graphs.approx_topk(x, k)
            approx_s = time.perf_counter() - t0
            rows = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: min(n, exact_rows)].sort().values
            t1 = time.perf_counter()
            exact_i = torch.cat(
                [graphs.row_topk(x[rows[s : s + 1024]] @ x.T, k)[1] for s in range(0, rows.numel(), 1024)]
            )
            exact_s = (time.perf_counter() - t1) * n / rows.numel()
            recall = float((exact_i.unsqueeze(2) == approx_i[rows].unsqueeze(1)).any(2).float().mean())
            total["exact"] += exact_s
            total["approx"] += approx_s
            rows_out.append(
                {
                    "features": kind,
                    "items": n,
                    "modality": name,
                    "dim": dim,
                    "approx_s": approx_s,
                    "exact_s": exact_s,
                    "exact_rows": int(rows.numel()),
                    "recall": recall,
                }
            )
            print(
                f"{kind:<9} {n:>8,} {name:<6} {dim:>5} {approx_s:>9.1f} "
                f"{exact_s:>10.1f}{'*' if rows.numel() < n else ' '} "
                f"{exact_s / approx_s:>7.1f}x {recall:>8.3f} / 0.95 {'ok' if recall >= 0.95 else 'UNDER'}",
                flush=True,
            )
        speed = total["exact"] / total["approx"]
        rows_out.append({"features": kind, "items": n, "modality": "both", **total, "speedup": speed})
        print(
            f"{kind:<9} {n:>8,} {'both':<6} {'':>5} {total['approx']:>9.1f} {total['exact']:>10.1f}  {speed:>7.1f}x"
            + (f"  (target >= 10x: {'ok' if speed >= 10 else 'UNDER'})" if n >= 60_000 else ""),
            flush=True,
        )
    return rows_out


def knn_quality(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from models import make_config
    from pipeline.evaluation.evaluator import evaluate_model
    from pipeline.training.epochs import run_epoch
    from pipeline.training.prepare import prepare_data

    device = setup_process(args)
    frame, num_users, num_items = amazon_baby_split()
    prepared = prepare_data(
        frame, num_items, behaviour_features(frame, num_users, num_items), num_users=num_users, device=device
    )
    out = {}
    for method in ("exact", "approx"):
        torch.manual_seed(0)
        cls = model_class("freedom")
        config = make_config(cls, {"knn_method": method})
        t0 = time.perf_counter()
        model = cls(prepared.train, config).to(device)
        build = time.perf_counter() - t0
        optimiser, generator, sampler = training_state(model, config, prepared.train, num_items, device)
        for epoch in range(args.epochs):
            run_epoch(model, optimiser, prepared.train, config.batch_size, generator, sampler, epoch)
        recall = evaluate_model(model, prepared.evaluator, ("valid",))["valid"].metrics["recall@20"]
        out[method] = {"graph_build_s": build, "valid_recall@20": recall}
        print(
            f"FREEDOM, {method:<6} item graph: valid Recall@20 {recall:.4f} after {args.epochs} epochs "
            f"(graph build {build:.1f} s)",
            flush=True,
        )
    return out


# -- parent ---------------------------------------------------------------------------
def run_child(argv: list[str], timeout: float) -> dict[str, Any]:
    """One configuration in a fresh interpreter; its last JSON line, or {'error': ...}."""
    cmd = [sys.executable, "-m", "benchmarks.bench_scale", "--child", *argv]
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, HF_HUB_OFFLINE="1")
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}


def exponent(lo: float, hi: float, ratio: float) -> float | None:
    return math.log(hi / lo) / math.log(ratio) if lo > 0 and hi > 0 and ratio > 1 else None


def fmt_e(e: float | None, target: float) -> str:
    return "-" if e is None else f"{e:.2f} / {target:g} {'ok' if e <= target else 'OVER'}"


def print_exponents(model: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    if len(ok) < 2:
        return {}
    lo, hi = ok[0], ok[-1]
    ratio = hi["scale"] / lo["scale"]
    e = {
        "epoch": exponent(lo["epoch_s"], hi["epoch_s"], ratio),
        "eval_per_user": exponent(lo["eval_ms_per_user"], hi["eval_ms_per_user"], ratio),
        "graph_build": exponent(lo["graph_build_s"], hi["graph_build_s"], ratio),
    }
    print(
        f"{model:<9} growth {lo['scale']:g}x -> {hi['scale']:g}x:  epoch e {fmt_e(e['epoch'], TARGET_E)};  "
        f"eval/user e {fmt_e(e['eval_per_user'], TARGET_E)};  "
        f"graph build e {fmt_e(e['graph_build'], TARGET_GRAPH_E)}\n",
        flush=True,
    )
    return e


def receptive_field(scale: float, batch: int = 2048, seed: int = 0) -> tuple[float, float]:
    """Shares of users and items within two hops of one training batch (its users, positives
    and as many random negatives): what a 2-layer propagation restricted to the batch would
    still have to touch."""
    import torch

    frame, num_users, num_items = random_catalog(scale)
    train = frame[frame["label"] == 0]
    u, i = torch.tensor(train["user_idx"].to_numpy()), torch.tensor(train["item_idx"].to_numpy())
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(u.numel(), generator=g)[:batch]
    users = torch.zeros(num_users, dtype=torch.bool)
    items = torch.zeros(num_items, dtype=torch.bool)
    users[u[pick]] = True
    items[torch.cat([i[pick], torch.randint(0, num_items, (batch,), generator=g)])] = True
    for _ in range(2):  # one hop each way, both from the previous hop's sets
        reached_users = u[items[i]]  # users of the reached items
        reached_items = i[users[u]]  # items of the reached users
        users, items = (
            users.clone().index_fill_(0, reached_users, True),
            items.clone().index_fill_(0, reached_items, True),
        )
    return float(users.float().mean()), float(items.float().mean())


def scale_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    common = [
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--batches",
        str(args.batches),
        "--eval-users",
        str(args.eval_users),
        "--max-batches",
        str(args.max_batches),
    ]
    if args.max_batches:
        print(
            f"LARGE-CATALOG RULE ON: at most {args.max_batches} batches per epoch, "
            "the batch and lr (square root) growing past it"
        )
    print(
        "SEEDED RANDOM catalogs (uniform interactions) at s x amazon-baby; "
        "features SEEDED RANDOM 4096-d + 384-d: SPEED ONLY"
    )
    print(
        f"device {args.device}, {args.threads} threads; "
        f"epoch extrapolated from {args.batches} timed batches (* = extrapolated); "
        f"evaluation: embeddings + ranking of {args.eval_users} sampled users, scaled to all (* = extrapolated)\n"
    )
    head = (
        f"{'model':<9} {'size':>5} {'users':>9} {'items':>8} {'train':>10} {'graph s':>8} "
        f"{'epoch s':>10} {'eval s':>9} {'ms/user':>8} {'RSS GB':>7}"
    )
    print(head + "\n" + "-" * len(head), flush=True)
    results = []
    for s in sizes:
        users, items = receptive_field(s)
        print(f"{s:g}x: one batch's 2-hop receptive field holds {users:.1%} of the users and {items:.1%} of the items")
    print(flush=True)
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows = []
        for s in sizes:
            r = run_child([*common, "--model", model, "--scale", str(s)], args.timeout)
            r.setdefault("model", model)
            r.setdefault("scale", s)
            rows.append(r)
            if "error" in r:
                print(f"{model:<9} {s:>4g}x ERROR: {r['error']}", flush=True)
                continue
            c = r["counts"]
            print(
                f"{model:<9} {s:>4g}x {c['users']:>9,} {c['items']:>8,} {c['train']:>10,} {r['graph_build_s']:>8.2f} "
                f"{r['epoch_s']:>9.2f}{'*' if r['epoch_extrapolated'] else ' '} "
                f"{r['eval_s']:>8.2f}{'*' if r['eval_extrapolated'] else ' '} "
                f"{r['eval_ms_per_user']:>8.3f} {r['peak_rss_gb']:>7.2f}",
                flush=True,
            )
        results.append({"model": model, "rows": rows, "exponents": print_exponents(model, rows)})
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1,4,16", help="catalog scales of amazon-baby, comma-separated")
    p.add_argument("--models", default=MODELS)
    p.add_argument(
        "--batches", type=int, default=10, help="timed training batches per configuration (epoch extrapolated)"
    )
    p.add_argument(
        "--eval-users", type=int, default=4096, help="evaluation users ranked (the rest extrapolated); 0: no evaluation"
    )
    p.add_argument(
        "--max-batches",
        type=int,
        default=0,
        help="the opt-in large-catalog rule: at most this many batches per epoch (0: off)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    p.add_argument("--json", type=Path, default=None, help="also write all figures here")
    p.add_argument("--knn", action="store_true", help="approximate against exact kNN graph: build time and recall@10")
    p.add_argument("--knn-items", default="7050,63001", help="catalog sizes of --knn")
    p.add_argument(
        "--knn-data", default="lowdim,fullrank", help="synthetic feature kinds of --knn (see structured_features)"
    )
    p.add_argument(
        "--knn-exact-rows", type=int, default=4096, help="rows the exact search is timed on in --knn (extrapolated)"
    )
    p.add_argument(
        "--knn-quality", action="store_true", help="FREEDOM valid Recall@20 with the exact and the approximate graph"
    )
    p.add_argument("--epochs", type=int, default=10, help="training epochs of --knn-quality")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0
    t0 = time.perf_counter()
    load = os.getloadavg()
    print(
        f"machine load average at start: {load[0]:.1f} on {os.cpu_count()} CPUs "
        "(timings mean little above the CPU count)\n"
    )
    if args.knn:
        print(
            "kNN graph, k = 10, SEEDED SYNTHETIC clustered features (see the docstring); "
            "* = exact timed on sampled rows, extrapolated"
        )
        print(
            f"{'features':<9} {'items':>8} {'mod.':<6} {'dim':>5} "
            f"{'approx s':>9} {'exact s':>11} {'speedup':>8} {'recall@10':>9}"
        )
        items = [int(n) for n in args.knn_items.split(",") if n.strip()]
        kinds = [k.strip() for k in args.knn_data.split(",") if k.strip()]
        results: Any = knn_report(items, kinds, args.knn_exact_rows, args.threads)
    elif args.knn_quality:
        results = knn_quality(args)
    else:
        results = scale_table(args)
    print(f"total {time.perf_counter() - t0:.0f} s; load average at end: {os.getloadavg()[0]:.1f}")
    if args.json:
        from storage.atomic import write_json

        write_json(
            args.json, {"speed_only": True, "args": {k: str(v) for k, v in vars(args).items()}, "results": results}
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
