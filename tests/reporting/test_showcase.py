"""The report's recommendation showcase: representative users (seeded, spread over history
lengths), item ids where titles repeat, and a poster grid whose pictures are legible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.ingest import ingest
from pipeline.reporting.showcase import (
    CELL_H,
    CELL_W,
    FIGURE,
    item_labels,
    pick_users,
    recommendations_section,
)
from pipeline.serving.ranked_files import write_pair
from pipeline.serving.ranked_lists import RECS_SCHEMA
from pipeline.settings import get_settings
from tests.flows_data import make_small_catalog


def test_users_are_picked_at_spread_quantiles_and_seeded():
    lengths = pd.Series(np.arange(1, 101), index=[f"u{i:03d}" for i in range(1, 101)])
    picked = pick_users(lengths, list(lengths.index))
    assert [q for _, q in picked] == pytest.approx([0.1, 0.5, 0.9])
    assert [int(lengths[u]) for u, _ in picked] == [11, 50, 90]  # nearest to 10.9, 50.5, 90.1 (ties drawn)
    assert pick_users(lengths, list(lengths.index)) == picked  # stable across runs
    # ties are drawn with the seed: many users share each length
    flat = pd.Series([1] * 50 + [5] * 50, index=[f"v{i:03d}" for i in range(100)])
    draws = {tuple(u for u, _ in pick_users(flat, list(flat.index), seed=s)) for s in range(6)}
    assert len(draws) > 1 and all(len(set(d)) == 3 for d in draws)
    # only users that have recommendations are candidates
    assert {u for u, _ in pick_users(lengths, ["u001", "u002", "u100"])} == {"u001", "u002", "u100"}


def test_titles_that_repeat_carry_the_item_id():
    items = pd.DataFrame(
        {"title": ["Strap top", "Strap top", "Denim jacket", None]}, index=["0108775015", "0108775044", "7", "8"]
    )
    assert item_labels(items).tolist() == ["Strap top [0108775015]", "Strap top [0108775044]", "Denim jacket", "[8]"]


@pytest.fixture
def folder(tmp_path, datasets_root):
    """A pipeline folder holding recommendations for a small catalog with real posters, where
    two items share a title (as colour variants do)."""
    cat = make_small_catalog(tmp_path / "src", datasets_root, n_items=30, n_users=120)
    items = pd.read_csv(cat.items, dtype=str)
    items.loc[1, "title"] = items.loc[0, "title"]
    items.to_csv(cat.items, index=False)
    settings = get_settings(home=tmp_path / "home")
    catalog, _ = ingest("generic", settings, name="shop", **cat.ingest_options())
    out = tmp_path / "pipe"
    out.mkdir()
    ids = catalog.items["item_id"].tolist()
    users = sorted(catalog.interactions["user_id"].astype(str).unique(), key=int)
    recs = pd.DataFrame(
        [(u, r + 1, ids[(int(u) + r) % len(ids)], 1.0 / (r + 1)) for u in users for r in range(20)],
        columns=RECS_SCHEMA.names,
    ).astype({"rank": "int32", "score": "float32"})
    manifest = {
        "kind": "recommendations", "k": 20, "users": len(users), "model": "lightgcn", "adapter": "none",
        "seen_excluded": "all", "catalog_dir": str(settings.catalog_dir("shop")),
    }  # fmt: skip
    write_pair(out / "recommendations.parquet", RECS_SCHEMA, iter([recs]), lambda rows: manifest)
    return out, catalog, users


def test_the_section_shows_representative_users_and_a_legible_grid(folder):
    out, catalog, users = folder
    md = recommendations_section(out)
    counts = catalog.interactions.groupby(catalog.interactions["user_id"].astype(str)).size()
    shown = [
        line.split(" | ")[0].strip("| ") for line in md.splitlines() if line.startswith("| ") and "---" not in line
    ]
    shown = shown[1:]  # the header row
    assert len(shown) == 3 and shown != users[:3]
    lengths = [int(counts[u]) for u in shown]
    assert lengths == sorted(lengths) and lengths[0] < counts.median() < lengths[-1]  # low, middle, high
    twin = catalog.items["title"].iloc[0]
    assert f"{twin} [{catalog.items['item_id'].iloc[0]}]" in md or f"{twin} [{catalog.items['item_id'].iloc[1]}]" in md
    png = Image.open(out / FIGURE)
    # cells of about 1.5 x 2.3 inches at 100 dpi: a poster ~150 px wide, not ~20
    assert CELL_W * 100 >= 150 and CELL_H * 100 >= 220
    assert png.size[0] >= 10 * CELL_W * 100 and png.size[1] >= 3 * 2 * CELL_H * 100
    pixels = np.asarray(png.convert("L"), dtype=np.float32)
    # the first history poster's box (below the first header) is a picture, not blank paper
    top = int(0.45 * 100) + 5
    box = pixels[top : top + int(CELL_H * 100) - 10, 60 : 60 + int(CELL_W * 100) - 10]
    assert box.std() > 20
