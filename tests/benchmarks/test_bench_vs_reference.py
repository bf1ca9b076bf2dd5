"""The reference comparison benchmark: its recorded figures and its verdicts (no timing here)."""

from __future__ import annotations

import re

import pytest

from benchmarks import bench_vs_reference as bench

NAMES = {"lightgcn": "LightGCN", "bm3": "BM3", "freedom": "FREEDOM", "mgcn": "MGCN", "lattice": "LATTICE"}
DOC_LINE = {"movielens": "movielens-100k-posters, 1 thread:", "amazon-baby": "amazon-baby-5core, 2 threads:"}


def test_docstring_records_every_reference_figure_the_code_uses():
    lines = [x.strip() for x in bench.__doc__.splitlines()]
    for dataset, figures in bench.REFERENCE_S.items():
        line = next(x for x in lines if x.startswith(DOC_LINE[dataset]))
        for model, seconds in figures.items():
            assert re.search(rf"{NAMES[model]}\s+{seconds:g}\b", line), (dataset, model, line)


def test_speedup_verdicts():
    assert bench.speedup_cell(10.0, 2.5) == "4.0x UNDER 5x"
    assert bench.speedup_cell(10.0, 2.0) == "5.0x ok"
    assert bench.speedup_cell(10.0, 0.5) == "20.0x goal"
    assert bench.speedup_cell(None, 1.0) == "- (no reference)"


def test_unknown_catalog_is_refused_with_the_flag_named():
    with pytest.raises(SystemExit, match="--datasets: unknown"):
        bench.main(["--datasets", "movielens,tmall"])


def test_table_prints_targets_and_errors(capsys):
    rows = [
        {"dataset": "amazon-baby", "model": "mgcn", "threads": 2, "base_s": 8.0, "befa_s": 9.0, "befa_ratio": 1.125},
        {"dataset": "movielens", "model": "lightgcn", "threads": 1, "base_s": 0.1},
        {"dataset": "movielens", "error": "boom"},
    ]
    bench.print_table(rows)
    out = capsys.readouterr().out
    assert "3.0x UNDER 5x" in out and "1.12 ok" in out and "38.4x goal" in out and "ERROR: boom" in out
