"""Progress as plain lines for logs where a bar does not show (a Prefect task's log, a file)."""

from __future__ import annotations

import pandas as pd

from pipeline.data.catalog import build_catalog
from pipeline.features.extract import extract_features
from pipeline.features.progress import ProgressLines
from storage.feature_store import FeatureStore


def test_lines_say_done_total_rate_and_eta():
    said: list[str] = []
    lines = ProgressLines(10, "extract text (fp)", said.append, every_s=0.0, unit="texts")
    lines.update(4)
    assert said[0].startswith("extract text (fp): 4/10 (40%), ") and " texts/s" in said[0] and ", ETA " in said[0]
    lines.update(6)
    lines.close()
    assert (
        said[-1].startswith("extract text (fp): 10/10 (100%), ") and ", done in " in said[-1] and "ETA" not in said[-1]
    )


def test_extraction_logs_a_closing_line_per_modality(tmp_path):
    items = pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(6)], "title": "", "text": [f"a short text {i}" for i in range(6)]}
    )
    inter = pd.DataFrame({"user_id": ["u0", "u1"], "item_id": ["i0", "i1"], "rating": 1.0, "timestamp": 0})
    catalog = build_catalog("tiny", items, inter)
    said: list[str] = []
    extract_features(
        catalog,
        "imagebind:tiny@random",
        FeatureStore(tmp_path / "store"),
        modalities=["text"],
        progress=False,
        log=said.append,
    )
    assert len(said) == 1 and said[0].startswith("extract text (imagebind-tiny-random-") and ": 6/6 (100%)" in said[0]
    said.clear()
    extract_features(
        catalog,
        "imagebind:tiny@random",
        FeatureStore(tmp_path / "store"),
        modalities=["text"],
        progress=False,
        log=said.append,
    )
    assert said == []  # nothing left to encode: no progress to report
