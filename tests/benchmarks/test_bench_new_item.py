"""``make bench-new-item``: movielens-100k-posters copied without one film, the film added back
as a shop adds a product, and the steps from `befa ingest` to `befa recommend` on a tiny cut
of the catalog (random-weight encoder, one epoch)."""

from __future__ import annotations

import csv

import pytest

from benchmarks.bench_new_item import (
    DATASET,
    DEFAULT_ENCODER,
    add_back,
    copy_without,
    markdown,
    parse_args,
    run,
    take_out,
)
from pipeline.data.importers.movielens import MovieLensImporter, movie_text
from pipeline.job.params import DEFAULT_ENCODER as BEFA_DEFAULT_ENCODER

TINY = ["--encoder", "imagebind:tiny@random", "--max-items", "30", "--max-users", "120", "--epochs", "1"]


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _catalog(folder):
    importer = MovieLensImporter()
    return importer.run(importer.options(root=str(folder), verify=False)).catalog


def test_the_copy_holds_the_film_out_and_adding_it_back_appends_row_and_poster(tmp_path, datasets_root):
    assert DEFAULT_ENCODER == BEFA_DEFAULT_ENCODER  # the benchmark extracts with befa's default encoders
    source = datasets_root / DATASET
    held = copy_without(source, tmp_path, "50", max_items=30, max_users=120)
    assert held.title == "Star Wars (1977)" and held.ratings_dropped == 583  # every rating of the film
    header, *rows = _rows(held.folder / "items.csv")
    assert header == _rows(source / "items.csv")[0] and len({r[0] for r in rows}) == 30
    assert "50" not in {r[0] for r in rows} and not (held.folder / "posters" / "50.jpg").exists()
    assert not any(line.split("\t")[1] == "50" for line in (held.folder / "ml-100k" / "u.data").open())
    before = _catalog(held.folder)
    assert before.num_items == 30 and "50" not in set(before.items["item_id"])

    add_back(held)
    *_, last = _rows(held.folder / "items.csv")
    assert last == held.rows[0]  # appended at the end, as the source has it
    assert (held.folder / "posters" / "50.jpg").read_bytes() == (source / "posters" / "50.jpg").read_bytes()
    after = _catalog(held.folder)
    film = after.items[after.items["item_id"] == "50"].iloc[0]
    overview = held.rows[0][header.index("overview")]
    assert film["item_idx"] == 30 and film["text"] == movie_text("Star Wars (1977)", overview)
    assert film["image"] is not None  # its poster read and checked
    assert after.items.iloc[:30][["item_id", "text_hash", "image_hash"]].equals(
        before.items[["item_id", "text_hash", "image_hash"]]
    )  # the other films unchanged: their features are reused
    assert len(after.interactions) == len(before.interactions)  # a new product has no interaction

    take_out(held)
    assert _rows(held.folder / "items.csv") == [header, *rows] and not (held.folder / "posters" / "50.jpg").exists()


@pytest.mark.slow  # ingests, extracts and trains FREEDOM (one epoch, tiny): 9-20 s each on 2 shared cores
@pytest.mark.parametrize("mapper", ["auto", "regression"])
def test_only_the_new_film_is_encoded_and_it_reaches_the_served_lists(tmp_path, datasets_root, mapper):
    args = parse_args([*TINY, "--modes", "in-process", "--threads", "0", "--mapper", mapper])  # 0: keep the CPUs
    result = run(args, tmp_path, datasets_root / DATASET)
    steps = result["modes"]["in-process"]["steps"]
    for modality in ("image", "text"):
        assert steps["extract"]["modalities"][modality] == {"encoded": ["50"], "reused": 30}
    plain, slots = steps["recommend"], steps["recommend_slots1"]
    # no mapping step: the run grows over the film; auto keeps the model's own content path (no cold items to judge on)
    assert plain["new_items"] == 1 and plain["mapper"] == (None if mapper == "auto" else mapper)
    assert plain["users"] == slots["users"] > 0
    assert slots["lists_with_item"] >= 1 and slots["best_rank"] >= 1
    assert slots["lists_with_item"] >= plain["lists_with_item"]
    assert set(result["setup"]) == {"copy", "ingest", "extract", "train"} | ({"map"} if mapper != "auto" else set())
    text = markdown(result)
    assert "| 2 extract | `befa extract --dataset movielens-100k-posters` |" in text
    assert "image: encoded 1 (50), reused 30; text: encoded 1 (50), reused 30" in text
    assert f"the film in {slots['lists_with_item']} of {slots['users']} lists" in text
