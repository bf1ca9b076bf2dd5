"""``make bench-cold-start``'s arms and its table: the floor a method must beat is the strongest
ItemKNN-CBF variant on valid, not the default one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.bench_cold_start import FLOOR, arms, markdown, pick_floor, summarise
from pipeline.evaluation.settings import setting_column


def test_arms_add_a_floor_per_modality_when_there_are_several():
    names = {name: overrides for name, _, overrides in arms(["freedom"], ["forward"], 0.3, ["text", "image"])}
    assert names[f"{FLOOR}-image"] == {"modalities": ["image"]}
    assert names[f"{FLOOR}-text"] == {"modalities": ["text"]}
    assert names[FLOOR] == {}
    single = [name for name, _, _ in arms(["freedom"], ["forward"], 0.3, ["image"])]
    assert not any(n.startswith(f"{FLOOR}-") for n in single)  # one modality: the combined floor is it


def test_pick_floor_takes_the_best_valid_variant_and_prefers_the_combined_on_ties():
    frame = pd.DataFrame(
        {
            "arm": [FLOOR, f"{FLOOR}-image", f"{FLOOR}-audio", "freedom"],
            "cold_valid_r20": [0.055, 0.061, 0.027, 0.9],  # a trained arm never counts as a floor
        }
    )
    assert pick_floor(frame) == f"{FLOOR}-image"
    frame.loc[1, "cold_valid_r20"] = 0.055
    assert pick_floor(frame) == FLOOR
    with pytest.raises(ValueError, match="no itemknn_cbf arm"):
        pick_floor(frame[frame["arm"] == "freedom"])


def _per_user(path, values):
    column = setting_column("cold", "recall@20")
    pd.DataFrame({"user_idx": np.arange(len(values)), "part": "test", column: values}).to_parquet(path)
    return str(path)


def test_summarise_tests_every_arm_against_the_floor_chosen_on_valid(tmp_path):
    rng = np.random.default_rng(0)
    users = 60
    combined = rng.uniform(0, 0.2, users)
    image = combined + rng.uniform(0.04, 0.06, users)  # the better floor, also on valid
    better = image + rng.uniform(0.01, 0.05, users)  # beats both floors on every user
    rows = []
    for name, values, valid in [(FLOOR, combined, 0.05), (f"{FLOOR}-image", image, 0.06), ("freedom", better, 0.07)]:
        rows.append({
            "arm": name, "seed": 1, "cold_valid_r20": valid, "cold_r20": values.mean(), "cold_n20": 0.0,
            "hybrid_cold_r20": 0.0, "hybrid_warm_r20": 0.0, "cold_share": 0.0, "capped": False,
            "per_user": _per_user(tmp_path / f"{name}.parquet", values),
        })  # fmt: skip
    table = summarise(rows).set_index("arm")
    assert table.attrs["floor"] == f"{FLOOR}-image"
    assert table.loc["freedom", "diff_vs_floor"] == pytest.approx((better - image).mean())
    assert table.loc[FLOOR, "diff_vs_floor"] == pytest.approx(-0.05, abs=0.01)  # beaten by the chosen one
    assert table.loc["freedom", "p_holm"] < 0.01
    assert pd.isna(table.loc[f"{FLOOR}-image", "p_vs_floor"])  # the floor is not tested against itself
    text = markdown(table.reset_index(), "t")
    assert f"Compared with: `{FLOOR}-image`" in text and f"vs {FLOOR}-image (cold R@20)" in text
