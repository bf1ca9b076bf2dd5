"""Batch feature extraction: catalog items -> frozen encoder -> Parquet feature store.

``extract_features(catalog, "clip:ViT-B-32@/models/vitb32.safetensors", store)``
embeds every item's image and text with the encoder(s) and commits one store
snapshot per modality.

- Incremental: a feature is keyed by (item_id, content_hash) under the encoder
  fingerprint. Keys already in the store (committed or pending) are skipped, so
  a second run on an unchanged catalog encodes nothing and a changed poster is
  re-encoded alone.
- Crash-safe and resumable: vectors are written as Parquet parts every
  ``part_size`` items (or every ``flush_seconds``); ``existing_keys`` sees
  pending parts, so a run that stops midway resumes where it stopped. The final
  ``commit(keep=<every current catalog key of the modality>)`` makes the
  snapshot exactly the current catalog: items that left the catalog or changed
  content drop out, items without a feature are counted as missing.
- Overlapped: images are read, checked against their catalog hash, decoded and
  preprocessed in DataLoader worker processes while the main process runs the
  forward pass. On CUDA: bf16 (fp16 on older cards) autocast, pinned memory,
  batches sized to the card, a batch that runs out of memory is split. On CPU:
  torch uses every core for the forward pass and one worker decodes (decoding a
  poster costs ~1/50 of a ViT-B-32 forward on it, so one worker keeps up).
- Failures are listed, never silent: an item whose image is null in the catalog
  (rejected at ingest) or fails to read/decode now (or whose bytes no longer match
  the catalog hash) gets no image feature; the summary names it and why.

``load_features`` reads the features back aligned to ``item_idx``, with masks,
for the models.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from encoders.base import Encoder, autocast_dtype, check_modalities
from encoders.registry import create_encoders
from pipeline.data.catalog import Catalog
from pipeline.settings import Settings
from pipeline.training.device import cpu_count, resolve_device, torch_threads
from storage.feature_store import FeatureStore
from storage.keys import MODALITIES

MAX_LISTED_FAILURES = 10_000  # listing every failure of a broken image folder would not help anyone


# ---------------------------------------------------------------------------- summary
@dataclass
class ModalitySummary:
    """What one modality's extraction did."""

    modality: str
    encoder: str  # spec
    fingerprint: str
    weights: str  # identity label; "random init (seed N)" for random weights
    random_init: bool
    dim: int
    items: int  # items of the catalog
    with_content: int  # items that have this modality in the catalog
    encoded: int = 0
    skipped: int = 0  # already in the store under this fingerprint and content hash
    failed: int = 0  # could not be read/decoded at extraction
    no_content: int = 0  # null in the catalog (e.g. image rejected at ingest)
    missing_items: list[dict[str, Any]] = field(default_factory=list)  # item_id, item_idx, reason
    seconds: float = 0.0
    encode_seconds: float = 0.0
    throughput: float = 0.0  # encoded items per second of the encode loop
    parts_written: int = 0
    snapshot_id: str | None = None
    snapshot_rows: int = 0
    batch_size: int = 0
    num_workers: int = 0
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def failed_items(self) -> list[dict[str, Any]]:
        return [m for m in self.missing_items if m["kind"] == "failed"]


@dataclass
class ExtractSummary:
    """Per-modality results of :func:`extract_features`."""

    dataset: str
    modalities: dict[str, ModalitySummary]
    seconds: float = 0.0

    @property
    def encoded(self) -> int:
        return sum(m.encoded for m in self.modalities.values())

    @property
    def skipped(self) -> int:
        return sum(m.skipped for m in self.modalities.values())

    @property
    def failed(self) -> int:
        return sum(m.failed for m in self.modalities.values())

    @property
    def failed_items(self) -> list[dict[str, Any]]:
        return [dict(m, modality=s.modality) for s in self.modalities.values() for m in s.failed_items]

    @property
    def snapshot_ids(self) -> dict[str, str | None]:
        return {m: s.snapshot_id for m, s in self.modalities.items()}

    @property
    def fingerprints(self) -> dict[str, str]:
        return {m: s.fingerprint for m, s in self.modalities.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "seconds": round(self.seconds, 3),
            "modalities": {m: asdict(s) for m, s in self.modalities.items()},
        }

    def lines(self) -> list[str]:
        out = [f"extract {self.dataset}: {self.seconds:.1f} s"]
        for s in self.modalities.values():
            out.append(
                f"  {s.modality}: encoder {s.encoder} ({s.fingerprint}, {s.dim}-d), weights: {s.weights}; "
                f"encoded {s.encoded}, skipped {s.skipped}, failed {s.failed}, no {s.modality} {s.no_content}; "
                f"{s.throughput:.1f} items/s on {s.device} ({s.precision}, batch {s.batch_size}, "
                f"{s.num_workers} workers); snapshot {s.snapshot_id} ({s.snapshot_rows} rows)"
            )
            for m in s.failed_items[:5]:
                out.append(f"    failed: item {m['item_id']} (idx {m['item_idx']}): {m['reason']}")
            if s.failed > 5:
                out.append(f"    ... and {s.failed - 5} more failed items")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


# ---------------------------------------------------------------------------- images
def read_image_bytes(ref: str) -> bytes:
    """Bytes of a catalog image reference: a local path or an fsspec URI."""
    if "://" in ref and not ref.startswith("file://"):
        import fsspec

        with fsspec.open(ref, "rb") as fh:
            return fh.read()
    if ref.startswith("file://"):
        from urllib.parse import unquote, urlparse

        ref = unquote(urlparse(ref).path)
    with open(ref, "rb") as fh:
        return fh.read()


class ImageItems(Dataset):
    """Images to encode; ``__getitem__`` runs in DataLoader workers.

    Returns ``(position, pixels, None)`` or ``(position, None, reason)``: a bad
    image is reported, not raised, so one broken file does not stop the run. The
    bytes are checked against the catalog's hash, so a feature is never stored
    under a hash it was not computed from.
    """

    def __init__(self, refs: Sequence[str], hashes: Sequence[str], transform: Callable[[Image.Image], torch.Tensor]):
        self.refs = list(refs)
        self.hashes = list(hashes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, pos: int) -> tuple[int, torch.Tensor | None, str | None]:
        ref = self.refs[pos]
        try:
            data = read_image_bytes(ref)
        except FileNotFoundError:
            return pos, None, f"image file missing: {ref}"
        except Exception as exc:
            return pos, None, f"image unreadable ({type(exc).__name__}: {exc}): {ref}"
        if hashlib.sha256(data).hexdigest() != self.hashes[pos]:
            return pos, None, f"image changed since ingest (sha256 differs from the catalog; re-run ingest): {ref}"
        try:
            with Image.open(io.BytesIO(data)) as img:
                pixels = self.transform(img.convert("RGB"))
        except Exception as exc:  # PIL raises many types
            return pos, None, f"image does not decode ({type(exc).__name__}: {exc}): {ref}"
        return pos, pixels, None


def collate_images(batch: list[tuple[int, torch.Tensor | None, str | None]]):
    ok = [(p, x) for p, x, err in batch if err is None]
    bad = [(p, err) for p, _, err in batch if err is not None]
    positions = [p for p, _ in ok]
    pixels = torch.stack([x for _, x in ok]) if ok else None
    return positions, pixels, bad


def _worker_init(_: int) -> None:
    # Workers only decode and resize: one thread each, or they fight the forward pass for cores.
    torch.set_num_threads(1)


def default_num_workers(device: torch.device) -> int:
    cores = cpu_count()
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    # On CPU the forward pass needs the cores; decoding is ~2% of its cost per image.
    return 1 if cores <= 8 else 2


def _precision_name(encoder: "Encoder", device: torch.device) -> str:
    dtype = encoder.precision if encoder.precision is not None else autocast_dtype(device)
    return {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]


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


# ---------------------------------------------------------------------------- writer
class _PartWriter:
    """Buffers embeddings and writes a store part every ``part_size`` rows or ``flush_seconds``."""

    def __init__(self, store, dataset, fingerprint, modality, part_size, flush_seconds, on_part):
        self.store, self.dataset, self.fingerprint, self.modality = store, dataset, fingerprint, modality
        self.part_size, self.flush_seconds, self.on_part = part_size, flush_seconds, on_part
        self.ids: list[str] = []
        self.hashes: list[str] = []
        self.chunks: list[np.ndarray] = []
        self.parts: list[str] = []
        self.last = time.perf_counter()

    def add(self, ids: list[str], hashes: list[str], emb: np.ndarray) -> None:
        self.ids += ids
        self.hashes += hashes
        self.chunks.append(emb)
        if len(self.ids) >= self.part_size or time.perf_counter() - self.last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.ids:
            name = self.store.write_part(
                self.dataset, self.fingerprint, self.modality, self.ids, self.hashes, np.concatenate(self.chunks)
            )
            self.parts.append(name)
            self.ids, self.hashes, self.chunks = [], [], []
            if self.on_part is not None:
                self.on_part(self.modality, len(self.parts), name)
        self.last = time.perf_counter()


# ---------------------------------------------------------------------------- extraction
# What a fingerprint determines. The other info fields (spec, source, weights label)
# may legitimately differ between runs of the same function: a checkpoint moved to
# another path, a newer library version, `@random` vs `@random:0`.
IDENTITY_FIELDS = ("dim", "weights", "random_init", "preprocessing", "architecture", "family")


def register_encoder(store: "FeatureStore", encoder: "Encoder") -> None:
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
    import json

    norm = json.loads(json.dumps({k: info[k] for k in IDENTITY_FIELDS}, sort_keys=True, default=str))
    differ = [k for k in IDENTITY_FIELDS if k in known and known[k] != norm[k]]
    if differ:
        raise ValueError(
            f"encoder fingerprint {fp} is registered in {store.root} with different {', '.join(differ)}: "
            "refusing to mix features of two encoders"
        )


def _progress(total: int, desc: str, unit: str, enabled: bool):
    from tqdm.auto import tqdm

    # tqdm shows items/s and the ETA; mininterval keeps the bar cheap.
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled or total == 0, mininterval=0.5, dynamic_ncols=True)


def _resolve_encoders(encoder_or_spec: Any, modalities: Sequence[str] | None, device: torch.device) -> dict[str, "Encoder"]:
    if isinstance(encoder_or_spec, Encoder):
        wanted = list(modalities) if modalities is not None else list(encoder_or_spec.modalities)
        check_modalities(encoder_or_spec.family, wanted, encoder_or_spec.modalities)
        encoders = {m: encoder_or_spec for m in MODALITIES if m in wanted}
    elif isinstance(encoder_or_spec, Mapping) and all(isinstance(v, Encoder) for v in encoder_or_spec.values()):
        encoders = dict(encoder_or_spec)
        for m, enc in encoders.items():
            check_modalities(enc.family, [m], enc.modalities)
        if modalities is not None:
            encoders = {m: encoders[m] for m in modalities}
    else:
        encoders = create_encoders(encoder_or_spec, modalities)
    for enc in {id(e): e for e in encoders.values()}.values():
        if enc.device != device:
            enc.to(device)
    return encoders


def extract_features(
    catalog: Catalog,
    encoder_or_spec: Any,
    store: "FeatureStore",
    modalities: Sequence[str] | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    part_size: int | None = None,
    flush_seconds: float = 60.0,
    num_threads: int | None = None,
    on_part: Callable[[str, int, str], None] | None = None,
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

    Returns:
        An :class:`ExtractSummary` (encoded / skipped / failed counts, failed items,
        throughput, seconds, snapshot id per modality).
    """
    t_start = time.perf_counter()
    dev = resolve_device(device)
    encoders = _resolve_encoders(encoder_or_spec, modalities, dev)
    workers = default_num_workers(dev) if num_workers is None else int(num_workers)
    threads = (num_threads or cpu_count()) if dev.type == "cpu" else None
    summaries: dict[str, ModalitySummary] = {}
    with torch_threads(threads):
        for modality, encoder in encoders.items():
            summaries[modality] = _extract_modality(
                catalog, encoder, store, modality, dev,
                batch_size=batch_size or encoder.default_batch_size(dev),
                num_workers=workers,
                part_size=part_size or (4096 if dev.type == "cuda" else 1024),
                flush_seconds=flush_seconds,
                progress=progress,
                on_part=on_part,
            )
    return ExtractSummary(dataset=catalog.name, modalities=summaries, seconds=time.perf_counter() - t_start)


def _extract_modality(
    catalog: Catalog,
    encoder: "Encoder",
    store: "FeatureStore",
    modality: str,
    device: torch.device,
    *,
    batch_size: int,
    num_workers: int,
    part_size: int,
    flush_seconds: float,
    progress: bool,
    on_part,
) -> ModalitySummary:
    t0 = time.perf_counter()
    fp = encoder.fingerprint
    register_encoder(store, encoder)
    items = catalog.items
    keys = catalog.content_keys(modality)
    summary = ModalitySummary(
        modality=modality, encoder=str(encoder.spec), fingerprint=fp, weights=encoder.weights_label,
        random_init=encoder.random_init, dim=encoder.dim, items=len(items), with_content=len(keys),
        batch_size=batch_size, num_workers=num_workers if modality == "image" else 0,
        device=str(device), precision=_precision_name(encoder, device),
    )
    no_content = items[items[f"{modality}_hash"].isna()]
    summary.no_content = len(no_content)
    reason = "no image in the catalog (missing or rejected at ingest)" if modality == "image" else "empty text"
    summary.missing_items += [
        {"item_id": i, "item_idx": int(x), "kind": "no_content", "reason": reason}
        for i, x in zip(no_content["item_id"].tolist()[:MAX_LISTED_FAILURES], no_content["item_idx"].tolist())
    ]

    existing = store.existing_keys(catalog.name, fp, modality)
    key_ids = keys["item_id"].tolist()
    key_hashes = keys["content_hash"].tolist()
    todo_mask = np.fromiter(((i, h) not in existing for i, h in zip(key_ids, key_hashes)), dtype=bool, count=len(keys))
    todo = keys[todo_mask]
    summary.skipped = int(len(keys) - len(todo))

    writer = _PartWriter(store, catalog.name, fp, modality, part_size, flush_seconds, on_part)
    t_enc = time.perf_counter()
    if len(todo):
        todo_ids = todo["item_id"].tolist()
        todo_hashes = todo["content_hash"].tolist()
        todo_idx = todo["item_idx"].tolist()
        bar = _progress(len(todo), f"{modality} {fp}", "img" if modality == "image" else "text", progress)
        try:
            if modality == "image":
                batches = _image_batches(encoder, items, todo, batch_size, num_workers, device)
            else:
                batches = _text_batches(encoder, items, todo, batch_size)
            for positions, emb, bad in batches:
                if positions:
                    writer.add([todo_ids[p] for p in positions], [todo_hashes[p] for p in positions], emb)
                    summary.encoded += len(positions)
                for p, why in bad:
                    summary.failed += 1
                    if len(summary.missing_items) < MAX_LISTED_FAILURES:
                        summary.missing_items.append(
                            {"item_id": todo_ids[p], "item_idx": int(todo_idx[p]), "kind": "failed", "reason": why}
                        )
                bar.update(len(positions) + len(bad))
            writer.flush()
        finally:
            bar.close()
    return finish_modality(summary, writer, store, catalog.name, fp, modality, key_ids, key_hashes, t_enc, t0)


def finish_modality(summary, writer, store, dataset, fp, modality, key_ids, key_hashes, t_enc: float, t0: float):
    """Timings, throughput, and the commit that makes the snapshot exactly the current catalog
    (keys without a row, i.e. failed items, count as missing). Shared with Ray extraction."""
    summary.encode_seconds = time.perf_counter() - t_enc
    summary.throughput = summary.encoded / summary.encode_seconds if summary.encoded else 0.0
    summary.parts_written = len(writer.parts)
    snap = store.commit(dataset, fp, modality, keep=zip(key_ids, key_hashes))
    summary.snapshot_id = snap.id
    summary.snapshot_rows = snap.num_rows
    summary.seconds = time.perf_counter() - t0
    return summary


def _image_batches(encoder, items, todo, batch_size, num_workers, device):
    """Yield ``(positions, embeddings (n, D) float32 numpy, failures)`` per batch of ``todo``."""
    refs = items["image"].to_numpy()[todo["item_idx"].to_numpy()]
    dataset = ImageItems(refs.tolist(), todo["content_hash"].tolist(), encoder.image_transform)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if num_workers > 0 else None,
        # a few batches ahead per worker hide decoding jitter; on CUDA batches are big, so fewer
        prefetch_factor=(2 if device.type == "cuda" else 4) if num_workers > 0 else None,
        persistent_workers=False,
    )
    for positions, pixels, bad in loader:
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
        catalog, encoder_spec, store, modalities=modalities, batch_size=batch_size,
        num_workers=num_workers, device=device, progress=progress,
    )


