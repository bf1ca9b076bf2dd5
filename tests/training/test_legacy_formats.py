"""What the code before the sub-package layout wrote still loads, exactly.

``tests/training/fixtures/legacy_v1`` was written by commit 9f4100c (record version 1): one tiny
checkpoint per model and adapter with the scores it gave, and a tiny feature store with
two snapshots (one item edited, one added) with what it read back. The script that
wrote it is ``tests/training/fixtures/legacy_v1/make_legacy.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models import get_model_class
from pipeline.features.bundle import FeatureBundle
from pipeline.training.checkpoints import load_weights
from pipeline.training.prepare import prepare_data
from pipeline.training.record import BEST, RunRecord
from storage.feature_store import FeatureStore
from storage.keys import FeatureSetKey

LEGACY = Path(__file__).parent / "fixtures" / "legacy_v1"
RUNS = sorted(p.name for p in LEGACY.iterdir() if (p / "run.json").exists())


def _prepared():
    data = np.load(LEGACY / "data.npz")
    frame = pd.DataFrame(data["frame"], columns=["user_idx", "item_idx", "label"])
    bundle = FeatureBundle(
        {m: torch.from_numpy(data[m]) for m in ("image", "text")},
        {m: torch.from_numpy(data[f"{m}_mask"]) for m in ("image", "text")},
        {m: "legacy" for m in ("image", "text")},
    )
    return prepare_data(frame, int(data["image"].shape[0]), bundle, num_users=12)


def test_every_model_has_a_legacy_checkpoint():
    assert {r.split("-")[0] for r in RUNS} == {"mostpop", "lightgcn", "bm3", "lattice", "freedom", "mgcn"}
    assert {r for r in RUNS if r.endswith("-befa")} == {"bm3-befa", "lattice-befa", "freedom-befa", "mgcn-befa"}


@pytest.mark.parametrize("run", RUNS)
def test_a_version_1_checkpoint_loads_and_scores_as_before(run):
    record = RunRecord.load(LEGACY / run)
    assert record.record_version == 1
    # the placement these runs ran, named since record version 3 (BM3, FREEDOM, LATTICE: "loss")
    assert record.config["befa"]["insertion"] == ("forward" if record.model == "mgcn" else "loss")
    cls = get_model_class(record.model)
    torch.manual_seed(0)  # a different init than the fixture's: only the checkpoint can make the scores match
    model = cls(_prepared().train, cls.Config.model_validate(record.config))
    load_weights(LEGACY / run / BEST, model, record_version=record.record_version)
    model.eval()
    with torch.no_grad():
        u, i = model.inference_embeddings()
    expected = np.load(LEGACY / "scores.npz")[run]
    np.testing.assert_allclose((u @ i.T).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_a_store_written_before_reads_identically():
    meta = json.loads((LEGACY / "store.json").read_text())
    expected = np.load(LEGACY / "store_expected.npz")
    store = FeatureStore(LEGACY / "store")
    key = FeatureSetKey("shop", "toy-enc-000000000000", "image")
    first, current = meta["snapshots"]
    assert [s.id for s in store.snapshots(key)] == [first, current]
    assert store.current_snapshot(key).id == current
    x1, m1 = store.read(key, meta["ids1"], meta["hashes1"], snapshot=first)
    x2, m2 = store.read(key, meta["ids2"], meta["hashes2"])
    np.testing.assert_array_equal(np.asarray(x1), expected["x1"])
    np.testing.assert_array_equal(np.asarray(m1), expected["m1"])
    np.testing.assert_array_equal(np.asarray(x2), expected["x2"])
    np.testing.assert_array_equal(np.asarray(m2), expected["m2"])
    assert store.encoder_info("toy-enc-000000000000")["weights"] == "legacy fixture"


def test_a_version_1_resume_state_loads(tmp_path):
    """``last.pt`` of a run interrupted before the rename resumes into today's model."""
    from pipeline.training.checkpoints import KEY_RENAMES, load_last

    prepared = _prepared()
    cls = get_model_class("lightgcn")
    torch.manual_seed(1)
    model = cls(prepared.train, cls.Config(embedding_dim=4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    old_names = {new: old for old, new in KEY_RENAMES[1]}
    legacy = {old_names.get(k.split(".")[0], k.split(".")[0]) + k[len(k.split(".")[0]) :]: v for k, v in state.items()}
    assert set(legacy) != set(state)  # the fixture really uses the old names
    record = RunRecord(model="lightgcn", config={}, seed=1, device="cpu", split_id="x", record_version=1)
    torch.save({"model": legacy, "epoch": 3, "record": record.model_dump_json()}, tmp_path / "last.pt")
    torch.manual_seed(2)
    fresh = cls(prepared.train, cls.Config(embedding_dim=4))
    rest = load_last(tmp_path / "last.pt", fresh)
    assert rest["epoch"] == 3
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, state[k])
