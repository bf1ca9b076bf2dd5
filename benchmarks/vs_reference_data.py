"""The data both sides of ``make bench-vs-reference`` train on: one catalog, one split, one set
of features, read by befa from its store and by the reference from ``befa export-mmrec``'s files.

- Catalog: befa's ``movielens-100k-posters`` (ratings >= 4), ingested once into the
  benchmark's own ``BEFA_HOME`` (``--home``, default ``bench-results/vs-reference/home``);
  the datasets root comes from ``BEFA_DATASETS_ROOT`` as everywhere.
- Split: the seeded MMRec-style random 8:1:1 split ``random-s<seed>`` (``--split-seed``, 2024).
- Features (``--features``):
  - ``real``: befa's default encoders, EfficientNet-Lite2 posters (1280-d) and MiniLM texts
    (384-d), extracted into the benchmark home's store. Several minutes the first time on
    a 2-core machine; the store is incremental, so later runs reuse them.
  - ``random``: seeded standard-normal rows of the same widths (1280 and 384) for the items
    that have a poster / a text, written into the same store under their own fingerprints
    (``bench-random-<modality>-<dim>-s<seed>``, registered as random). Seconds; speed only.
- Export: ``befa export-mmrec`` (the CLI, as a user would run it) writes the catalog, split
  and features into ``<work>/data/<catalog>/``, the folder layout the reference reads
  (``data_path`` + dataset name). Items without a feature get the mean row there, as in
  befa's training.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CATALOG = "movielens-100k-posters"
REAL_ENCODER = "image=effnet:lite2,text=minilm"
RANDOM_DIMS = {"image": 1280, "text": 384}  # EfficientNet-Lite2's and MiniLM's widths
FEATURE_LABELS = {
    "real": "EfficientNet-Lite2 posters (1280-d) + MiniLM texts (384-d), befa's default encoders",
    "random": "SEEDED RANDOM 1280-d image + 384-d text rows (the real encoders' widths): speed only",
}


@dataclass(frozen=True)
class BenchData:
    """What both sides read: befa's home, catalog, split and fingerprints; the reference's folder."""

    home: Path
    catalog: str
    split: str
    fingerprints: dict[str, str]
    data_dir: Path  # the reference's data_path; the files are in data_dir / catalog
    features: str  # "real" or "random"
    export: str  # what befa export-mmrec printed


def _catalog_and_split(settings, split_seed: int):
    from pipeline.data.catalog import Catalog
    from pipeline.data.ingest import ingest
    from pipeline.data.splits import split_random
    from pipeline.data.versions import is_ingested

    folder = settings.catalog_dir(CATALOG)
    catalog = Catalog.load(folder) if is_ingested(folder) else ingest(CATALOG, settings)[0]
    split = split_random(catalog, seed=split_seed)
    if not (catalog.splits_dir / f"{split.name}.parquet").exists():
        split.save(catalog.splits_dir)
    return catalog, split.name


def random_fingerprints(catalog, store, seed: int) -> dict[str, str]:
    """Seeded random rows of :data:`RANDOM_DIMS` for every item with content, stored once."""
    from storage.keys import FeatureSetKey

    fps = {}
    for i, (modality, dim) in enumerate(RANDOM_DIMS.items()):
        fp = f"bench-random-{modality}-{dim}-s{seed}"
        store.register_encoder(
            fp,
            {"random_init": True, "weights": "none: seeded standard-normal rows", "dim": dim, "source": "benchmark"},
        )
        keys = catalog.content_keys(modality)
        rows = np.random.default_rng([seed, i]).standard_normal((len(keys), dim)).astype(np.float32)
        key = FeatureSetKey(catalog.name, fp, modality)
        store.upsert(key, keys["item_id"].tolist(), keys["content_hash"].tolist(), rows)
        fps[modality] = fp
    return fps


def real_fingerprints(catalog, store) -> dict[str, str]:
    """befa's default encoders' fingerprints, extracting what the store lacks (CPU)."""
    from pipeline.features.load import features_for_training

    bundle = features_for_training(catalog, REAL_ENCODER, store, device="cpu", progress=False)
    return dict(bundle.fingerprints)


def export(settings, split: str, fingerprints: dict[str, str], data_dir: Path) -> str:
    """``befa export-mmrec`` into ``data_dir / CATALOG``; returns its output."""
    befa = Path(sys.executable).with_name("befa")
    cmd = [str(befa), "export-mmrec", CATALOG, "--split", split, "--dest", str(data_dir / CATALOG)]
    for modality, fp in fingerprints.items():
        cmd += ["--fp", f"{modality}={fp}"]
    cmd += ["--home", str(settings.home), "--feature-store", str(settings.feature_store)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"befa export-mmrec failed (exit {proc.returncode}): {tail}")
    return proc.stdout.strip()


def prepare(home: Path, features: str, split_seed: int, feature_seed: int, data_dir: Path, log=print) -> BenchData:
    """Ingest (once), split (once), features (once per kind), then export for the reference."""
    from pipeline.settings import get_settings
    from storage.feature_store import FeatureStore

    settings = get_settings(home=home)
    catalog, split = _catalog_and_split(settings, split_seed)
    store = FeatureStore(settings.feature_store)
    if features == "real":
        log(f"features: {REAL_ENCODER} into {settings.feature_store} (the first time: several minutes)")
        fps = real_fingerprints(catalog, store)
    else:
        fps = random_fingerprints(catalog, store, feature_seed)
    out = export(settings, split, fps, data_dir)
    return BenchData(settings.home, CATALOG, split, fps, data_dir, features, out)
