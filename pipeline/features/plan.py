"""What an extraction has to do before any encoding: the (item, content hash) keys the store
lacks, the modalities the store already holds in full (committed and summarised without
loading their encoder: a rerun on an unchanged catalog builds no encoder at all), and the
encoders to build for the rest.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from encoders.base import Encoder, check_modalities
from encoders.registry import create_encoders, resolve_specs
from encoders.spec import EncoderSpec
from pipeline.data.catalog import Catalog
from pipeline.features.encoder_cache import known_fingerprint, remember_fingerprint
from pipeline.features.summary import ModalitySummary
from storage.feature_store import FeatureStore
from storage.keys import ENCODED_MODALITIES, FeatureSetKey


def todo_keys(store: FeatureStore, key: FeatureSetKey, keys: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``keys`` (item_id, content_hash, item_idx) the store has no vector for yet."""
    existing = store.existing_keys(key)
    pairs = zip(keys["item_id"].tolist(), keys["content_hash"].tolist())
    todo = np.fromiter(((i, h) not in existing for i, h in pairs), dtype=bool, count=len(keys))
    return keys[todo]


def resolve_encoders(
    encoder_or_spec: Any, modalities: Sequence[str] | None, device: torch.device
) -> dict[str, Encoder]:
    if isinstance(encoder_or_spec, Encoder):
        wanted = list(modalities) if modalities is not None else list(encoder_or_spec.modalities)
        check_modalities(encoder_or_spec.family, wanted, encoder_or_spec.modalities)
        encoders = {m: encoder_or_spec for m in ENCODED_MODALITIES if m in wanted}
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


def _built(encoder_or_spec: Any) -> bool:
    """An Encoder, or a mapping of them: already built, nothing to save by looking first."""
    if isinstance(encoder_or_spec, Encoder):
        return True
    return (
        isinstance(encoder_or_spec, Mapping)
        and bool(encoder_or_spec)
        and all(isinstance(v, Encoder) for v in encoder_or_spec.values())
    )


def without_encoders(
    catalog: Catalog, store: FeatureStore, specs: Mapping[str, EncoderSpec], device: torch.device
) -> dict[str, ModalitySummary]:
    """Modalities whose spec built a fingerprint the store knows and whose every current
    (item, content hash) the store holds: committed and summarised without loading the encoder."""
    out: dict[str, ModalitySummary] = {}
    for modality, spec in specs.items():
        known = known_fingerprint(store, spec)
        if known is None:
            continue
        t0 = time.perf_counter()
        fingerprint, info = known
        key = FeatureSetKey(catalog.name, fingerprint, modality)
        keys = catalog.content_keys(modality)
        if len(todo_keys(store, key, keys)):
            continue
        summary = ModalitySummary(
            modality=modality,
            encoder=str(spec),
            fingerprint=fingerprint,
            weights=str(info.get("weights_label") or info.get("weights") or ""),
            random_init=bool(info.get("random_init")),
            dim=int(info.get("dim") or 0),
            items=catalog.num_items,
            with_content=len(keys),
            device=str(device),
            precision="encoder not loaded: nothing to encode",
        )
        summary.record_no_content(catalog.items)
        summary.skipped = len(keys)
        snap = store.commit(key, keep=zip(keys["item_id"].tolist(), keys["content_hash"].tolist()))
        summary.snapshot_id, summary.snapshot_rows = snap.id, snap.num_rows
        summary.seconds = time.perf_counter() - t0
        out[modality] = summary
    return out


def encoders_to_run(
    catalog: Catalog, encoder_or_spec: Any, modalities: Sequence[str] | None, store: FeatureStore, device: torch.device
) -> tuple[dict[str, ModalitySummary], dict[str, Encoder]]:
    """(summaries of the modalities the store already holds in full, encoders for the others)."""
    specs = None if _built(encoder_or_spec) else resolve_specs(encoder_or_spec, modalities)
    summaries: dict[str, ModalitySummary] = without_encoders(catalog, store, specs, device) if specs else {}
    if specs is None:
        return summaries, resolve_encoders(encoder_or_spec, modalities, device)
    encoders = resolve_encoders({m: s for m, s in specs.items() if m not in summaries}, None, device)
    for modality, encoder in encoders.items():
        remember_fingerprint(store, specs[modality], encoder.fingerprint)
    return summaries, encoders
