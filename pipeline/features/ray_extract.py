"""Feature extraction on a Ray cluster (Ray Data): the same result as ``pipeline.features.extract``, spread out.

``extract_features_ray(catalog, spec, store, cluster="ray://head:10001")`` does what
:func:`pipeline.features.extract.extract_features` does, with the encoding on Ray:

- the driver (this process) reads the catalog, asks the store which
  (item_id, content hash) keys it lacks under the encoder's fingerprint (incremental,
  exactly as locally) and builds a Ray Dataset of those items only;
- ``map_batches`` runs them through an actor pool: each actor builds the encoder once
  (``num_gpus=1`` per actor when the cluster has GPUs, CPU otherwise), reads each image
  (local path or fsspec URI: on a real cluster the images and the store must be
  reachable from the workers, e.g. ``s3://``), checks its bytes against the catalog
  hash, decodes, preprocesses and embeds; texts are embedded as they are;
- the driver consumes the output as a stream and writes the same Parquet parts the local
  extractor writes (:class:`~pipeline.features.writer.PartWriter`, every ``part_size``
  rows), then commits one snapshot per modality with ``keep`` = the catalog's current keys.

Same encoder, same preprocessing, same fp32 forward pass on CPU: the vectors equal the
local run's (tested, to float32 rounding: batches may be cut differently). Snapshot ids
differ because part names do; the rows do not.

What runs where: ingest, splits and training stay on the driver's machine (training is
one model on one device); only feature extraction is distributed.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from encoders.onnx_backend import torch_label
from encoders.registry import create_encoders, resolve_specs
from pipeline.cluster import connected
from pipeline.data.catalog import Catalog
from pipeline.data.image_cache import ImageCache, is_url
from pipeline.features.extract import finish_modality, precision_name
from pipeline.features.images import ImageItems
from pipeline.features.plan import todo_keys
from pipeline.features.summary import ExtractSummary, ModalitySummary
from pipeline.features.writer import PartWriter
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey


class _Embedder:
    """Ray Data actor: builds the encoder once, then embeds batches of items."""

    def __init__(self, spec: str, modality: str, device: str):
        self.modality = modality
        self.device = torch.device(device)
        self.encoder = create_encoders(spec, [modality])[modality].to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["item_id"])
        ok = np.zeros(n, dtype=bool)
        reason = np.array([""] * n, dtype=object)
        dim = self.encoder.dim
        emb = np.zeros((n, dim), dtype=np.float32)
        if self.modality == "image":
            items = ImageItems(list(batch["payload"]), list(batch["content_hash"]), self.encoder.image_transform)
            good, pixels = [], []
            for i in range(n):
                _, x, why = items[i]
                if why is None:
                    good.append(i)
                    pixels.append(x)
                else:
                    reason[i] = why
            if good:
                out = self.encoder.embed_pixels(torch.stack(pixels).to(self.device))
                emb[good] = out.float().cpu().numpy()
                ok[good] = True
        else:
            out = self.encoder.embed_texts([str(t) for t in batch["payload"]])
            emb[:] = out.float().cpu().numpy()
            ok[:] = True
        return {
            "item_id": batch["item_id"],
            "content_hash": batch["content_hash"],
            "item_idx": batch["item_idx"],
            "embedding": emb,
            "ok": ok,
            "reason": reason,
        }


def _embed_stream(
    frame: pd.DataFrame, spec: str, modality: str, *, use_gpu: bool, actors: int, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """The Ray Data pipeline: items -> actor pool of encoders -> output batches, streamed."""
    import ray

    out = ray.data.from_pandas(frame).map_batches(
        _Embedder,
        fn_constructor_kwargs={"spec": spec, "modality": modality, "device": "cuda" if use_gpu else "cpu"},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=actors,
        num_gpus=1 if use_gpu else 0,
    )
    yield from out.iter_batches(batch_size=None, batch_format="numpy")


class _StreamOnCluster:
    """Ray Client (``ray://``) only: Ray Data's streaming executor needs a core worker, which a
    client process does not have (Ray Data does not support Ray Client). This actor runs the
    pipeline on the cluster instead; the client pulls one output batch per call, so the
    cluster never runs further ahead than Ray Data's own buffering (pull = backpressure)."""

    def __init__(self, frame: pd.DataFrame, spec: str, modality: str, use_gpu: bool, actors: int, batch_size: int):
        self._batches = _embed_stream(frame, spec, modality, use_gpu=use_gpu, actors=actors, batch_size=batch_size)

    def next_batch(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _embedded_batches(
    ray: Any, frame: pd.DataFrame, spec: str, modality: str, *, use_gpu: bool, actors: int, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Output batches of the Ray Data pipeline, run here (a driver on the cluster) or, through
    Ray Client, by a :class:`_StreamOnCluster` actor (0 CPUs: it only drives the pipeline)."""
    from ray.util.client import ray as client

    if not client.is_connected():
        yield from _embed_stream(frame, spec, modality, use_gpu=use_gpu, actors=actors, batch_size=batch_size)
        return
    driver = ray.remote(num_cpus=0)(_StreamOnCluster).remote(frame, spec, modality, use_gpu, actors, batch_size)
    try:
        while (batch := ray.get(driver.next_batch.remote())) is not None:
            yield batch
    finally:
        ray.kill(driver)


def _describe(spec: str, modality: str) -> dict[str, Any]:
    """Fingerprint and identity of an encoder, computed on a worker (the driver may be small)."""
    enc = create_encoders(spec, [modality])[modality]
    return {
        "fingerprint": enc.fingerprint,
        "info": enc.info(),
        "dim": enc.dim,
        "weights": enc.weights_label,
        "random_init": bool(enc.random_init),
        "spec": str(enc.spec),
        "precision": precision_name(enc, torch.device("cpu")),
    }


def extract_features_ray(
    catalog: Catalog,
    encoder_spec: str,
    store: FeatureStore,
    cluster: str = "auto",
    modalities: Sequence[str] | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    num_actors: int | None = None,
    part_size: int = 1024,
) -> ExtractSummary:
    """Incremental extraction on Ray; returns the same summary as ``extract_features``."""
    if not isinstance(encoder_spec, str):
        raise TypeError("extract_features_ray takes an encoder spec string (encoders are built on the workers)")
    specs = resolve_specs(encoder_spec, modalities)
    t_start = time.perf_counter()
    summaries: dict[str, ModalitySummary] = {}
    with connected(cluster) as ray:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        use_gpu = gpus > 0 and device not in ("cpu",)
        actors = num_actors or (max(1, int(gpus)) if use_gpu else 1)
        for modality, spec in specs.items():
            summaries[modality] = _extract_modality(
                ray,
                catalog,
                str(spec),
                store,
                modality,
                use_gpu=use_gpu,
                actors=actors,
                batch_size=batch_size or (256 if use_gpu else 32),
                part_size=part_size,
            )
    return ExtractSummary(dataset=catalog.name, modalities=summaries, seconds=time.perf_counter() - t_start)


def _work_frame(items: pd.DataFrame, todo: pd.DataFrame, modality: str, cache_root: str | None = None) -> pd.DataFrame:
    """What the actors get per item: id, content hash, index and the payload (image reference
    or text). An image URL is resolved here, on the driver, to its file in the image cache
    (which, like BEFA_HOME, a cluster's workers must share): no worker touches the network."""
    payload = items[modality].to_numpy()[todo["item_idx"].to_numpy()]
    if modality == "image" and cache_root:
        cache = ImageCache(cache_root)
        payload = np.array([_cached(cache, ref) for ref in payload], dtype=object)
    return pd.DataFrame(
        {
            "item_id": todo["item_id"].astype(str).to_numpy(),
            "content_hash": todo["content_hash"].astype(str).to_numpy(),
            "item_idx": todo["item_idx"].to_numpy(np.int64),
            "payload": payload.astype(str),
        }
    )


def _cached(cache: ImageCache, ref: Any) -> Any:
    hit = cache.lookup(ref) if is_url(ref) else None
    return str(hit.path) if hit is not None else ref


def _take_batch(writer: PartWriter, summary: ModalitySummary, batch: dict[str, np.ndarray]) -> None:
    """One output batch of the actors: vectors to the writer, failures to the summary."""
    ok = batch["ok"].astype(bool)
    if ok.any():
        ids, hashes = [str(x) for x in batch["item_id"][ok]], [str(x) for x in batch["content_hash"][ok]]
        writer.add(ids, hashes, np.asarray(batch["embedding"][ok], dtype=np.float32))
        summary.encoded += int(ok.sum())
    for j in np.flatnonzero(~ok):
        summary.record_failure(str(batch["item_id"][j]), int(batch["item_idx"][j]), str(batch["reason"][j]))


def _extract_modality(
    ray: Any,
    catalog: Catalog,
    spec: str,
    store: FeatureStore,
    modality: str,
    *,
    use_gpu: bool,
    actors: int,
    batch_size: int,
    part_size: int,
) -> ModalitySummary:
    t0 = time.perf_counter()
    desc = ray.get(ray.remote(_describe).options(num_gpus=0).remote(spec, modality))
    store.register_encoder(desc["fingerprint"], desc["info"])
    key = FeatureSetKey(catalog.name, desc["fingerprint"], modality)
    keys = catalog.content_keys(modality)
    summary = ModalitySummary(
        modality=modality,
        encoder=desc["spec"],
        fingerprint=key.fingerprint,
        weights=desc["weights"],
        random_init=desc["random_init"],
        dim=desc["dim"],
        items=catalog.num_items,
        with_content=len(keys),
        batch_size=batch_size,
        num_workers=actors,
        device="cuda (ray)" if use_gpu else "cpu (ray)",
        precision="bf16/fp16 autocast" if use_gpu else desc["precision"],
        backend=torch_label(),
        backend_reason="Ray actors run torch",
    )
    summary.record_no_content(catalog.items)
    todo = todo_keys(store, key, keys)
    summary.skipped = int(len(keys) - len(todo))

    writer = PartWriter(store, key, part_size, 60.0, None)
    writer.backend = summary.backend  # Ray actors run the encoder on torch
    t_enc = time.perf_counter()
    if len(todo):
        frame = _work_frame(catalog.items, todo, modality, catalog.meta.get("image_cache"))
        # streaming: parts are written while later batches are still being encoded
        for batch in _embedded_batches(
            ray, frame, spec, modality, use_gpu=use_gpu, actors=actors, batch_size=batch_size
        ):
            _take_batch(writer, summary, batch)
        writer.flush()
    return finish_modality(summary, writer, store, key, keys, t_enc, t0)
