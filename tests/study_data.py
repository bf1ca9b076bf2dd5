"""A tiny BeFA study for tests: 40 movies x 200 users cut from movielens-100k-posters,
a tiny random ImageBind (image and text), embedding 8, 2 epochs, 2 seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.summary import DatasetSummary, SplitSummary
from pipeline.settings import get_settings
from pipeline.study.params import StudyParams
from pipeline.study.report.tables import StudyData
from pipeline.study.rows import GainRow, SignificanceRow
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


def gain_row(model: str, metric: str, relative_gain: float) -> GainRow:
    """A study gain row with only the relative gain mattering (verdict tests)."""
    return GainRow(
        model=model,
        metric=metric,
        base_mean=0.1,
        base_std=0.0,
        befa_mean=0.1 * (1 + relative_gain),
        befa_std=0.0,
        seeds=1,
        relative_gain=relative_gain,
    )


def sig_row(model: str, metric: str, mean_diff: float, significant: bool) -> SignificanceRow:
    """A study significance row with only the direction and the decision mattering (verdict tests)."""
    return SignificanceRow(
        model=model,
        metric=metric,
        pooling="user_mean",
        n_pairs=10,
        n_nonzero=10,
        n_seeds=1,
        mean_base=0.1,
        mean_befa=0.1 + mean_diff,
        mean_diff=mean_diff,
        t_stat=None,
        p_ttest=None,
        w_stat=None,
        p_wilcoxon=0.01 if significant else 0.5,
        wins=5,
        losses=5,
        significant=significant,
    )


def study_data(**fields: Any) -> StudyData:
    """A study report's input with placeholder catalog, split and parameters (report tests)."""
    return StudyData(
        title=fields.pop("title", "t"),
        params=StudyParams(models=["freedom"], seeds=[1]),
        dataset=DatasetSummary(name="shop", fingerprint="f", num_users=10, num_items=20, num_interactions=99),
        split=SplitSummary(path="s.parquet", id="random-s1", kind="random", seed=1, k_core=None, counts={"train": 80}),
        **fields,
    )
