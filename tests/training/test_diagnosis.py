"""The floor check's diagnosis is measured from the epoch log (issue 23, item 1): "overfits after
epoch N" when the train loss keeps falling while valid falls after its peak; what was tried (the
fit's search, or nothing) and what to try, with flags `befa run` really takes.

Epoch logs are constructed here: the issue's LightGCN (loss 0.69 -> 0.07, valid peaking at
epoch 32 of 43), and the shapes that must not read as overfitting.
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.cli.params_options import check_set, parse_set
from pipeline.training.diagnosis import early_peak, flat_loss, overfit, still_improving
from pipeline.training.fit_record import FitRecord, FitTrial
from pipeline.training.floor_check import FloorCheck, judge_floor
from pipeline.training.record import EpochLog, RunRecord

runner = CliRunner()


def record(losses: list[float], valids: list[float], status: str = "early_stopped", **config) -> RunRecord:
    epochs = [
        EpochLog(epoch=i, loss=loss, lr=1e-3, train_s=0.0, eval_s=0.0, valid={"recall@20": v})
        for i, (loss, v) in enumerate(zip(losses, valids))
    ]
    best = max(range(len(valids)), key=lambda i: (valids[i], -i))
    return RunRecord(
        model="lightgcn",
        config={"lr": 1e-3, "embedding_dim": 64, "adapter": "none", **config},
        trainer={"max_epochs": 1000, "patience": 10},
        seed=999,
        device="cpu",
        split_id="s",
        status=status,
        epochs=epochs,
        best_epoch=best,
        best_valid={"recall@20": valids[best]},
        test={"recall@20": 0.0300},
    )


def issue_run() -> RunRecord:
    """The issue's LightGCN: 43 epochs, loss 0.69 -> 0.07, valid up to epoch 32 then down."""
    losses = [0.69 * (0.07 / 0.69) ** (i / 42) for i in range(43)]
    valids = [0.010 + 0.025 * i / 32 for i in range(33)] + [0.035 - 0.0007 * (i + 1) for i in range(10)]
    return record(losses, valids)


FLOOR = FloorCheck(floor_valid=0.0400, floor_test=0.0392)


def fit_of(default: float, winner: float) -> FitRecord:
    trials = [
        FitTrial(number=0, point={}, state="complete", valid=default, best_epoch=32, epochs=43, run_dir="t0"),
        FitTrial(number=1, point={"reg": 1e-3}, state="complete", valid=winner, best_epoch=20, epochs=31, run_dir="t1"),
    ]
    return FitRecord(
        reason="asked (--fit on)",
        space={"lr": [1e-3], "reg": [1e-4, 1e-3]},
        space_size=8,
        budget=2,
        seed=999,
        trials=trials,
        winner=1,
        stopped_by="budget",
        seconds=1.0,
    )


def test_the_issue_run_reads_overfits_after_epoch_32_not_too_few_steps():
    rec = issue_run()
    over = overfit(rec.epochs, rec.best_epoch)
    assert over is not None and over.after == 32 and over.epochs == 43
    assert over.loss_at_peak > over.loss_last and over.valid_last < over.valid_peak
    check = judge_floor(FLOOR, rec)
    assert check.below and check.causes[0].startswith("overfits after epoch 32: the train loss kept falling")
    assert not any("optimiser steps" in c or "batch" in c for c in check.causes)  # the old guess is gone
    line = check.line("lightgcn")
    assert "BELOW the MostPop floor" in line and "Measured: overfits after epoch 32" in line
    assert "Tried: no search" in line and "--set lightgcn.embedding_dim=32" in line and "befa run --fit on" in line


def test_shapes_that_are_not_overfitting():
    rising = [0.01 * i for i in range(20)]
    falling_loss = [0.7 - 0.03 * i for i in range(20)]
    assert overfit(record(falling_loss, rising).epochs, 19) is None  # valid never fell: still improving
    assert still_improving(record(falling_loss, rising, "max_epochs").epochs, 19, "max_epochs")
    plateau = [0.05] * 10 + [0.0495] * 10  # valid dips by 1% of the peak: noise, not a fall
    assert overfit(record(falling_loss, plateau).epochs, 0) is None
    drop = [0.01, 0.05, 0.04, 0.03, 0.02]
    assert overfit(record([0.5, 0.4, 0.41, 0.42, 0.43], drop).epochs, 1) is None  # the loss rose after the peak
    assert overfit(record([0.5, 0.4, 0.3], [0.01, 0.05, 0.02]).epochs, 1) is None  # one epoch after the peak
    flat = record([0.693, 0.692, 0.690, 0.689], [0.02, 0.01, 0.01, 0.01])
    assert flat_loss(flat.epochs, flat.best_epoch) == pytest.approx((0.693, 0.693))
    assert early_peak(flat.epochs, flat.best_epoch)


def test_what_was_tried_is_the_fit_and_what_to_try_parses_as_befa_run_flags():
    rec = issue_run()
    rec.fit = fit_of(0.0350, 0.0380)
    check = judge_floor(FLOOR, rec)
    assert check.tried.startswith("a search on valid (2 of 8 configurations of lr, reg, seed 999)")
    assert "winner (reg=0.001) valid R@20 0.0380 vs 0.0350 at the defaults" in check.tried
    assert "befa run --fit on --fit-trials 4" in check.to_try[-1]
    flat_still_rising = record([0.69, 0.689, 0.688], [0.01, 0.02, 0.03], "max_epochs")
    text = " ".join(check.to_try + judge_floor(FLOOR, flat_still_rising).to_try)
    assert "--set lightgcn.lr=0.005" in text and "--epochs 2000" in text
    sets = re.findall(r"--set (\S+)", text)
    assert sets, text
    overrides = parse_set(sets)  # MODEL.KEY=VALUE, as befa run's --set reads it
    check_set(overrides, ["lightgcn"])  # and a valid config value (exits 2 otherwise)
    flags = set(re.findall(r"(?<!\S)(--[a-z][a-z-]*)", text)) - {"--set"}
    help_text = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "300"}).output
    assert flags and all(flag in help_text for flag in flags), flags
