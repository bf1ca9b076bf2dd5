"""Feature extraction speed: pure forward, end to end and the FLOP limit per encoder, before and after.

Run: ``python -m benchmarks.bench_extract [--encoders effnet:lite0,effnet:lite2,clip:ViT-B-32@random,minilm]
[--images 64] [--texts 192] [--rounds 2] [--threads 2] [--batch-size N]``

On small subsets of the movielens-100k-posters catalog (real posters; title + overview texts),
CPU, per encoder (image encoders on the posters, MiniLM on the texts):

1. **limit**: FLOPs per item of the torch forward (``torch.utils.flop_counter``; a multiply-add
   counts 2), against this machine's fp32 matmul rate at the same threads (measured in the
   forward pass's rounds, best round): the rate the model
   would reach if every FLOP ran at matmul speed (depthwise convolutions and attention do not,
   so no backend reaches it).
2. **pure forward** on preprocessed inputs (decoded and resized posters, tokenized texts in
   length order; all off the clock): torch *before* (contiguous memory format), torch *after*
   (channels-last for the conv nets; the same for the others) and ONNX Runtime.
3. **end to end**: ``extract_features`` into an empty store (read, hash check, decode,
   preprocess, forward, Parquet parts, commit). *before*: the paths extraction had before
   issue #24 (``ExtractTuning.baseline()``: decoding in a DataLoader worker process, texts
   batched in catalog order, contiguous format; torch). *after*: the current defaults and the
   backend that ``--backend auto`` picks here (its trial runs first and prints its verdict).
   The features of both runs are compared item by item (min cosine).
4. For the first image encoder: an incremental run (1% of the posters replaced) and an
   unchanged re-run, against their targets.

Variants are interleaved round by round and each reports its best round (see
``benchmarks.extract_rates``). Random weights (``clip:...@random``) are labelled: they cost
exactly what trained ones do. The 1-minute load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from benchmarks import extract_rates as R
from encoders import create_encoder
from pipeline.data.ingest import ingest
from pipeline.device import cpu_count, torch_threads
from pipeline.features.extract import extract_features
from pipeline.settings import get_settings
from storage.feature_store import FeatureStore
from storage.keys import sha256_file

DEFAULT_ENCODERS = "effnet:lite0,effnet:lite2,clip:ViT-B-32@random,minilm"
BEFORE_BATCH = 32  # every encoder's CPU batch before issue #24
TARGET_INCREMENTAL = 0.05
TARGET_RERUN_S = 5.0


def _with_changed_posters(catalog, fraction: float, folder: Path, seed: int = 0):
    """A copy of the catalog where ``fraction`` of the posters are new images (mirrored)."""
    items = catalog.items.copy()
    with_image = np.flatnonzero(items["image"].notna().to_numpy())
    chosen = np.random.default_rng(seed).choice(
        with_image, size=max(1, round(fraction * len(with_image))), replace=False
    )
    folder.mkdir(parents=True, exist_ok=True)
    for row in chosen:
        dst = folder / f"changed-{items.at[row, 'item_id']}.png"
        ImageOps.mirror(Image.open(items.at[row, "image"]).convert("RGB")).save(dst)
        items.at[row, "image"] = str(dst)
        items.at[row, "image_hash"] = sha256_file(dst)
    return type(catalog)(
        name=catalog.name, items=items, interactions=catalog.interactions, meta=dict(catalog.meta)
    ), len(chosen)


def _encoder_row(spec: str, catalogs: dict, args, tmp: Path) -> dict:
    encoder = create_encoder(spec, device="cpu")
    modality = "image" if "image" in encoder.modalities else "text"
    catalog = catalogs[modality]
    label = " [RANDOM INIT: speed only]" if encoder.random_init else ""
    print(f"\n{spec} -> {encoder.fingerprint}{label}: {catalog.num_items} {modality}s")
    batch = args.batch_size or encoder.default_batch_size(torch.device("cpu"))
    batches = (R.image_batches if modality == "image" else R.text_batches)(encoder, catalog, batch)
    # an image costs the same whatever it shows; a text's cost grows with its length: count them all
    flops = R.flops_per_item(encoder, modality, batches if modality == "text" else batches[:1])
    onnx_dir = tmp / "onnx"
    onnx = R.onnx_embedder(encoder, modality, onnx_dir, args.threads)
    # the batch the trial times in an extraction: the first (images), the middle one by length (texts)
    texts = sorted(catalog.items["text"].tolist(), key=len)
    middle = list(range(0, len(texts), batch))[len(range(0, len(texts), batch)) // 2]
    first = batches[0] if modality == "image" else texts[middle : middle + batch]
    verdict = R.auto_verdict(encoder, modality, first, onnx_dir, args.threads)
    kw = dict(num_threads=args.threads, onnx_dir=onnx_dir, device="cpu")
    forward: dict[str, float] = {}
    e2e: dict[str, list[float]] = {"before": [], "after": []}
    feats, backend = {}, ""
    for r in range(args.rounds):  # every measurement once per round: all of them see the same load drift
        for name, rate in R.forward_rates(encoder, modality, batches, onnx, rounds=1).items():
            forward[name] = max(forward.get(name, 0.0), rate)
        for when in ("before", "after"):
            rate, summary, x = R.end_to_end(
                catalog,
                encoder,
                modality,
                tmp / f"store-{spec}-{when}-{r}",
                before=when == "before",
                backend="auto",
                batch_size=BEFORE_BATCH if when == "before" else batch,
                **kw,
            )
            e2e[when].append(rate)
            feats[when] = x
            backend = summary.backend if when == "after" else backend
    return dict(
        spec=spec,
        modality=modality,
        items=catalog.num_items,
        batch=batch,
        gflop=flops / 1e9,
        limit=forward["matmul GFLOP/s"] * 1e9 / flops,
        forward=forward,
        before=max(e2e["before"]),
        after=max(e2e["after"]),
        backend=backend,
        verdict=verdict,
        cosine=R.min_cosine(feats["before"], feats["after"]),
        random=encoder.random_init,
        encoder=encoder,
    )


def _incremental(row: dict, catalog, args, tmp: Path) -> None:
    """The first image encoder: a full run, 1% of the posters changed, an unchanged re-run."""
    encoder, store = row["encoder"], FeatureStore(tmp / "store-incremental")
    kw = dict(modalities=["image"], batch_size=row["batch"], num_threads=args.threads, progress=False)
    t0 = time.perf_counter()
    extract_features(catalog, encoder, store, **kw)
    t_full = time.perf_counter() - t0
    changed, n = _with_changed_posters(catalog, 0.01, tmp / "changed")
    t0 = time.perf_counter()
    inc = extract_features(changed, encoder, store, **kw)
    t_inc = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = extract_features(changed, encoder, store, **kw)
    t_again = time.perf_counter() - t0
    frac = t_inc / t_full
    print(f"\nincremental ({row['spec']}, torch): full {t_full:.1f} s; {n} posters changed: {t_inc:.2f} s = {frac:.1%}")
    print(f"  of the full run (target <= {TARGET_INCREMENTAL:.0%}: {'ok' if frac <= TARGET_INCREMENTAL else 'MISS'});")
    print(
        f"  unchanged re-run {t_again:.2f} s (target < {TARGET_RERUN_S:.0f} s: "
        f"{'ok' if t_again < TARGET_RERUN_S else 'MISS'}); encoded {inc.encoded} then {again.encoded}"
    )


def _table(rows: list[dict]) -> None:
    print(
        "\n| encoder | GFLOP/item | matmul GFLOP/s | limit /s | forward torch before / after / onnx /s "
        "| end to end before /s | end to end after /s (backend) | after / before "
        "| e2e / forward before / after | after / limit |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        f = r["forward"]
        onnx = f"{f['onnx']:.1f}" if "onnx" in f else "-"
        chosen = f.get("onnx") if r["backend"].startswith("onnxruntime") else f["torch after"]
        name = r["spec"] + (" (random init)" if r["random"] else "")
        cells = [
            name,
            f"{r['gflop']:.2f}",
            f"{f['matmul GFLOP/s']:.0f}",
            f"{r['limit']:.0f}",
            f"{f['torch before']:.1f} / {f['torch after']:.1f} / {onnx}",
            f"{r['before']:.1f}",
            f"{r['after']:.1f} ({r['backend']})",
            f"{r['after'] / r['before']:.2f}x",
            f"{r['before'] / f['torch before']:.2f} / {r['after'] / chosen:.2f}",
            f"{r['after'] / r['limit']:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        print(f"- {r['spec']}: auto: {r['verdict']}; before/after features: min cosine {r['cosine']:.6f}")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", default=DEFAULT_ENCODERS, help="comma list of encoder specs (default: %(default)s)")
    p.add_argument("--images", type=int, default=64, help="posters per image encoder (default %(default)s)")
    p.add_argument("--texts", type=int, default=192, help="texts for MiniLM (default %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per measurement (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="after: default each encoder's (before: 32)")
    p.add_argument("--datasets-root", type=Path, default=None)
    args = p.parse_args()
    for flag in ("images", "texts", "rounds", "threads", "batch_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def main() -> None:
    args = _args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = args.datasets_root or Path(
        os.environ.get("BEFA_DATASETS_ROOT") or Path(__file__).resolve().parents[2] / "shared" / "datasets"
    )
    tmp = Path(tempfile.mkdtemp(prefix="befa-bench-extract-"))
    load_before = os.getloadavg()
    try:
        home = tmp / "home"
        full, _ = ingest("movielens-100k-posters", get_settings(root, home, str(home / "features")))
        catalogs = {"image": R.subset(full, "image", args.images), "text": R.subset(full, "text", args.texts)}
        with torch_threads(args.threads):
            print(f"cpu: {cpu_count()} cores, {args.threads} threads; fp32 matmul {R.matmul_gflops():.0f} GFLOP/s")
            print(f"load average (1, 5, 15 min) at the start: {', '.join(f'{x:.2f}' for x in load_before)}")
            rows = [_encoder_row(spec.strip(), catalogs, args, tmp) for spec in args.encoders.split(",")]
            images = [r for r in rows if r["modality"] == "image"]
            if images:
                _incremental(images[0], catalogs["image"], args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _table(rows)
    load_after = os.getloadavg()
    print(f"\nload average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; ", end="")
    print(f"after: {', '.join(f'{x:.2f}' for x in load_after)}; torch {torch.__version__}")


if __name__ == "__main__":
    main()
