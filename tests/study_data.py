"""A tiny BeFA study for tests: 40 movies x 200 users cut from movielens-100k-posters,
a tiny random ImageBind (image and text), embedding 8, 2 epochs, 2 seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.settings import get_settings
from pipeline.study.run import run_study
from tests.flows_data import make_small_catalog

TINY_ENCODER = "imagebind:tiny@random"


def tiny_study_params(cat, **changes: Any) -> dict[str, Any]:
    params = {
        "name": "tiny",
        "dataset": "ml-small",
        "importer": "generic",
        "ingest_options": cat.ingest_options(),
        "encoder": TINY_ENCODER,
        "models": ["bm3", "lattice", "freedom", "mgcn"],
        "seeds": [1, 2],
        "epochs": 2,
        "patience": 1,
        "max_trials": 2,
        "model_overrides": {"*": {"embedding_dim": 8}},
        "befa_grid": {"befa.t": [0.5, 2.0]},
        "focus_model": "freedom",
        "sweep_t": [0.25, 1.0, 4.0],
        "train_fractions": [1.0, 0.5],
        "inspect_items": 6,
        "inspect_users": 3,
        "num_threads": 1,
    }
    params.update(changes)
    return params


def run_tiny_study(root: Path, datasets_root: Path, **changes: Any):
    cat = make_small_catalog(root / "source", datasets_root)
    settings = get_settings(home=root / "home", datasets_root=datasets_root)
    return cat, settings, run_study(tiny_study_params(cat, **changes), settings)
