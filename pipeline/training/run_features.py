"""The exact features a trained run used, read back from the store by its run record.

Training, evaluation, serving and ``befa train --resume`` call :func:`load_run_features`:
a run record names the fingerprint and snapshot of each modality it trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.data.catalog import Catalog
from pipeline.features.bundle import FeatureBundle
from pipeline.features.load import load_features
from pipeline.training.record import LEGACY_FEATURES, RunRecord
from storage.feature_store import FeatureStore


def load_run_features(
    record: RunRecord, store: FeatureStore, run_dir: str | Path | None = None
) -> FeatureBundle | None:
    """The exact features a run trained on (its recorded fingerprints and snapshots), or None
    when it used none. Runs from before record version 2 kept them in ``features.json``."""
    catalog_dir = record.sources.get("catalog")
    sets = {m: s for m, s in record.feature_sets.items() if s.get("fingerprint")}
    if not sets and run_dir is not None and (Path(run_dir) / LEGACY_FEATURES).exists():
        legacy = json.loads((Path(run_dir) / LEGACY_FEATURES).read_text())
        catalog_dir = catalog_dir or legacy.get("catalog_dir")
        sets = {
            m: {"fingerprint": fp, "snapshot": legacy.get("snapshots", {}).get(m)}
            for m, fp in legacy.get("fingerprints", {}).items()
        }
    if not sets:
        return None
    if catalog_dir is None:
        raise ValueError("the run did not record its catalog folder, so its features cannot be found")
    catalog = Catalog.load(catalog_dir)
    return load_features(
        catalog,
        store,
        {m: s["fingerprint"] for m, s in sets.items()},
        snapshots={m: s["snapshot"] for m, s in sets.items() if s.get("snapshot")},
        as_recorded=True,
    )
