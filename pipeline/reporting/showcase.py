"""The report's "Recommendations" section: a few users' top-10 next to their history.

Reads what the recommend step wrote into the pipeline folder (``recommendations.parquet``
and its manifest), the run record it names (for the split the run trained on) and the
catalog. The users shown are representative, not the first ids in the file (those are
often the ones with the fewest interactions and the worst lists): ``USERS`` users picked
at spread quantiles (10%, 50%, 90% for three) of the number of train interactions per
user, a seeded draw among the users nearest each quantile, so the choice is stable across
nightly runs of the same data. For each it lists their latest interactions and their
top-10, an item's title followed by its id where several items share the title (colour
variants of one product), and draws ``recommendations.png``: per user a row of history
posters and a row of recommended ones, each about 1.5 inch (150 px) wide with its caption
below (a title card where an item has no image or its image cannot be read).
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from pipeline.data.catalog import Catalog
from pipeline.data.image_modes import to_rgb
from pipeline.data.importers.images import read_image_bytes
from pipeline.data.splits import TRAIN, Split
from pipeline.data.versions import is_ingested
from pipeline.reporting.common import markdown_table, pyplot, save_figure
from pipeline.serving.ranked_files import PairMismatch, read_manifest
from pipeline.training.record import RunRecord

USERS = 3
HISTORY = 5
TOP = 10
SEED = 2024
FIGURE = "recommendations.png"
# the poster grid, in inches at 100 dpi: a cell holds a 2:3 poster about 150 px wide
CELL_W, CELL_H, CAPTION_H, GAP_W = 1.55, 2.3, 0.5, 0.12
LEFT, RIGHT, HEADER_H, USER_GAP = 0.55, 0.15, 0.45, 0.25


@dataclass(frozen=True)
class ShownUser:
    """One user of the showcase: why picked, what they had, what they got."""

    user_id: str
    train_items: int
    quantile: float  # the quantile of train interactions per user it was picked at
    history: list[str]  # latest interactions first
    top: list[str]  # rank order


def history_lengths(run_record: str | Path | None, catalog: Catalog) -> tuple[pd.Series, str]:
    """Interactions per user (by user_id) in the split the run (its ``run.json``) trained on,
    and what was counted; the catalog's interactions when the run's split cannot be read."""
    users = catalog.interactions.drop_duplicates("user_idx").set_index("user_idx")["user_id"].astype(str)
    try:
        split_path = RunRecord.load(Path(run_record).parent).sources.get("split") if run_record else None
        train = Split.load(split_path).part(TRAIN) if split_path else None
    except (OSError, ValueError):
        train = None
    if train is None:
        return catalog.interactions.groupby(catalog.interactions["user_id"].astype(str)).size(), "interactions"
    counts = train.groupby("user_idx").size()
    return pd.Series(counts.to_numpy(), index=users.reindex(counts.index).to_numpy()), "train interactions"


def pick_users(lengths: pd.Series, candidates: list[str], n: int = USERS, seed: int = SEED) -> list[tuple[str, float]]:
    """``n`` of ``candidates`` spread over ``lengths`` (interactions per user): at each of ``n``
    quantiles from 10% to 90%, a seeded draw among the users nearest it; (user, quantile)."""
    pool = lengths[lengths.index.isin(set(candidates))].sort_index()
    if pool.empty:
        return []
    rng = np.random.default_rng(seed)
    quantiles = np.linspace(0.1, 0.9, n) if n > 1 else np.array([0.5])
    picked: list[tuple[str, float]] = []
    for q in quantiles:
        left = pool.drop([u for u, _ in picked])
        if left.empty:
            break
        target = float(np.quantile(pool.to_numpy(), q))
        distance = (left - target).abs()
        nearest = sorted(distance.index[distance == distance.min()])
        picked.append((nearest[int(rng.integers(len(nearest)))], float(q)))
    return picked


def item_labels(items: pd.DataFrame) -> pd.Series:
    """Each item's title, with its id in brackets where several items share the title (or it has none)."""
    titles = items["title"].fillna("").astype(str).str.strip()
    ids = items.index.astype(str)
    shared = titles.duplicated(keep=False) | (titles == "")
    return titles.where(~shared, (titles + " [" + ids + "]").str.strip())


def _rows_of(path: Path, users: list[str]) -> pd.DataFrame:
    """The top-``TOP`` rows of ``users`` (a filtered read: the file may hold millions of rows)."""
    rows = pq.read_table(path, filters=[("user_id", "in", users), ("rank", "<=", TOP)]).to_pandas()
    return rows.assign(user_id=rows["user_id"].astype(str))


def _poster(ref: Any) -> Any:
    if not isinstance(ref, str) or not ref:
        return None
    try:
        with Image.open(io.BytesIO(read_image_bytes(ref))) as img:
            img = to_rgb(img)
            img.thumbnail((220, 330))  # drawn ~155 x 230 px: sharp, and a small PNG
            return img.copy()
    except Exception:  # noqa: BLE001 - a poster that cannot be read is drawn as a title card
        return None


def _caption(label: str, width: int = 22) -> str:
    """At most two lines of ``width`` characters, the second shortened with "..." when needed."""
    first, *rest = textwrap.wrap(label, width) or [""]
    return first + ("\n" + textwrap.shorten(" ".join(rest), width, placeholder="...") if rest else "")


def _cell(fig: Any, box: tuple[float, float, float, float], item: str, items: pd.DataFrame, labels: pd.Series):
    """One poster (or title card) in ``box`` (figure fractions) with its caption below."""
    ax = fig.add_axes(box)
    ax.axis("off")
    img = _poster(items.at[item, "image"]) if "image" in items.columns else None
    if img is not None:
        ax.imshow(img)
    else:
        ax.add_patch(pyplot().Rectangle((0.02, 0.02), 0.96, 0.96, transform=ax.transAxes, color="#eeeeee"))
        ax.text(0.5, 0.5, textwrap.fill(labels[item], 16), ha="center", va="center", fontsize=9, wrap=True)
    ax.text(0.5, -0.02, _caption(labels[item]), transform=ax.transAxes, ha="center", va="top", fontsize=8.5)


def draw_showcase(shown: list[ShownUser], items: pd.DataFrame, out: Path, counted: str = "train interactions"):
    """``recommendations.png``: per user a header, a row of history posters and a row of top-10
    posters, each laid out in inches (no automatic layout to overlap captions and headers)."""
    if not shown or "image" not in items.columns or not items["image"].notna().any():
        return None
    labels = item_labels(items)
    row_h = CELL_H + CAPTION_H
    width = LEFT + TOP * CELL_W + (TOP - 1) * GAP_W + RIGHT
    height = len(shown) * (HEADER_H + 2 * row_h + USER_GAP)
    fig = pyplot().figure(figsize=(width, height), dpi=100)
    y = height  # inches from the bottom, going down
    for user in shown:
        fig.text(
            LEFT / width,
            (y - 0.1) / height,
            f"user {user.user_id}: {user.train_items} {counted} (picked at the {user.quantile:.0%} quantile)",
            fontsize=12,
            fontweight="bold",
            va="top",
        )
        y -= HEADER_H
        for cells, what in ((user.history[:HISTORY], f"latest {HISTORY}"), (user.top[:TOP], f"top-{TOP}")):
            y -= CELL_H
            fig.text(0.2 / width, (y + CELL_H / 2) / height, what, rotation=90, va="center", ha="center", fontsize=10)
            for c, item in enumerate(cells):
                x = LEFT + c * (CELL_W + GAP_W)
                _cell(fig, (x / width, y / height, CELL_W / width, CELL_H / height), item, items, labels)
            y -= CAPTION_H
        y -= USER_GAP
    return save_figure(fig, out)


def showcase_users(path: Path, run_record: str | Path | None, catalog: Catalog) -> tuple[list[ShownUser], str]:
    """The users to show, with their history and top-10, and what their history length counts."""
    lengths, counted = history_lengths(run_record, catalog)
    served = pq.read_table(path, columns=["user_id"]).column("user_id").unique().to_pylist()
    picked = pick_users(lengths, [str(u) for u in served])
    rows = _rows_of(path, [u for u, _ in picked])
    inter = catalog.interactions.assign(user_id=catalog.interactions["user_id"].astype(str))
    inter = inter.sort_values(["timestamp", "item_idx"], ascending=False)
    shown = [
        ShownUser(
            user_id=u,
            train_items=int(lengths[u]),
            quantile=q,
            history=inter[inter["user_id"] == u]["item_id"].head(HISTORY).astype(str).tolist(),
            top=rows[rows["user_id"] == u].sort_values("rank")["item_id"].astype(str).tolist(),
        )
        for u, q in picked
    ]
    return shown, counted


def recommendations_section(folder: str | Path) -> str:
    """Markdown for the section (and ``recommendations.png``), or "" when the folder has no recommendations."""
    folder = Path(folder)
    path = folder / "recommendations.parquet"
    if not path.exists():
        return ""
    try:
        manifest = read_manifest(path)
    except PairMismatch as exc:  # a Parquet without its manifest, or the two from different writes
        return f"## Recommendations\n\nNot shown: {exc}\n"
    lines = [
        "## Recommendations",
        "",
        f"Top-{manifest['k']} for {manifest['users']} users from **{manifest['model']}** "
        f"(adapter {manifest['adapter']}), in `{path.name}` (manifest `{path.with_suffix('.json').name}`); "
        f"seen items excluded: {manifest['seen_excluded']}.",
        "",
    ]
    if manifest.get("rows") == 0:  # e.g. every user has seen every item: an empty file, nothing to show
        seen = manifest["seen_excluded"] not in ("none", False, None)
        why = " (each has already interacted with every item it could be given)" if seen else ""
        return "\n".join(lines + [f"**Nothing left to recommend**: the file has no row for any user{why}.", ""])
    catalog_dir = manifest.get("catalog_dir")
    if not catalog_dir or not is_ingested(catalog_dir):
        return "\n".join(lines) + "\n"
    catalog = Catalog.load(catalog_dir)
    shown, counted = showcase_users(path, manifest.get("run_record"), catalog)
    if not shown:
        return "\n".join(lines) + "\n"
    items = catalog.items.assign(item_id=catalog.items["item_id"].astype(str)).set_index("item_id")
    labels = item_labels(items)
    lines += [
        f"{len(shown)} users spread over the number of {counted} per user (the 10%, 50% and 90% quantiles "
        f"for three; a seeded draw, {SEED}, among the users nearest each), not the first ids in the file. "
        f"A title that several items share carries the item id in brackets. Read one user's list with "
        f"`duckdb -c \"SELECT * FROM '{path}' WHERE user_id = '{shown[0].user_id}' ORDER BY rank\"`.",
        "",
    ]
    table = [
        (
            u.user_id,
            f"{u.train_items} ({u.quantile:.0%} quantile)",
            "; ".join(labels[i] for i in u.history),
            "; ".join(labels[i] for i in u.top),
        )
        for u in shown
    ]
    lines += markdown_table(["user", counted, f"latest {HISTORY} interactions", f"top-{TOP}"], table)
    figure = draw_showcase(shown, items, folder / FIGURE, counted)
    if figure is not None:
        lines += ["", f"![recommendations]({figure.name})"]
    return "\n".join(lines) + "\n"
