"""Negative ratings (dislikes) are not kept as positive interactions by the generic importer:
dropped, counted in the ingest report and said in its warnings; ``--keep-negative-ratings``
(or a negative ``--min-rating``) keeps them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.data.ingest import ingest
from pipeline.settings import get_settings

# user, item, rating: two dislikes (-1, -2), a zero (kept: not negative) and likes
EVENTS = [("u1", "i0", 5), ("u1", "i1", -1), ("u2", "i1", 3), ("u2", "i2", -2), ("u3", "i2", 0), ("u3", "i0", 4)]


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    items = pd.DataFrame({"item_id": ["i0", "i1", "i2"], "title": ["a", "b", "c"], "text": ["x a", "x b", "x c"]})
    events = pd.DataFrame(EVENTS, columns=["user_id", "item_id", "rating"])
    items.to_csv(tmp_path / "items.csv", index=False)
    events.to_csv(tmp_path / "events.csv", index=False)
    return {"items": tmp_path / "items.csv", "interactions": tmp_path / "events.csv"}


def _pairs(catalog) -> set[tuple[str, str, float]]:
    return {(u, i, float(r)) for u, i, r in catalog.interactions[["user_id", "item_id", "rating"]].itertuples(False)}


def test_negative_ratings_are_dropped_counted_and_warned(tmp_path, files):
    settings = get_settings(home=tmp_path / "home")
    catalog, report = ingest("generic", settings, name="shop", **files)
    assert _pairs(catalog) == {("u1", "i0", 5.0), ("u2", "i1", 3.0), ("u3", "i2", 0.0), ("u3", "i0", 4.0)}
    assert report.counts_out["negative_ratings_dropped"] == 2
    (warning,) = [w for w in report.warnings if "negative rating" in w]
    assert (
        str(files["interactions"]) in warning and "2 interactions" in warning and "--keep-negative-ratings" in warning
    )
    assert "negative_ratings_dropped | " in report.to_markdown()  # in ingest_report.md's counts too

    kept, report = ingest("generic", settings, name="shop", keep_negative_ratings=True, **files)
    assert len(kept.interactions) == len(EVENTS) and "negative_ratings_dropped" not in report.counts_out
    assert any(
        "2 interactions with a negative rating kept as interactions (--keep-negative-ratings)" in n
        for n in report.notes
    )

    # a negative --min-rating says which dislikes to keep
    some, report = ingest("generic", settings, name="shop", min_rating=-1.5, **files)
    assert ("u1", "i1", -1.0) in _pairs(some) and ("u2", "i2", -2.0) not in _pairs(some)
    assert report.counts_out["ratings_below_min_rating"] == 1


def test_befa_ingest_says_so_and_takes_the_flag(tmp_path, files):
    env = {"BEFA_HOME": str(tmp_path / "home")}
    args = [
        "ingest",
        "generic",
        "--as",
        "shop",
        "--items",
        str(files["items"]),
        "--interactions",
        str(files["interactions"]),
    ]
    res = CliRunner().invoke(app, args, env=env)
    out = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "negative_ratings_dropped" in out and "2 interactions with a negative rating" in out
    res = CliRunner().invoke(app, [*args, "--keep-negative-ratings"], env=env)
    assert res.exit_code == 0 and "kept as interactions (--keep-negative-ratings)" in " ".join(res.output.split())
