"""The GPU check: extraction, training and evaluation speed on one CUDA GPU, in about 8 minutes.

    python -m benchmarks.bench_gpu [--quick] [--budget 480] [--images 20000] [--batch 512]
        [--models lightgcn,bm3,freedom,mgcn,lattice] [--catalogs amazon-baby,big]
        [--big-scale 16] [--big-batches 20] [--json out.json] [--device cuda]

Refuses at once, with one line and exit code 2, where torch sees no CUDA GPU. Everything it
prints is Markdown (a heading, notes and tables), so its whole output can be pasted into the
README as it is. Sections, each in its own try/except (an error is printed and the next section
runs) and each skipped once the global ``--budget`` (seconds) is spent:

1. Image extraction, ViT-B-32 with RANDOM WEIGHTS (``clip:ViT-B-32@random``: speed only),
   bf16 autocast (the encoder's own choice on CUDA), on ``--images`` seeded synthetic
   224 x 224 JPEGs made on the GPU before the timing: end to end (``torchvision.io.decode_jpeg``
   with ``device`` = the GPU, batched; resize, centre crop and CLIP normalisation on the GPU;
   forward) against the pure forward on ready pixel tensors. Targets: end to end >= 0.9 of the
   forward, >= 10,000 images/s on an H100-class GPU.
2. Training and evaluation, every model (base), on amazon-baby's given split (one warm-up and one
   timed full epoch; full evaluation of valid + test) and on the 16x random catalog of
   ``bench_scale`` (``--big-batches`` timed batches, epoch extrapolated; ``--big-eval-users``
   ranked users, evaluation scaled to all of them),
   features SEEDED RANDOM 4096-d + 384-d (speed only), kNN graphs exact (on a GPU the exact
   search beats the CPU approximate one), peak GPU memory per configuration
   (``torch.cuda.max_memory_allocated``).

``--quick``: 2,000 images, amazon-baby epochs cut to 20 batches, 5 batches at 16x.
``--device cpu`` is a DRY RUN that checks the script's code paths on a machine without a GPU
(with small ``--images``, ``--big-scale``, ``--catalogs``); none of its figures is a GPU figure,
and it says so. Measured on a GPU: (figures: run make bench-gpu).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.bench_scale import random_catalog, timed_eval
from benchmarks.bench_train import amazon_baby_split, model_class, peak_rss_gb, random_features, training_state

TARGET_IMG_S = 10_000
TARGET_E2E_RATIO = 0.9
MODELS = "lightgcn,bm3,freedom,mgcn,lattice"
NO_GPU = "bench-gpu: no CUDA GPU (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU"


class Budget:
    """The global time budget: sections check it before they start."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def peak_gb(device) -> float:
    """Peak memory since the last reset: GPU memory on CUDA, else the process's peak RSS."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_gb()


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def section(name: str, budget: Budget, need_s: float, run: Callable[[], Any]) -> Any:
    """Run one section; print its error instead of stopping; skip it when the budget is short."""
    if budget.left() < need_s:
        print(f"\n_{name}: skipped, {budget.left():.0f} s of the budget left (needs ~{need_s:.0f} s)_")
        return {"skipped": True}
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
        print(f"\n**{name}: ERROR** `{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}`")
        return {"error": f"{type(exc).__name__}: {exc}"}


# -- 1. extraction --------------------------------------------------------------------
def synthetic_jpegs(n: int, device, size: int = 224, seed: int = 0) -> list:
    """``n`` seeded JPEGs (CPU byte tensors): smooth colour fields with a few blocks, made on ``device``."""
    import torch
    from torchvision.io import encode_jpeg

    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for start in range(0, n, 256):
        b = min(256, n - start)
        low = torch.rand(b, 3, 8, 8, generator=g, device=device)  # smooth: real photos compress, noise does not
        img = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        img = (img * 255).clamp(0, 255).to(torch.uint8)
        out.extend(t.cpu() for t in encode_jpeg(list(img), quality=90))
    return out


def gpu_preprocess(images: list, mean, std, size: int = 224):
    """Decoded uint8 (3, H, W) images on the GPU -> normalised (B, 3, size, size) float pixels."""
    import torch
    import torch.nn.functional as F

    # images of one shape are resized and cropped together: a few kernels per batch, not per image
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        shapes.setdefault(tuple(img.shape), []).append(i)
    out = torch.empty(len(images), 3, size, size, device=images[0].device)
    for (_, h, w), idx in shapes.items():
        x = torch.stack([images[i] for i in idx]).float()
        scale = size / min(h, w)
        if scale != 1:
            x = F.interpolate(
                x, size=(round(h * scale), round(w * scale)), mode="bicubic", align_corners=False, antialias=True
            )
        h2, w2 = x.shape[-2:]
        top, left = (h2 - size) // 2, (w2 - size) // 2
        out[idx] = x[..., top : top + size, left : left + size]
    return (out / 255.0 - mean) / std


def extraction(args: argparse.Namespace, device) -> dict[str, Any]:
    import open_clip
    import torch
    from torchvision.io import decode_jpeg

    from encoders.registry import create_encoder
    from pipeline.device import sync

    enc = create_encoder("clip:ViT-B-32@random", device=device)
    pp = enc.preprocessing.get("image", {})
    mean = torch.tensor(pp.get("mean", open_clip.OPENAI_DATASET_MEAN), device=device).view(1, 3, 1, 1)
    std = torch.tensor(pp.get("std", open_clip.OPENAI_DATASET_STD), device=device).view(1, 3, 1, 1)
    n, bs = args.images, args.batch
    t0 = time.perf_counter()
    jpegs = synthetic_jpegs(n, device)
    made_s = time.perf_counter() - t0
    pixels = torch.randn(bs, 3, 224, 224, device=device)

    def forward_only() -> float:
        sync(device)
        t = time.perf_counter()
        for start in range(0, n, bs):
            enc.embed_pixels(pixels[: min(bs, n - start)])
        sync(device)
        return time.perf_counter() - t

    def end_to_end() -> float:
        sync(device)
        t = time.perf_counter()
        for start in range(0, n, bs):
            decoded = decode_jpeg(jpegs[start : start + bs], device=device)
            enc.embed_pixels(gpu_preprocess(decoded, mean, std))
        sync(device)
        return time.perf_counter() - t

    enc.embed_pixels(pixels)  # warm-up: kernels, autocast caches
    decode_jpeg(jpegs[:bs], device=device)
    fwd = min(forward_only() for _ in range(2))
    e2e = min(end_to_end() for _ in range(2))
    r = {
        "images": n,
        "batch": bs,
        "jpeg_make_s": made_s,
        "forward_img_s": n / fwd,
        "e2e_img_s": n / e2e,
        "ratio": fwd / e2e,
    }
    print("\n### Image extraction: ViT-B-32, random weights (speed only), bf16 autocast on CUDA\n")
    print(f"{n:,} synthetic 224 x 224 JPEGs (made in {made_s:.1f} s, not timed), batches of {bs}, best of 2 passes.\n")
    print("| measure | images/s | target |\n| --- | --- | --- |")
    print(f"| pure forward (ready pixels) | {r['forward_img_s']:,.0f} | |")
    print(
        f"| end to end (GPU JPEG decode + preprocessing + forward) | {r['e2e_img_s']:,.0f} | "
        f">= {TARGET_IMG_S:,} on an H100-class GPU: {'ok' if r['e2e_img_s'] >= TARGET_IMG_S else 'UNDER'} |"
    )
    print(
        f"| end to end / forward | {r['ratio']:.2f} | "
        f">= {TARGET_E2E_RATIO}: {'ok' if r['ratio'] >= TARGET_E2E_RATIO else 'UNDER'} |"
    )
    return r


# -- 2. training and evaluation -------------------------------------------------------
def train_eval(
    model_name: str, prepared, num_users: int, num_items: int, device, max_batches: int | None, eval_users: int
) -> dict[str, Any]:
    """Build, a warm-up, one timed epoch (or ``max_batches`` batches, extrapolated), evaluation of
    valid + test (``eval_users`` sampled users ranked and scaled to all, when there are more)."""
    import torch

    from models import make_config
    from pipeline.device import sync
    from pipeline.training.epochs import run_epoch

    torch.manual_seed(0)
    reset_peak(device)
    cls = model_class(model_name)
    config = make_config(cls, {"knn_method": "exact"} if "knn_method" in cls.Config.model_fields else {})
    data = prepared.train
    t0 = time.perf_counter()
    model = cls(data, config).to(device)
    sync(device)
    build = time.perf_counter() - t0
    optimiser, generator, sampler = training_state(model, config, data, num_items, device)
    model.train()
    run_epoch(model, optimiser, data, config.batch_size, generator, sampler, 0, max_batches=3)  # warm-up
    times: list[float] = []
    _, nb = run_epoch(
        model, optimiser, data, config.batch_size, generator, sampler, 1, max_batches=max_batches, batch_times=times
    )
    per_epoch = -(-data.train_users.numel() // config.batch_size)
    rest = times[1:] or times
    epoch = sum(times) if nb >= per_epoch else times[0] + (per_epoch - 1) * statistics.fmean(rest)
    ev = timed_eval(model, prepared, num_users, sample=eval_users)
    return {
        "model": model_name,
        "graph_build_s": build,
        "epoch_s": epoch,
        "epoch_extrapolated": nb < per_epoch,
        "batches_timed": nb,
        "batches_per_epoch": per_epoch,
        "eval_s": ev["eval_s"],
        "eval_users": ev["eval_users"],
        "eval_extrapolated": ev["eval_extrapolated"],
        "peak_gpu_gb": peak_gb(device),
    }


def training(args: argparse.Namespace, device, budget: Budget, catalog: str) -> list[dict[str, Any]]:
    from pipeline.training.prepare import prepare_data

    if catalog == "amazon-baby":
        frame, num_users, num_items = amazon_baby_split()
        label, max_batches, eval_users = "amazon-baby-5core, given split", (20 if args.quick else None), 10**9
    else:
        frame, num_users, num_items = random_catalog(args.big_scale)
        label, max_batches, eval_users = (
            f"{args.big_scale:g}x random catalog (bench_scale)",
            args.big_batches,
            args.big_eval_users,
        )
    prepared = prepare_data(frame, num_items, random_features(num_items), num_users=num_users, device=device)
    c = prepared.counts
    print(f"\n### Training and evaluation: {label}\n")
    print(
        f"{c['users']:,} users, {c['items']:,} items, {c['train']:,} train interactions; "
        f"features SEEDED RANDOM 4096-d + 384-d "
        f"(speed only); kNN graphs exact. * = extrapolated: the epoch from {max_batches} timed batches, the evaluation "
        f"from {min(eval_users, c['users']):,} ranked users.\n"
    )
    print(
        "| model | graph build s | epoch s | eval valid+test s | peak GPU GB |\n| --- | --- | --- | --- | --- |",
        flush=True,
    )
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        r = section(
            f"{name} on {catalog}",
            budget,
            20,
            lambda: train_eval(name, prepared, num_users, num_items, device, max_batches, eval_users),
        )
        r.setdefault("model", name)
        rows.append(r)
        if "epoch_s" in r:
            print(
                f"| {name} | {r['graph_build_s']:.2f} | {r['epoch_s']:.2f}{'*' if r['epoch_extrapolated'] else ''} | "
                f"{r['eval_s']:.2f}{'*' if r['eval_extrapolated'] else ''} | {r['peak_gpu_gb']:.2f} |",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smaller run: 2,000 images, fewer batches")
    p.add_argument("--budget", type=float, default=480, help="seconds for the whole run; sections past it are skipped")
    p.add_argument("--images", type=int, default=None, help="synthetic JPEGs (default 20,000; 2,000 with --quick)")
    p.add_argument("--batch", type=int, default=512, help="extraction batch size")
    p.add_argument("--models", default=MODELS)
    p.add_argument("--big-batches", type=int, default=None, help="timed batches at 16x (default 20; 5 with --quick)")
    p.add_argument(
        "--catalogs", default="amazon-baby,big", help="training catalogs: amazon-baby, big (the --big-scale catalog)"
    )
    p.add_argument("--big-scale", type=float, default=16, help="scale of the big random catalog (x amazon-baby)")
    p.add_argument("--big-eval-users", type=int, default=32_768, help="users ranked at the big catalog (scaled to all)")
    p.add_argument(
        "--device", default="cuda", help="cuda (default; refused without a GPU) or cpu: a DRY RUN of the code paths"
    )
    p.add_argument("--json", type=Path, default=None, help="also write all figures here")
    args = p.parse_args(argv)
    args.images = args.images or (2_000 if args.quick else 20_000)
    args.big_batches = args.big_batches or (5 if args.quick else 20)

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    budget = Budget(args.budget)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name, about = props.name, f"{props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        name, about = (
            "none (DRY RUN on CPU: checks the code paths; no figure here is a GPU figure)",
            f"{torch.get_num_threads()} threads",
        )
    print(f"## GPU check: {name}\n")
    print(
        f"`make bench-gpu{' ARGS=--quick' if args.quick else ''}`: {about}, torch {torch.__version__}; "
        f"budget {args.budget:.0f} s. Random weights and random features: speed only."
    )
    out: dict[str, Any] = {"gpu": name, "quick": args.quick}
    out["extraction"] = section("image extraction", budget, 30, lambda: extraction(args, device))
    for catalog in [c.strip() for c in args.catalogs.split(",") if c.strip()]:
        out[catalog] = section(f"training on {catalog}", budget, 30, lambda: training(args, device, budget, catalog))
    print(f"\n_total {budget.seconds - budget.left():.0f} s of a {args.budget:.0f} s budget_")
    if args.json:
        from storage.atomic import write_json

        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
