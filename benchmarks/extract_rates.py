"""The measurements behind ``make bench-extract``: matmul rate, FLOPs per item, pure forward, end to end.

Every rate is items per second. Variants of one measurement are interleaved (A B C, A B C, ...)
and each reports its best round: on a shared machine the best round is the one least
disturbed by other processes, and interleaving exposes every variant to the same load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from encoders.onnx_backend import OnnxEmbedder, OnnxUnavailable, export_onnx, onnx_path
from pipeline.data.catalog import build_catalog
from pipeline.features.backend import Embedder
from pipeline.features.batches import ExtractTuning
from pipeline.features.extract import extract_features
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey


def matmul_gflops(size: int = 1024, reps: int = 8, rounds: int = 3) -> float:
    """This machine's fp32 matmul rate (GFLOP/s) at torch's current thread count, best of ``rounds``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 * reps / best / 1e9


def subset(catalog, modality: str, n: int):
    """The first ``n`` items of ``catalog`` that have this modality, as a catalog of their own."""
    items = catalog.items[catalog.items[modality].notna()].iloc[:n]
    keep = set(items["item_id"])
    inter = catalog.interactions[catalog.interactions["item_id"].isin(keep)]
    items = items.drop(columns=[c for c in ("item_idx", "text_hash") if c in items.columns])
    return build_catalog(catalog.name, items, inter[["user_id", "item_id", "rating", "timestamp"]])


def image_batches(encoder, catalog, batch: int) -> list[torch.Tensor]:
    """The catalog's posters, decoded and preprocessed (off the clock), in batches."""
    tf = encoder.image_transform
    pixels = [tf(Image.open(r).convert("RGB")) for r in catalog.items["image"].tolist()]
    return [torch.stack(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]


def text_batches(encoder, catalog, batch: int) -> list[dict[str, torch.Tensor]]:
    """The catalog's texts tokenized (off the clock), in length order, in batches (MiniLM)."""
    texts = sorted(catalog.items["text"].tolist(), key=len)
    return [encoder._tokens(texts[i : i + batch]) for i in range(0, len(texts), batch)]


def flops_per_item(encoder, modality: str, batches: list[Any]) -> float:
    """FLOPs (a multiply-add counts 2) of the torch forward per item, counted over ``batches``."""
    run = _torch_forward(encoder, modality)
    items = 0
    # nn.MultiheadAttention's fused inference kernel is invisible to the counter: the plain path, same maths
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            for b in batches:
                run(b)
                items += len(b["input_ids"]) if isinstance(b, dict) else len(b)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() / items


def _torch_forward(encoder, modality: str) -> Callable[[Any], Any]:
    if modality == "image":
        return encoder.embed_pixels

    def text(tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return encoder.model(dict(tokens))["sentence_embedding"]

    return text


def onnx_embedder(encoder, modality: str, onnx_dir: Path, threads: int) -> OnnxEmbedder | None:
    """The encoder on ONNX Runtime (exported into ``onnx_dir``), or None where it cannot run."""
    path = onnx_path(onnx_dir, encoder.fingerprint, modality)
    try:
        if not path.is_file():
            export_onnx(encoder, modality, path)
        return OnnxEmbedder(encoder, modality, path, threads)
    except OnnxUnavailable as exc:
        print(f"  onnx: {exc}")
        return None


def forward_rates(
    encoder, modality: str, batches: list[Any], onnx: OnnxEmbedder | None, rounds: int
) -> dict[str, float]:
    """Pure forward rates on preprocessed batches: torch in the old (contiguous) and the new
    (channels-last, conv nets only) memory format, and ONNX Runtime when it runs; and, in the
    same rounds, the matmul rate (``"matmul GFLOP/s"``) that the FLOP limit divides."""
    torch_run = _torch_forward(encoder, modality)
    items = sum(len(b["input_ids"]) if isinstance(b, dict) else len(b) for b in batches)

    def fmt(on: bool) -> Callable[[Any], Any]:
        def run(b: Any) -> Any:
            encoder.set_channels_last(on)
            return torch_run(b)

        return run

    variants: dict[str, Callable[[Any], Any]] = {"torch before": fmt(False), "torch after": fmt(True)}
    if onnx is not None:
        variants["onnx"] = (
            (lambda b: onnx.session.run(None, {k: v.numpy() for k, v in b.items()}))
            if isinstance(batches[0], dict)
            else onnx
        )
    best = {name: float("inf") for name in variants}
    for run in variants.values():
        run(batches[0])  # warm-up, off the clock
    gflops = 0.0
    for _ in range(rounds):
        gflops = max(gflops, matmul_gflops(rounds=1))
        for name, run in variants.items():
            t0 = time.perf_counter()
            for b in batches:
                run(b)
            best[name] = min(best[name], time.perf_counter() - t0)
    encoder.set_channels_last(True)
    return {"matmul GFLOP/s": gflops, **{name: items / seconds for name, seconds in best.items()}}


def auto_verdict(encoder, modality: str, first_batch: Any, onnx_dir: Path, threads: int) -> str:
    """Run the ``auto`` rule's own trial on a batch (recorded in ``onnx_dir``); its verdict."""
    embed = Embedder(
        encoder,
        modality,
        "auto",
        device=torch.device("cpu"),
        onnx_dir=onnx_dir,
        threads=threads,
        items=10**9,
        note=print,
    )
    embed(first_batch)
    return embed.choice.reason if embed.choice else ""


def end_to_end(catalog, encoder, modality: str, store_root: Path, *, before: bool, backend: str, **kw) -> tuple:
    """(items/s, the summary, the features aligned to the catalog) of one extraction into a fresh store:
    ``before``: the old paths (``ExtractTuning.baseline()``, torch); else the new ones and ``backend``."""
    store = FeatureStore(store_root)
    tuning = ExtractTuning.baseline() if before else ExtractTuning()
    t0 = time.perf_counter()
    summary = extract_features(
        catalog,
        encoder,
        store,
        modalities=[modality],
        tuning=tuning,
        backend="torch" if before else backend,
        progress=False,
        **kw,
    )
    seconds = time.perf_counter() - t0
    encoder.set_channels_last(True)
    m = summary.modalities[modality]
    x, _ = store.read(FeatureSetKey(catalog.name, encoder.fingerprint, modality), catalog.items["item_id"].tolist())
    return m.encoded / seconds, m, np.array(x)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = torch.from_numpy(a), torch.from_numpy(b)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
