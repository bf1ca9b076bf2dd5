"""The opt-in large-catalog batching rule (issue 15, part 2): ``--set max_batches_per_epoch=N``
caps an epoch's optimiser steps, the batch growing to ``ceil(train / N)`` and the learning
rate by the square root of that growth; it is recorded, kept out of config hashes while
unset, and a resume applies it again from the asked-for config.
"""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from models.lightgcn import LightGCN
from pipeline.cli.main import app
from pipeline.training.api import default_run_dir, train_model
from pipeline.training.batching import plan_batches
from pipeline.training.record import RunRecord
from tests.job.test_small_catalogs import _kill, shop  # noqa: F401  (shop: a module fixture, reused)

runner = CliRunner()


def test_the_cap_grows_the_batch_and_the_lr_by_its_square_root_and_leaves_smaller_catalogs_alone():
    # bench-scale's 16x catalog: 1,914,400 train interactions, 935 batches of 2,048
    plan = plan_batches(1_914_400, 2048, max_batches=59, lr=1e-3)
    assert plan.adapted and plan.batch_size == math.ceil(1_914_400 / 59) and plan.batches_per_epoch == 59
    assert plan.lr == pytest.approx(1e-3 * math.sqrt(plan.batch_size / 2048)) and plan.configured_lr == 1e-3
    assert plan.label == "large catalog" and "max_batches_per_epoch=59" in plan.note() and "lr 0.001 ->" in plan.note()
    for train in (44_630, 119_674):  # movielens and amazon-baby: at or under the cap, untouched
        kept = plan_batches(train, 2048, max_batches=59, lr=1e-3)
        assert not kept.adapted and kept.lr == 1e-3 and kept.note() == ""
    assert (
        plan_batches(8_000, 2048, max_batches=59, lr=1e-3).label == "small catalog"
    )  # the small-catalog rule still applies
    with pytest.raises(ValueError, match="max_batches_per_epoch=8"):
        plan_batches(1_000_000, 2048, max_batches=8)


def test_unset_the_rule_is_left_out_of_every_dump_so_run_folders_keep_their_names():
    config = LightGCN.Config()
    assert (
        "max_batches_per_epoch" not in config.model_dump() and "max_batches_per_epoch" not in config.model_dump_json()
    )
    capped = LightGCN.Config(max_batches_per_epoch=20)
    assert capped.model_dump(mode="json")["max_batches_per_epoch"] == 20
    assert LightGCN.Config.model_validate(capped.model_dump(mode="json")) == capped
    assert default_run_dir("runs", "lightgcn", "s", config, 1) != default_run_dir("runs", "lightgcn", "s", capped, 1)


def test_a_capped_run_trains_with_the_grown_batch_and_lr_and_records_both(shop, tmp_path, capsys):  # noqa: F811
    folder, _, split_path = shop
    result = train_model(
        folder / "catalog",
        split_path,
        None,
        "lightgcn",
        run_dir=tmp_path / "capped",
        max_epochs=2,
        patience=2,
        num_threads=1,
        overrides={"embedding_dim": 8, "batch_size": 64, "max_batches_per_epoch": 20},
    )
    rec = RunRecord.load(tmp_path / "capped")
    train = rec.batching.train_interactions
    assert train // 64 > 20  # without the cap the epoch would have had more than 20 steps
    assert rec.batching.batch_size == math.ceil(train / 20) and rec.batching.batches_per_epoch <= 20
    assert rec.config["batch_size"] == rec.batching.batch_size and rec.config["max_batches_per_epoch"] == 20
    assert rec.config["lr"] == pytest.approx(1e-3 * math.sqrt(rec.batching.batch_size / 64))
    assert f"lightgcn: batch size 64 -> {rec.batching.batch_size}, lr 0.001 ->" in capsys.readouterr().out
    assert result.record.state == "max_epochs" and len(rec.epochs) == 2


def test_resume_applies_the_rule_again_from_the_asked_config(shop, tmp_path):  # noqa: F811
    _, catalog, _ = shop
    home = tmp_path / "home"
    catalog.save(home / "catalogs" / "shop")
    run_dir = tmp_path / "run"
    train = [
        "train",
        "--dataset",
        "shop",
        "--model",
        "lightgcn",
        "--epochs",
        "2",
        "--set",
        "embedding_dim=8",
        "--set",
        "batch_size=64",
        "--set",
        "max_batches_per_epoch=20",
        "--device",
        "cpu",
        "--run-dir",
        str(run_dir),
    ]
    env = {"BEFA_HOME": str(home)}
    below = runner.invoke(
        app, [*train[:-2], "--set", "max_batches_per_epoch=8", "--run-dir", str(tmp_path / "refused")], env=env
    )
    assert (
        below.exit_code == 2
        and "--set max_batches_per_epoch=8 is below" in below.output
        and "Traceback" not in below.output
    )
    first = runner.invoke(app, train, env=env)
    assert first.exit_code == 0, first.output
    before = RunRecord.load(run_dir).config
    _kill(run_dir)
    resumed = runner.invoke(app, ["train", "--run-dir", str(run_dir), "--resume"], env=env)
    assert resumed.exit_code == 0, (
        resumed.output
    )  # a second sqrt growth of lr would read as a config change and be refused
    after = RunRecord.load(run_dir)
    assert after.config == before and after.state == "max_epochs"
