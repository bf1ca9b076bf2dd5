"""``make bench-sparse-defaults``'s movielens catalog: a seeded random subset of the real
interactions at density 0.2% (interactions / (users x items)), the same every time."""

from __future__ import annotations

from benchmarks.bench_sparse_defaults import DENSITY, ML_SPARSE, SparseMovieLens, markdown, sparse_subset
from pipeline.data.importers.movielens import MovieLensImporter


def test_the_sparse_movielens_catalog_is_a_seeded_subset_at_0_2_percent(datasets_root):
    importer = SparseMovieLens()
    result = importer.run(importer.options(root=str(datasets_root / "movielens-100k-posters"), verify=False))
    cat = result.catalog
    density = len(cat.interactions) / (cat.num_users * cat.num_items)
    assert cat.name == ML_SPARSE and cat.num_items == 1682  # every movie stays an item
    assert DENSITY <= density < DENSITY * 1.001, density  # the shortest prefix that reaches 0.2%
    assert len(cat.interactions) == 2_335 and cat.num_users == 694 and cat.meta["subset"]["seed"] == 2024

    full = MovieLensImporter().run(importer.options(root=str(datasets_root / "movielens-100k-posters"), verify=False))
    pairs = set(zip(full.catalog.interactions["user_id"], full.catalog.interactions["item_id"]))
    assert set(zip(cat.interactions["user_id"], cat.interactions["item_id"])) <= pairs  # a subset of the real ones
    inter = full.catalog.interactions[["user_id", "item_id", "rating", "timestamp"]]
    again = sparse_subset(inter, 1682, DENSITY, 2024)
    assert again.equals(sparse_subset(inter, 1682, DENSITY, 2024))  # seeded
    assert not again.equals(sparse_subset(inter, 1682, DENSITY, 7))


def test_the_table_marks_runs_below_mostpop_as_left_out():
    row = {
        "dataset": "tiktok",
        "run": "lightgcn",
        "mostpop_valid": 0.05,
        "mostpop_test": 0.05,
        "default_valid": 0.04,
        "default_test": 0.04,
        "fit_valid": 0.049,
        "fit_test": 0.05,
        "winner": "lr=0.005",
        "trials": 3,
    }
    md = markdown([row], "header")
    assert "| tiktok | lightgcn | 0.0500 / 0.0500 | 0.0400 / 0.0400 | 0.0490 / 0.0500 | lr=0.005 (3) |" in md
    assert md.endswith("no / no (left out of recommend) |")
