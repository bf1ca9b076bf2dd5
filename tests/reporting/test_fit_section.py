"""The pipeline report's fit section and the floor section's measured diagnosis (issue 23, item 1),
from constructed run records: the issue's LightGCN, fitted, still below the floor and overfitting."""

from __future__ import annotations

from pipeline.reporting.fit_section import fit_section
from pipeline.reporting.floor_section import floor_section
from pipeline.training.fit_record import FitRecord, FitTrial
from pipeline.training.floor_check import FloorCheck, judge_floor
from pipeline.training.record import EpochLog, RunRecord


def lightgcn() -> RunRecord:
    losses = [0.69 * (0.1 ** (i / 42)) for i in range(43)]
    valids = [0.01 + 0.02 * i / 32 for i in range(33)] + [0.03 - 0.001 * (i + 1) for i in range(10)]
    rec = RunRecord(
        model="lightgcn",
        config={"lr": 1e-3, "embedding_dim": 64, "adapter": "none"},
        trainer={"max_epochs": 1000},
        seed=999,
        device="cpu",
        split_id="s",
        status="early_stopped",
        epochs=[
            EpochLog(epoch=i, loss=loss, lr=1e-3, train_s=0, eval_s=0, valid={"recall@20": v})
            for i, (loss, v) in enumerate(zip(losses, valids))
        ],
        best_epoch=32,
        best_valid={"recall@20": 0.03},
        test={"recall@20": 0.0300},
    )
    rec.fit = FitRecord(
        reason="auto: on below 100,000 train interactions and 1% density; this catalog: 6,765 train interactions",
        space={"lr": [1e-4, 1e-3], "reg": [1e-4, 1e-3]},
        space_size=4,
        budget=3,
        seed=999,
        trials=[
            FitTrial(number=0, point={}, state="complete", valid=0.028, best_epoch=30, epochs=41, run_dir="t0"),
            FitTrial(number=1, point={"lr": 1e-4}, state="pruned", valid=0.012, best_epoch=11, epochs=12, run_dir="t1"),
            FitTrial(
                number=2, point={"reg": 1e-3}, state="complete", valid=0.030, best_epoch=32, epochs=43, run_dir="t2"
            ),
        ],
        winner=2,
        stopped_by="budget",
        seconds=42.0,
    )
    rec.floor = judge_floor(FloorCheck(floor_valid=0.0392, floor_test=0.0392), rec)
    return rec


def mostpop() -> RunRecord:
    return RunRecord(
        model="mostpop",
        config={"adapter": "none"},
        seed=999,
        device="cpu",
        split_id="s",
        status="evaluated_only",
        best_epoch=0,
        best_valid={"recall@20": 0.0392},
        test={"recall@20": 0.0392},
    )


def test_the_fit_section_shows_the_search_and_the_measured_pattern():
    md = "\n".join(fit_section([mostpop(), lightgcn()]))
    assert "## Fit to the catalog" in md and "6,765 train interactions" in md and "TPE seeded with 999" in md
    row = "| lightgcn base | 3 of 4 (1 pruned) | 0.0280 | 0.0300 | +7.1% | reg=0.001 | budget | 42 | "
    row += "overfits after epoch 32 |"
    assert row in md
    assert fit_section([mostpop()]) == []  # nothing fitted: no section


def test_the_floor_section_says_what_was_measured_tried_and_to_try():
    md = "\n".join(floor_section([mostpop(), lightgcn()]))
    assert "1 run(s) ended below the floor" in md
    (line,) = [x for x in md.splitlines() if x.startswith("- lightgcn base:")]
    assert line.startswith("- lightgcn base: overfits after epoch 32: the train loss kept falling")
    assert "Tried: a search on valid (3 of 4 configurations of lr, reg, seed 999)" in line
    assert "`--set lightgcn.embedding_dim=32` (less capacity)" in line
    assert "befa study" not in line  # 3 of 4 tried: the search can go on
    assert "`befa run --fit on --fit-trials 6` (a longer search)" in line
