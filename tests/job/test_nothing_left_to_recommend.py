"""A catalog where every user has interacted with every item: nothing is left to recommend,
and the pipeline says so in its log and report instead of crashing in the report step
(pandas' "No objects to concatenate" before)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pipeline.job.run import run_pipeline
from pipeline.settings import get_settings


def test_every_item_seen_gives_an_empty_file_and_a_report_that_says_so(tmp_path):
    n_users, n_items = 12, 6
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": [f"item {i}" for i in range(n_items)]})
    events = pd.DataFrame(
        [(f"u{u}", f"i{i}", u * 100 + i) for u in range(n_users) for i in range(n_items)],
        columns=["user_id", "item_id", "timestamp"],
    )
    items.to_csv(tmp_path / "items.csv", index=False)
    events.to_csv(tmp_path / "events.csv", index=False)
    lines: list[str] = []
    result = run_pipeline(
        {
            "dataset": "full",
            "importer": "generic",
            "ingest_options": {"items": str(tmp_path / "items.csv"), "interactions": str(tmp_path / "events.csv")},
            "encoder": "text=imagebind:tiny@random",
            "models": ["mostpop"],
            "adapters": ["none"],
        },
        get_settings(home=tmp_path / "home"),
        log=lines.append,
    )
    recs = result.recommendations
    assert recs.users == n_users and recs.rows == 0 and pq.read_table(recs.path).num_rows == 0
    assert any("(no rows: nothing left to recommend, every user has seen every item)" in line for line in lines)
    report = Path(result.report.report_md).read_text()
    assert "## Recommendations" in report
    assert (
        "**Nothing left to recommend**: the file has no row for any user "
        "(each has already interacted with every item it could be given)." in report
    )
