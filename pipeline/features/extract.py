"""Batch feature extraction: catalog items -> frozen encoder -> Parquet feature store.

``extract_features(catalog, "clip:ViT-B-32@/models/vitb32.safetensors", store)``
embeds every item's image and text with the encoder(s) and commits one store
snapshot per modality.

- Incremental: a feature is keyed by (item_id, content_hash) under the encoder
  fingerprint. Keys already in the store (committed or pending) are skipped, so
  a second run on an unchanged catalog encodes nothing and a changed poster is
  re-encoded alone.
- Crash-safe and resumable: vectors are written as Parquet parts every
  ``part_size`` items (or every ``flush_seconds``, see :mod:`pipeline.features.writer`);
  ``existing_keys`` sees pending parts, so a run that stops midway resumes where it
  stopped. The final ``commit(key, keep=<every current catalog key of the modality>)``
  makes the snapshot exactly the current catalog: items that left the catalog or
  changed content drop out, items without a feature are counted as missing.
- Overlapped: images are read, checked against their catalog hash, decoded and
  preprocessed in DataLoader worker processes (:mod:`pipeline.features.images`)
  while the main process runs the forward pass. On CUDA: bf16 (fp16 on older cards)
  autocast, pinned memory, batches sized to the card, a batch that runs out of memory
  is split. On CPU: torch uses every core for the forward pass and one worker decodes
  (decoding a poster costs ~1/50 of a ViT-B-32 forward on it, so one worker keeps up).
- Failures are listed, never silent: an item whose image is null in the catalog
  (rejected at ingest) or fails to read/decode now (or whose bytes no longer match
  the catalog hash) gets no image feature; the summary
  (:mod:`pipeline.features.summary`) names it and why.

``pipeline.features.load.load_features`` reads the features back aligned to
``item_idx``, with masks, for the models.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from encoders.base import Encoder, autocast_dtype
from pipeline.data.catalog import Catalog
from pipeline.device import cpu_count, resolve_device, torch_threads
from pipeline.features.images import ImageItems, default_num_workers, image_loader
from pipeline.features.imported import imported_summary, is_imported
from pipeline.features.plan import encoders_to_run, todo_keys
from pipeline.features.progress import ProgressLines, bar_on_terminal, stderr_line
from pipeline.features.summary import ExtractSummary, ModalitySummary
from pipeline.features.writer import PartWriter
from pipeline.quiet import quiet_known_warnings
from pipeline.settings import Settings
from storage.atomic import clean_temporaries
from storage.columns import string_array
from storage.faults import pause_point
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey, modality_order

# What a fingerprint determines. The other info fields (spec, source, weights label)
# may legitimately differ between runs of the same function: a checkpoint moved to
# another path, a newer library version, `@random` vs `@random:0`.
IDENTITY_FIELDS = ("dim", "weights", "random_init", "preprocessing", "architecture", "family")


def register_encoder(store: FeatureStore, encoder: Encoder) -> None:
    """Record the encoder's info under its fingerprint, once.

    The first run's info is kept; later runs only check that the fields the
    fingerprint stands for agree (a disagreement would mean two different
    encoders share a fingerprint, so it is an error).
    """
    fp = encoder.fingerprint
    info = encoder.info()
    known = store.encoder_info(fp)
    if known is None:
        store.register_encoder(fp, info)
        return
    norm = json.loads(json.dumps({k: info[k] for k in IDENTITY_FIELDS}, sort_keys=True, default=str))
    differ = [k for k in IDENTITY_FIELDS if k in known and known[k] != norm[k]]
    if differ:
        raise ValueError(
            f"encoder fingerprint {fp} is registered in {store.root} with different {', '.join(differ)}: "
            "refusing to mix features of two encoders"
        )


def precision_name(encoder: Encoder, device: torch.device) -> str:
    """How the forward pass runs on ``device``: fp32 or the autocast dtype."""
    dtype = encoder.precision if encoder.precision is not None else autocast_dtype(device)
    return {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]


def finish_modality(
    summary: ModalitySummary,
    writer: PartWriter,
    store: FeatureStore,
    key: FeatureSetKey,
    keys: pd.DataFrame,
    t_enc: float,
    t0: float,
) -> ModalitySummary:
    """Timings, throughput, and the commit that makes the snapshot exactly the current catalog
    (keys without a row, i.e. failed items, count as missing). Shared with Ray extraction."""
    summary.encode_seconds = time.perf_counter() - t_enc
    summary.throughput = summary.encoded / summary.encode_seconds if summary.encoded else 0.0
    summary.parts_written = len(writer.parts)
    snap = store.commit(key, keep=zip(keys["item_id"].tolist(), keys["content_hash"].tolist()))
    summary.snapshot_id = snap.id
    summary.snapshot_rows = snap.num_rows
    summary.seconds = time.perf_counter() - t0
    return summary


def _embed_split_on_oom(fn: Callable[[Any], torch.Tensor], batch: Any, n: int) -> torch.Tensor:
    """``fn(batch)``; on CUDA out-of-memory, halve the batch and try again."""
    try:
        return fn(batch)
    except torch.cuda.OutOfMemoryError:
        if n <= 1:
            raise
        torch.cuda.empty_cache()
        half = n // 2
        return torch.cat([_embed_split_on_oom(fn, batch[:half], half), _embed_split_on_oom(fn, batch[half:], n - half)])


def _progress(total: int, desc: str, unit: str, enabled: bool) -> tqdm:
    # tqdm shows items/s and the ETA; mininterval keeps the bar cheap.
    return tqdm(
        total=total, desc=desc, unit=unit, disable=not enabled or total == 0, mininterval=0.5, dynamic_ncols=True
    )


def extract_features(
    catalog: Catalog,
    encoder_or_spec: Any,
    store: FeatureStore,
    modalities: Sequence[str] | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    part_size: int | None = None,
    flush_seconds: float = 60.0,
    num_threads: int | None = None,
    on_part: Callable[[str, int, str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> ExtractSummary:
    """Embed the catalog's items that the store lacks, then commit one snapshot per modality.

    Args:
        catalog: the ingested catalog (its ``name`` is the store's dataset name).
        encoder_or_spec: a spec string (``clip:ViT-B-32@/path``, ``image=...,text=minilm``),
            an :class:`~encoders.base.Encoder`, or a mapping modality -> spec/Encoder.
        store: the feature store.
        modalities: which modalities to extract (default: every one the encoder(s) embed).
        batch_size: items per forward pass (default: 32 on CPU, sized to the card on CUDA).
        num_workers: image decoding processes (default: 1 on small CPU machines, more on CUDA).
        device: ``cpu``, ``cuda[:i]`` or None/``auto`` (CUDA when present).
        progress: show a progress bar (items/s and ETA).
        part_size: rows per Parquet part (default 1024 on CPU, 4096 on CUDA); a part is
            also written after ``flush_seconds``, bounding the work a crash can lose.
        num_threads: torch intra-op threads on CPU (default: all usable cores); restored after.
        on_part: called as ``on_part(modality, parts_written_so_far, part_name)`` after each part.
        log: gets a plain progress line (done/total, items/s, ETA) every 30 s and at the end.

    Returns:
        An :class:`ExtractSummary` (encoded / skipped / failed counts, failed items,
        throughput, seconds, snapshot id per modality).
    """
    if is_imported(encoder_or_spec):  # the matrices ingest stored: no encoder, nothing to encode
        return imported_summary(catalog, store, modalities)
    quiet_known_warnings()  # model loading notices and bars, for a script or a flow as for the CLI
    t_start = time.perf_counter()
    _check_item_ids(catalog)
    dev = resolve_device(device)
    # the store first: a modality whose every item is already encoded needs no encoder at all
    summaries, encoders = encoders_to_run(catalog, encoder_or_spec, modalities, store, dev)
    workers = default_num_workers(dev) if num_workers is None else int(num_workers)
    threads = (num_threads or cpu_count()) if dev.type == "cpu" else None
    with torch_threads(threads):
        for modality, encoder in encoders.items():
            summaries[modality] = _extract_modality(
                catalog,
                encoder,
                store,
                modality,
                dev,
                batch_size=batch_size or encoder.default_batch_size(dev),
                num_workers=workers,
                part_size=part_size or (4096 if dev.type == "cuda" else 1024),
                flush_seconds=flush_seconds,
                progress=progress,
                on_part=on_part,
                log=log,
            )
    ordered = {m: summaries[m] for m in modality_order(summaries)}
    return ExtractSummary(dataset=catalog.name, modalities=ordered, seconds=time.perf_counter() - t_start)


def _check_item_ids(catalog: Catalog) -> None:
    """The store's own id check, before any encoder loads: a bad id would fail the write
    only after everything was encoded (ingest rejects such ids; an old catalog may hold one)."""
    try:
        string_array(catalog.items["item_id"], "item_id")
    except ValueError as exc:
        raise ValueError(f"catalog {catalog.name}: {exc}; fix the id and re-run `befa ingest`") from None


def _extract_modality(
    catalog: Catalog,
    encoder: Encoder,
    store: FeatureStore,
    modality: str,
    device: torch.device,
    *,
    batch_size: int,
    num_workers: int,
    part_size: int,
    flush_seconds: float,
    progress: bool,
    on_part: Callable[[str, int, str], None] | None,
    log: Callable[[str], None] | None = None,
) -> ModalitySummary:
    t0 = time.perf_counter()
    register_encoder(store, encoder)
    key = FeatureSetKey(catalog.name, encoder.fingerprint, modality)
    keys = catalog.content_keys(modality)
    summary = ModalitySummary(
        modality=modality,
        encoder=str(encoder.spec),
        fingerprint=key.fingerprint,
        weights=encoder.weights_label,
        random_init=encoder.random_init,
        dim=encoder.dim,
        items=catalog.num_items,
        with_content=len(keys),
        batch_size=batch_size,
        num_workers=num_workers if modality == "image" else 0,
        device=str(device),
        precision=precision_name(encoder, device),
    )
    summary.record_no_content(catalog.items)
    # one extraction per feature set at a time: a second one waits here, then finds the work done
    with store.lock(key, on_wait=tqdm.write):
        pause_point("extract-locked")
        if store.fs.is_local:  # what killed writers of this feature set left, an hour old or more
            clean_temporaries(store.feature_set_path(key))
        todo = todo_keys(store, key, keys)
        summary.skipped = int(len(keys) - len(todo))
        writer = PartWriter(store, key, part_size, flush_seconds, on_part)
        t_enc = time.perf_counter()
        if len(todo):
            if modality == "image":
                batches = _image_batches(
                    encoder, catalog.items, todo, batch_size, num_workers, device, catalog.meta.get("image_cache")
                )
            else:
                batches = _text_batches(encoder, catalog.items, todo, batch_size)
            _encode_into(writer, summary, batches, todo, progress, log)
        return finish_modality(summary, writer, store, key, keys, t_enc, t0)


def _encode_into(
    writer: PartWriter,
    summary: ModalitySummary,
    batches,
    todo: pd.DataFrame,
    progress: bool,
    log: Callable[[str], None] | None = None,
) -> None:
    """Consume ``batches`` of ``todo``: vectors to the writer, failures to the summary, then flush.
    ``log``: plain progress lines as well (``ProgressLines``), for logs where the bar does not show.
    With ``progress`` and stderr not a terminal (a file, a pipe), the bar becomes those lines on stderr."""
    ids, hashes, idx = todo["item_id"].tolist(), todo["content_hash"].tolist(), todo["item_idx"].tolist()
    unit = "img" if summary.modality == "image" else "text"
    bar = _progress(len(todo), f"{summary.modality} {summary.fingerprint}", unit, progress and bar_on_terminal())
    if progress and log is None and not bar_on_terminal():
        log = stderr_line
    lines = (
        ProgressLines(len(todo), f"extract {summary.modality} ({summary.fingerprint})", log, unit=f"{unit}s")
        if log
        else None
    )
    try:
        for positions, emb, bad in batches:
            if positions:
                writer.add([ids[p] for p in positions], [hashes[p] for p in positions], emb)
                summary.encoded += len(positions)
            for p, why in bad:
                summary.record_failure(ids[p], idx[p], why)
            bar.update(len(positions) + len(bad))
            if lines:
                lines.update(len(positions) + len(bad))
        writer.flush()
    finally:
        bar.close()
    if lines:
        lines.close()


def _image_batches(encoder, items, todo, batch_size, num_workers, device, cache_root=None):
    """Yield ``(positions, embeddings (n, D) float32 numpy, failures)`` per batch of ``todo``."""
    refs = items["image"].to_numpy()[todo["item_idx"].to_numpy()]
    # image URLs are read from the cache the catalog was ingested with (never fetched)
    dataset = ImageItems(refs.tolist(), todo["content_hash"].tolist(), encoder.image_transform, cache_root)
    for positions, pixels, bad in image_loader(dataset, batch_size, num_workers, device):
        if pixels is None:
            yield [], None, bad
            continue
        pixels = pixels.to(device, non_blocking=True)
        emb = _embed_split_on_oom(encoder.embed_pixels, pixels, len(positions))
        yield positions, emb.cpu().numpy(), bad


def _text_batches(encoder, items, todo, batch_size):
    texts = items["text"].to_numpy()[todo["item_idx"].to_numpy()].tolist()
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        emb = _embed_split_on_oom(encoder.embed_texts, chunk, len(chunk))
        yield list(range(start, start + len(chunk))), emb.cpu().numpy(), []


# ---------------------------------------------------------------------------- CLI helpers
def extract_command(
    dataset: str,
    encoder_spec: str,
    settings: Settings,
    modalities: Sequence[str] | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> ExtractSummary:
    """What ``befa extract --dataset D --encoder SPEC`` runs: load the ingested catalog,
    open the feature store from settings, extract, return the summary."""
    catalog = Catalog.load(settings.catalog_dir(dataset))
    store = FeatureStore(settings.feature_store)
    return extract_features(
        catalog,
        encoder_spec,
        store,
        modalities=modalities,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        progress=progress,
    )
