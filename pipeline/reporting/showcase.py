"""The report's "Recommendations" section: a few users' top-10 next to their history.

Reads what the recommend step wrote into the pipeline folder (``recommendations.parquet``
and its manifest) and the catalog it names. For ``USERS`` users (the first ones in the
file, so the choice is stable across nightly runs) it lists their latest interactions and
their top-10 by title, and draws ``recommendations.png``: one row of posters per user,
history on the left, recommendations on the right, where the catalog has images (a title
card where an item has none or its image cannot be read).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from pipeline.data.catalog import Catalog
from pipeline.data.image_modes import to_rgb
from pipeline.data.importers.images import read_image_bytes
from pipeline.data.versions import is_ingested
from pipeline.reporting.common import markdown_table, pyplot, save_figure

USERS = 3
HISTORY = 5
TOP = 10
FIGURE = "recommendations.png"


def _first_users(path: Path, n: int) -> pd.DataFrame:
    """Rows of the first ``n`` users in the file, read batch by batch (the file may be large)."""
    frames, users = [], []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        frame = batch.to_pandas()
        for user in frame["user_id"].unique():
            if user not in users:
                users.append(user)
        frames.append(frame)
        if len(users) > n:
            break
    rows = pd.concat(frames, ignore_index=True)
    return rows[rows["user_id"].isin(users[:n]) & (rows["rank"] <= TOP)]


def _poster(ref: Any) -> Any:
    if not isinstance(ref, str) or not ref:
        return None
    try:
        with Image.open(io.BytesIO(read_image_bytes(ref))) as img:
            img = to_rgb(img)
            img.thumbnail((120, 180))
            return img.copy()
    except Exception:  # noqa: BLE001 - a poster that cannot be read is drawn as a title card
        return None


def _draw(
    users: list[str], history: dict[str, list[str]], top: dict[str, list[str]], items: pd.DataFrame, out: Path
) -> Path | None:
    if not items["image"].notna().any():
        return None
    plt = pyplot()
    cols = HISTORY + 1 + TOP
    fig, axes = plt.subplots(len(users), cols, figsize=(cols * 1.1, len(users) * 1.9), squeeze=False)
    for r, user in enumerate(users):
        cells = history[user][:HISTORY] + [None] * (HISTORY - len(history[user][:HISTORY])) + [None] + top[user][:TOP]
        for c, item in enumerate(cells):
            ax = axes[r][c]
            ax.axis("off")
            if item is None:
                continue
            row = items.loc[item]
            img = _poster(row["image"])
            if img is not None:
                ax.imshow(img)
            else:
                ax.text(0.5, 0.5, str(row["title"])[:40], ha="center", va="center", wrap=True, fontsize=6)
            ax.set_title(str(row["title"])[:18], fontsize=5)
        axes[r][0].text(-0.1, 0.5, f"user {user}", transform=axes[r][0].transAxes, ha="right", va="center", fontsize=7)
    axes[0][0].text(0, 1.35, "latest history", transform=axes[0][0].transAxes, fontsize=8)
    axes[0][HISTORY + 1].text(0, 1.35, f"top-{TOP} recommended", transform=axes[0][HISTORY + 1].transAxes, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def recommendations_section(folder: str | Path) -> str:
    """Markdown for the section (and ``recommendations.png``), or "" when the folder has no recommendations."""
    folder = Path(folder)
    path = folder / "recommendations.parquet"
    if not path.exists() or not path.with_suffix(".json").exists():
        return ""
    manifest = json.loads(path.with_suffix(".json").read_text())
    rows = _first_users(path, USERS)
    users = list(dict.fromkeys(rows["user_id"]))
    lines = [
        "## Recommendations",
        "",
        f"Top-{manifest['k']} for {manifest['users']} users from **{manifest['model']}** "
        f"(adapter {manifest['adapter']}), in `{path.name}` (manifest `{path.with_suffix('.json').name}`); "
        f"seen items excluded: {manifest['seen_excluded']}. Read it with "
        f"`duckdb -c \"SELECT * FROM '{path}' WHERE user_id = '{users[0] if users else ''}' ORDER BY rank\"`.",
        "",
    ]
    catalog_dir = manifest.get("catalog_dir")
    if not users or not catalog_dir or not is_ingested(catalog_dir):
        return "\n".join(lines) + "\n"
    catalog = Catalog.load(catalog_dir)
    items = catalog.items.set_index("item_id")
    inter = catalog.interactions.sort_values(["timestamp", "item_idx"], ascending=False)
    history = {u: inter[inter["user_id"] == u]["item_id"].head(HISTORY).tolist() for u in users}
    top = {u: rows[rows["user_id"] == u].sort_values("rank")["item_id"].tolist() for u in users}
    table = [
        (
            u,
            "; ".join(str(items.loc[i, "title"]) for i in history[u]),
            "; ".join(str(items.loc[i, "title"]) for i in top[u]),
        )
        for u in users
    ]
    lines += markdown_table(["user", f"latest {HISTORY} interactions", f"top-{TOP}"], table)
    figure = _draw(users, history, top, items, folder / FIGURE)
    if figure is not None:
        lines += ["", f"![recommendations]({figure.name})"]
    return "\n".join(lines) + "\n"
