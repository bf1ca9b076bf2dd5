"""A small generic catalog cut from movielens-100k-posters, for pipeline and flow tests.

40 of the most rated movies that have a poster, rated >= 4 by the first 200 users;
posters copied into the test's folder (so a test may edit them), never into the repo.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass
class SmallCatalog:
    folder: Path
    items: Path
    interactions: Path
    images: Path
    source: Path  # the movielens-100k-posters folder
    spare_ids: list[str]  # movies with a poster that are not in the catalog yet

    def ingest_options(self) -> dict[str, str]:
        return {"items": str(self.items), "interactions": str(self.interactions), "images": str(self.images)}

    def add_items(self, n: int = 2) -> list[str]:
        """Append ``n`` spare movies (row + poster) to the item table; returns their ids."""
        movies = _movies(self.source)
        added = self.spare_ids[:n]
        self.spare_ids = self.spare_ids[n:]
        rows = movies.loc[added]
        items = pd.read_csv(self.items, dtype=str, keep_default_na=False)
        new = pd.DataFrame(
            {
                "item_id": added,
                "title": rows["title"].values,
                "text": _texts(rows),
                "image": [f"{i}.jpg" for i in added],
            }
        )
        for i in added:
            shutil.copy(self.source / "posters" / f"{i}.jpg", self.images / f"{i}.jpg")
        pd.concat([items, new]).to_csv(self.items, index=False)
        return added

    def replace_poster(self, item_id: str, with_poster_of: str) -> None:
        shutil.copy(self.source / "posters" / f"{with_poster_of}.jpg", self.images / f"{item_id}.jpg")


def _movies(source: Path) -> pd.DataFrame:
    movies = pd.read_csv(source / "items.csv", dtype={"movie_id": str}, keep_default_na=False)
    return movies.drop_duplicates("movie_id").set_index("movie_id")


def _texts(rows: pd.DataFrame) -> list[str]:
    return [f"{t}. {o}".strip() for t, o in zip(rows["title"], rows["overview"])]


def make_small_catalog(folder: Path, datasets_root: Path, n_items: int = 40, n_users: int = 200) -> SmallCatalog:
    source = datasets_root / "movielens-100k-posters"
    folder.mkdir(parents=True, exist_ok=True)
    images = folder / "images"
    images.mkdir(exist_ok=True)
    ratings = pd.read_csv(
        source / "ml-100k" / "u.data",
        sep="\t",
        names=["user_id", "item_id", "rating", "timestamp"],
        dtype={"user_id": str, "item_id": str},
    )
    has_poster = {p.stem for p in (source / "posters").glob("*.jpg")}
    popular = [i for i in ratings["item_id"].value_counts().index if i in has_poster]
    chosen, spare = popular[:n_items], popular[n_items : n_items + 10]
    movies = _movies(source)
    rows = movies.loc[chosen]
    items = pd.DataFrame(
        {"item_id": chosen, "title": rows["title"].values, "text": _texts(rows), "image": [f"{i}.jpg" for i in chosen]}
    )
    for i in chosen:
        shutil.copy(source / "posters" / f"{i}.jpg", images / f"{i}.jpg")
    users = sorted(ratings["user_id"].unique(), key=int)[:n_users]
    inter = ratings[ratings["item_id"].isin(chosen) & ratings["user_id"].isin(users) & (ratings["rating"] >= 4)]
    items_path, inter_path = folder / "items.csv", folder / "interactions.csv"
    items.to_csv(items_path, index=False)
    inter.to_csv(inter_path, index=False)
    return SmallCatalog(
        folder=folder, items=items_path, interactions=inter_path, images=images, source=source, spare_ids=spare
    )
