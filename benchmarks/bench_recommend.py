"""Recommendations out: users/s and memory of ``write_recommendations`` as users grow.

    python -m benchmarks.bench_recommend [--k 20] [--scale 10] [--threads 2] [--device cpu]

Data: amazon-baby-5core's given split (19,445 users, 7,050 items) with SEEDED RANDOM
features of the benchmark's shapes (4096-d image, 384-d text) and an UNTRAINED FREEDOM:
the numbers are for speed only; no quality figure is or may be read from them (the
scores are those of random weights). Two sizes, each in a fresh subprocess:

- 1x: every user's top-K over every item, seen items (the train split) excluded, streamed
  into a Parquet file, exactly the path ``befa recommend`` takes after loading a run;
- ``--scale`` x users: the same users repeated with jittered embeddings (194,450 users at
  10x), the same items, each copy with its original's history.

It prints, per size: the model's inference-embedding time (once), the scoring + writing
time, users/s, the process's peak RSS and the RSS growth *during* scoring (sampled every
5 ms). Targets: users/s about constant from 1x to 10x (growth linear in users) and the RSS
growth during scoring flat (it must not grow with users: batches are streamed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.bench_train import REPO, amazon_baby_split, peak_rss_gb, random_features

TARGET_USERS_PER_S_RATIO = 0.8  # 10x users: at least 0.8x the 1x throughput
TARGET_RSS_GROWTH_RATIO = 1.5  # 10x users: RSS growth during scoring at most 1.5x the 1x growth (+ 50 MB)


def _rss_gb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


class RssSampler:
    def __init__(self) -> None:
        self.base = _rss_gb()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_gb())
            time.sleep(0.005)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_gb())


def _servable(scale: int, device: str):
    import numpy as np
    import pandas as pd
    import torch

    from models import get_model_class, make_config
    from pipeline.data.catalog import Catalog
    from pipeline.evaluation.evaluator import UserItems
    from pipeline.serving.servable import Servable
    from pipeline.training.prepare import prepare_data
    from pipeline.training.record import RunRecord

    frame, num_users, num_items = amazon_baby_split()
    prepared = prepare_data(
        frame, num_items=num_items, features=random_features(num_items), num_users=num_users, device=device
    )
    cls = get_model_class("freedom")
    config = make_config(cls, {})
    net = cls(prepared.train, config).to(device).eval()
    start = time.perf_counter()
    with torch.no_grad():
        user_emb, item_emb = net.inference_embeddings()
    embed_s = time.perf_counter() - start
    train = frame[frame["label"] == 0]
    tu, ti = train["user_idx"].to_numpy(np.int64), train["item_idx"].to_numpy(np.int64)
    if scale > 1:
        g = torch.Generator().manual_seed(0)
        user_emb = torch.cat(
            [user_emb] + [user_emb + 0.01 * torch.randn(user_emb.shape, generator=g) for _ in range(scale - 1)]
        )
        tu = np.concatenate([tu + r * num_users for r in range(scale)])
        ti = np.tile(ti, scale)
    users = user_emb.size(0)
    user_ids = np.array([f"u{u}" for u in range(users)], dtype=object)
    item_ids = np.array([f"i{i}" for i in range(num_items)], dtype=object)
    history = UserItems.from_pairs(users, torch.from_numpy(tu), torch.from_numpy(ti))
    catalog = Catalog(
        name="amazon-baby-bench",
        items=pd.DataFrame({"item_id": item_ids, "text_hash": "", "image_hash": ""}),
        interactions=pd.DataFrame({"user_id": [], "item_id": [], "rating": [], "timestamp": []}),
    )
    record = RunRecord(
        model="freedom",
        config=config.model_dump(),
        seed=0,
        device=device,
        split_id="amazon-baby-given",
        status="untrained-speed-only",
    )
    served = Servable(
        run_dir=Path(tempfile.gettempdir()),
        record=record,
        catalog=catalog,
        model=net,
        item_ids=item_ids,
        user_rows=pd.Series(np.arange(users), index=user_ids),
        user_emb=user_emb.float(),
        item_emb=item_emb.float(),
        active=torch.ones(num_items, dtype=torch.bool),
        new=torch.zeros(num_items, dtype=torch.bool),
        history=history,
        train_history=history,
        user_ids=user_ids,
        universe_source="benchmark",
    )
    return served, embed_s


def child(args: argparse.Namespace) -> None:
    import torch

    from pipeline.serving.ranked_lists import RecommendRequest, write_recommendations

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    served, embed_s = _servable(args.child_scale, args.device)
    with tempfile.TemporaryDirectory() as tmp, RssSampler() as rss:
        written = write_recommendations(served, RecommendRequest(k=args.k), Path(tmp) / "recs.parquet")
    out = {
        "scale": args.child_scale,
        "users": written.users,
        "items": served.num_items,
        "rows": written.rows,
        "embed_s": embed_s,
        "score_write_s": written.seconds,
        "users_per_s": written.users / written.seconds,
        "peak_rss_gb": peak_rss_gb(),
        "rss_growth_gb": rss.peak - rss.base,
    }
    print("RESULT " + json.dumps(out))


def run_child(scale: int, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_recommend",
        "--child-scale",
        str(scale),
        "--k",
        str(args.k),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    line = next((out_line for out_line in proc.stdout.splitlines() if out_line.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"child scale {scale} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child-scale", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_scale:
        child(args)
        return
    print("amazon-baby-5core users x 7,050 items; SEEDED RANDOM features, UNTRAINED FREEDOM: speed only, no quality")
    print(f"top-{args.k} per user, train items excluded, streamed to Parquet; {args.threads} threads, {args.device}")
    rows = [run_child(1, args), run_child(args.scale, args)]
    print(
        f"{'size':>5} {'users':>8} {'rows':>9} {'embed s':>8} {'score+write s':>14} {'users/s':>9} "
        f"{'peak RSS GB':>12} {'RSS growth MB':>14}"
    )
    for r in rows:
        print(
            f"{r['scale']:>4}x {r['users']:>8,} {r['rows']:>9,} {r['embed_s']:>8.2f} {r['score_write_s']:>14.2f} "
            f"{r['users_per_s']:>9,.0f} {r['peak_rss_gb']:>12.2f} {r['rss_growth_gb'] * 1024:>14.0f}"
        )
    one, big = rows
    ratio = big["users_per_s"] / one["users_per_s"]
    growth = (big["rss_growth_gb"] * 1024) / max(one["rss_growth_gb"] * 1024, 1.0)
    print(
        f"users/s at {args.scale}x / at 1x: {ratio:.2f} "
        f"(target >= {TARGET_USERS_PER_S_RATIO}: {'met' if ratio >= TARGET_USERS_PER_S_RATIO else 'MISSED'})"
    )
    ok = big["rss_growth_gb"] * 1024 <= TARGET_RSS_GROWTH_RATIO * one["rss_growth_gb"] * 1024 + 50
    print(
        f"RSS growth during scoring at {args.scale}x / at 1x: {growth:.2f} "
        f"(target <= {TARGET_RSS_GROWTH_RATIO} + 50 MB: {'met' if ok else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
