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
  preprocessed ahead of the forward pass (:mod:`pipeline.features.batches`): on CPU in
  a thread pool that prefetches the next batches, on CUDA in DataLoader worker
  processes (:mod:`pipeline.features.images`). On CUDA: bf16 (fp16 on older cards)
  autocast, pinned memory, batches sized to the card, a batch that runs out of memory
  is split. On CPU: the forward pass gets every core, one decoding thread (two on more
  than 8 cores) keeps up, and texts are batched in length order.
- Backend: torch, or ONNX Runtime on CPU where it was measured faster with the same
  features (``backend``: ``auto``/``torch``/``onnx``, :mod:`pipeline.features.backend`);
  every part records the backend that computed it.
- Failures are listed, never silent: an item whose image is null in the catalog
  (rejected at ingest) or fails to read/decode now (or whose bytes no longer match
  the catalog hash) gets no image feature; the summary
  (:mod:`pipeline.features.summary`) names it and why.

``pipeline.features.load.load_features`` reads the features back aligned to
``item_idx``, with masks, for the models.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from encoders.base import Encoder, autocast_dtype
from pipeline.data.catalog import Catalog
from pipeline.device import cpu_count, resolve_device, torch_threads
from pipeline.features.backend import Embedder
from pipeline.features.batches import ExtractTuning, image_batches, text_batches
from pipeline.features.images import default_num_workers
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
    backend: str = "torch",
    onnx_dir: str | Path | None = None,
    tuning: ExtractTuning | None = None,
) -> ExtractSummary:
    """Embed the catalog's items that the store lacks, then commit one snapshot per modality.

    Args:
        catalog, store: the ingested catalog (its ``name`` is the store's dataset name), the store.
        encoder_or_spec: a spec string (``clip:ViT-B-32@/path``, ``image=...,text=minilm``),
            an :class:`~encoders.base.Encoder`, or a mapping modality -> spec/Encoder.
        modalities: which modalities to extract (default: every one the encoder(s) embed).
        batch_size: items per forward pass (default: the encoder's for the device).
        num_workers: image decoding threads on CPU, processes on CUDA (default: by device).
        device, progress: ``cpu``, ``cuda[:i]`` or None/``auto`` (CUDA when present); a progress bar.
        part_size: rows per Parquet part (default 1024 on CPU, 4096 on CUDA), or ``flush_seconds``' worth.
        num_threads: torch intra-op threads on CPU (default: all usable cores); restored after.
        on_part: called as ``on_part(modality, parts_written_so_far, part_name)`` after each part.
        log: gets a plain progress line (done/total, items/s, ETA) every 30 s and at the end.
        backend: ``torch``, ``onnx`` or ``auto`` (:mod:`pipeline.features.backend`); the last two
            need ``onnx_dir`` (``Settings.onnx_dir``: exports and the auto rule's records).
        tuning: extraction's speed paths (:class:`ExtractTuning`; default all on).
    Returns an :class:`ExtractSummary` (counts, failed items, throughput, snapshot id, backend per modality).
    """
    if is_imported(encoder_or_spec):  # the matrices ingest stored: no encoder, nothing to encode
        return imported_summary(catalog, store, modalities)
    quiet_known_warnings()  # model loading notices and bars, for a script or a flow as for the CLI
    t_start = time.perf_counter()
    _check_item_ids(catalog)
    dev = resolve_device(device)
    # the store first: a modality whose every item is already encoded needs no encoder at all
    summaries, encoders = encoders_to_run(catalog, encoder_or_spec, modalities, store, dev)
    threads = (num_threads or cpu_count()) if dev.type == "cpu" else None
    run = _Run(
        device=dev,
        batch_size=batch_size,
        num_workers=default_num_workers(dev) if num_workers is None else int(num_workers),
        part_size=part_size or (4096 if dev.type == "cuda" else 1024),
        flush_seconds=flush_seconds,
        progress=progress,
        on_part=on_part,
        log=log,
        backend=backend,
        onnx_dir=onnx_dir,
        threads=threads or 1,
        tuning=tuning or ExtractTuning(),
    )
    with torch_threads(threads):
        for modality, encoder in encoders.items():
            summaries[modality] = _extract_modality(catalog, encoder, store, modality, run)
    ordered = {m: summaries[m] for m in modality_order(summaries)}
    return ExtractSummary(dataset=catalog.name, modalities=ordered, seconds=time.perf_counter() - t_start)


def _check_item_ids(catalog: Catalog) -> None:
    """The store's own id check, before any encoder loads: a bad id would fail the write
    only after everything was encoded (ingest rejects such ids; an old catalog may hold one)."""
    try:
        string_array(catalog.items["item_id"], "item_id")
    except ValueError as exc:
        raise ValueError(f"catalog {catalog.name}: {exc}; fix the id and re-run `befa ingest`") from None


@dataclass(frozen=True)
class _Run:
    """How one extraction encodes: the settings every modality shares."""

    device: torch.device
    batch_size: int | None  # None: the encoder's default for the device
    num_workers: int
    part_size: int
    flush_seconds: float
    progress: bool
    on_part: Callable[[str, int, str], None] | None
    log: Callable[[str], None] | None
    backend: str
    onnx_dir: str | Path | None
    threads: int
    tuning: ExtractTuning

    said: set[str] = field(default_factory=set)

    def note(self, line: str) -> None:
        """One line for the user (the log, else stderr above the bar), once per extraction."""
        if line in self.said:
            return
        self.said.add(line)
        if self.log is not None:
            self.log(line)
        else:
            tqdm.write(line, file=sys.stderr)


def _extract_modality(catalog: Catalog, encoder: Encoder, store: FeatureStore, modality: str, run: _Run):
    t0 = time.perf_counter()
    encoder.set_channels_last(run.tuning.channels_last)
    run = replace(run, batch_size=run.batch_size or encoder.default_batch_size(run.device))
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
        batch_size=run.batch_size,
        num_workers=run.num_workers if modality == "image" else 0,
        device=str(run.device),
        precision=precision_name(encoder, run.device),
    )
    summary.record_no_content(catalog.items)
    # one extraction per feature set at a time: a second one waits here, then finds the work done
    with store.lock(key, on_wait=tqdm.write):
        pause_point("extract-locked")
        if store.fs.is_local:  # what killed writers of this feature set left, an hour old or more
            clean_temporaries(store.feature_set_path(key))
        todo = todo_keys(store, key, keys)
        summary.skipped = int(len(keys) - len(todo))
        writer = PartWriter(store, key, run.part_size, run.flush_seconds, run.on_part)
        t_enc = time.perf_counter()
        if len(todo):
            embed = Embedder(
                encoder,
                modality,
                run.backend,
                device=run.device,
                onnx_dir=run.onnx_dir,
                threads=run.threads,
                items=len(todo),
                note=run.note,
            )
            _encode_into(writer, summary, _batches(catalog, encoder, embed, modality, todo, run), todo, run, embed)
            summary.backend, summary.backend_reason = embed.label, embed.choice.reason if embed.choice else ""
        return finish_modality(summary, writer, store, key, keys, t_enc, t0)


def _batches(catalog: Catalog, encoder: Encoder, embed: Embedder, modality: str, todo: pd.DataFrame, run: _Run):
    if modality == "image":
        return image_batches(
            embed,
            encoder.image_transform,
            catalog.items,
            todo,
            batch_size=run.batch_size,
            num_workers=run.num_workers,
            device=run.device,
            cache_root=catalog.meta.get("image_cache"),
            tuning=run.tuning,
        )
    return text_batches(embed, catalog.items, todo, batch_size=run.batch_size, window=run.part_size, tuning=run.tuning)


def _encode_into(
    writer: PartWriter, summary: ModalitySummary, batches, todo: pd.DataFrame, run: _Run, embed: Embedder
) -> None:
    """Consume ``batches`` of ``todo``: vectors to the writer (which records ``embed``'s backend),
    failures to the summary, then flush. ``run.log``: plain progress lines as well (``ProgressLines``),
    for logs where the bar does not show. With ``run.progress`` and stderr not a terminal (a file, a
    pipe), the bar becomes those lines on stderr."""
    ids, hashes, idx = todo["item_id"].tolist(), todo["content_hash"].tolist(), todo["item_idx"].tolist()
    unit = "img" if summary.modality == "image" else "text"
    bar = _progress(len(todo), f"{summary.modality} {summary.fingerprint}", unit, run.progress and bar_on_terminal())
    log = run.log
    if run.progress and log is None and not bar_on_terminal():
        log = stderr_line
    lines = (
        ProgressLines(len(todo), f"extract {summary.modality} ({summary.fingerprint})", log, unit=f"{unit}s")
        if log
        else None
    )
    try:
        for positions, emb, bad in batches:
            if positions:
                writer.backend = embed.label
                writer.add([ids[p] for p in positions], [hashes[p] for p in positions], emb, order=positions)
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
    backend: str = "auto",
) -> ExtractSummary:
    """What ``befa extract --dataset D --encoder SPEC`` runs: load the ingested catalog,
    open the feature store from settings, extract (ONNX exports and the auto rule's records
    in ``settings.onnx_dir``), return the summary."""
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
        backend=backend,
        onnx_dir=settings.onnx_dir,
    )
