"""Quality floor on the real default catalog: LightGCN must beat MostPop on VALID Recall@20.

movielens-100k-posters, ratings >= 4, the MMRec 8:1:1 random split (seed 2024), the
trainer as users run it (early stopping on valid Recall@20), with a short epoch budget
so the test stays small. The full comparison of every model, base and +BeFA, trained
to early stop is ``make bench-quality``.
"""

from __future__ import annotations

import pytest

from pipeline.data.ingest import ingest
from pipeline.data.splits import split_random
from pipeline.evaluation.metrics import SELECTION_METRIC
from pipeline.settings import get_settings
from pipeline.training.api import train_model


@pytest.fixture(scope="module")
def movielens(tmp_path_factory, datasets_root):
    home = tmp_path_factory.mktemp("floor")
    settings = get_settings(home=home, datasets_root=datasets_root)
    catalog, _ = ingest("movielens-100k-posters", settings)
    return catalog, split_random(catalog, seed=2024), home


def test_lightgcn_beats_mostpop_on_valid_recall(movielens):
    catalog, split, home = movielens
    pop = train_model(catalog, split, None, "mostpop", run_dir=home / "mostpop", quiet=True, num_threads=1)
    gcn = train_model(
        catalog,
        split,
        None,
        "lightgcn",
        {"lr": 5e-3},
        run_dir=home / "lightgcn",
        max_epochs=12,
        patience=3,
        quiet=True,
        num_threads=1,
    )
    pop_valid = pop.valid_metrics[SELECTION_METRIC]
    gcn_valid = gcn.valid_metrics[SELECTION_METRIC]
    print(f"valid R@20: MostPop {pop_valid:.4f}, LightGCN {gcn_valid:.4f} (best epoch {gcn.record.best_epoch})")
    assert 0.05 < pop_valid < 0.5, pop_valid  # MostPop is a real, non-trivial floor here
    assert gcn_valid > 1.1 * pop_valid, (gcn_valid, pop_valid)
    # selection used valid only; the test metrics come from the same best epoch
    assert gcn.record.best_epoch == max(gcn.record.epochs, key=lambda e: e.valid[SELECTION_METRIC]).epoch
