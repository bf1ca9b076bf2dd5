"""``make bench-vs-reference``: the overlap accounting, the refusal under 5 overlapping epochs,
the table's cells and the flag errors, on constructed per-epoch records (no timing asserted).
The reference itself is never imported: it only ever runs as a separate process."""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest

from benchmarks import bench_vs_reference as bench
from benchmarks import reference_side
from benchmarks.pair_timing import (
    MIN_OVERLAP,
    Comparison,
    SideTiming,
    Span,
    befa_spans,
    both_running,
    compare,
    enough,
    inside,
    mmrec_spans,
)
from benchmarks.paired_run import run_pair

REPO = Path(__file__).resolve().parents[2]


def befa_progress(start: float, epochs: int, train_s: float = 0.4, eval_s: float = 0.1) -> list[dict]:
    """befa's progress lines: fit_start, then one line per epoch (train + eval + 0.05 s of checkpoints)."""
    lines, t = [{"fit_start": start}], start
    for e in range(epochs):
        t += train_s + eval_s + 0.05
        lines.append({"epoch": e, "end": t, "train_s": train_s, "eval_s": eval_s})
    return lines


def mmrec_record(start: float, epochs: int, train_s: float = 4.0, call_s: float = 0.5, pre_s: float = 0.1) -> dict:
    """The reference runner's JSON: per epoch pre + train, then two evaluation calls."""
    rec: dict = {"pre_epoch_s": [], "train_epoch_s": [], "train_end_t": [], "eval_calls_s": [], "eval_end_t": []}
    t = start
    for _ in range(epochs):
        t += pre_s + train_s
        rec["pre_epoch_s"].append(pre_s)
        rec["train_epoch_s"].append(train_s)
        rec["train_end_t"].append(t)
        for _ in range(2):
            t += call_s
            rec["eval_calls_s"].append(call_s)
            rec["eval_end_t"].append(t)
    return rec


# -- reading both sides' records ---------------------------------------------------------------------
def test_befa_epochs_lie_between_the_previous_epoch_end_and_their_own():
    train, evals = befa_spans(befa_progress(100.0, 3))
    assert [s.start for s in train] == [100.0, train[0].end, train[1].end]
    assert all(s.seconds == 0.4 for s in train) and all(s.seconds == 0.1 for s in evals)
    assert [(s.start, s.end) for s in evals] == [(s.start, s.end) for s in train]
    assert befa_spans([{"epoch": 0, "end": 1.0, "train_s": 1, "eval_s": 1}]) == ([], [])  # no fit_start: no window


def test_mmrec_epochs_add_pre_epoch_and_pair_two_evaluation_calls():
    rec = mmrec_record(10.0, 3)
    rec["eval_calls_s"].pop(), rec["eval_end_t"].pop()  # stopped between the last valid and test calls
    train, evals = mmrec_spans(rec)
    assert [round(s.seconds, 6) for s in train] == [4.1, 4.1, 4.1]
    assert train[0].start == 10.0 and train[0].end == pytest.approx(14.1)
    assert len(evals) == 2 and all(s.seconds == 1.0 for s in evals)  # the third epoch's evaluation is incomplete
    assert evals[0].start == train[0].end and evals[0].end == pytest.approx(15.1)
    assert mmrec_spans({}) == ([], [])


# -- overlap accounting and refusal ----------------------------------------------------------------------
def test_only_epochs_while_both_ran_count_and_the_speed_up_after_the_other_ends_is_left_out():
    befa = SideTiming("befa", 0.0, 12.0)
    ref = SideTiming("MMRec", 1.0, 60.0)
    ref.train = [Span(4.0, 1.0 + 4 * i, 5.0 + 4 * i) for i in range(2)]  # alone after befa ended: faster
    ref.train += [Span(1.5, 11.0 + 1.5 * i, 12.5 + 1.5 * i) for i in range(10)]
    window = both_running(befa, ref, now=99.0)
    assert window == (1.0, 12.0)
    assert len(inside(ref.train, window)) == 2  # 1-5, 5-9; 11-12.5 ends after befa did
    assert both_running(befa, SideTiming("MMRec", 1.0), now=30.0) == (1.0, 12.0)
    assert both_running(SideTiming("befa", 0.0), SideTiming("MMRec", 1.0), now=30.0) == (1.0, 30.0)


def test_a_ratio_needs_five_overlapping_epochs_on_each_side():
    window = (0.0, 100.0)
    befa = [Span(0.5, i, i + 1) for i in range(20)]
    ref = [Span(5.0, 10 * i, 10 * i + 5) for i in range(MIN_OVERLAP - 1)] + [Span(1.0, 95, 101)]
    c = compare(befa, ref, window)
    assert c.ratio is None and c.refused == "MMRec 4 overlapping, under 5"
    assert (c.befa_n, c.ref_n, c.befa_s, c.ref_s) == (20, 4, 0.5, 5.0)  # medians still shown
    ok = compare(befa, ref + [Span(7.0, 50, 57)], window)
    assert ok.refused is None and ok.ref_n == 5 and ok.ref_s == 5.0 and ok.ratio == pytest.approx(10.0)
    both_short = compare(befa[:2], ref[:1], window)
    assert both_short.refused == "befa 2, MMRec 1 overlapping, under 5"


def test_the_pair_may_stop_once_both_sides_trained_and_evaluated_enough():
    befa = SideTiming("befa", 0.0, None, *befa_spans(befa_progress(0.5, 30)))
    ref = SideTiming("MMRec", 0.0, None, *mmrec_spans(mmrec_record(0.2, 5)))
    assert enough(befa, ref, now=40.0, epochs=5)
    assert not enough(befa, ref, now=40.0, epochs=6)
    ref.evals = ref.evals[:4]  # the fifth epoch trained, its evaluation not done
    assert not enough(befa, ref, now=40.0, epochs=5)


# -- the table -------------------------------------------------------------------------------------------
def test_ratio_cells_are_marked_against_each_models_target():
    def cell(model, ratio):
        return bench.ratio_cell(model, Comparison(1.0, ratio, 5, 5, ratio, None))

    assert cell("bm3", 3.04) == "3.0x (UNDER 5x)"
    assert cell("mgcn", 5.0) == "5.0x (>= 5x met)"
    assert cell("lightgcn", 10.4) == "10.4x (goal 10x met)"
    assert cell("freedom", 7.9) == "7.9x (UNDER 8x)"
    assert cell("lattice", 12.2) == "12.2x (>= 8x met)"
    refused = Comparison(0.5, 5.0, 12, 3, None, "MMRec 3 overlapping, under 5")
    assert bench.ratio_cell("bm3", refused) == "refused: MMRec 3 overlapping, under 5"


def test_the_table_has_one_row_per_pair_with_its_overlap_and_load():
    train = Comparison(0.5, 5.0, 40, 12, 10.0, None)
    evals = Comparison(0.1, 1.5, 40, 11, 15.0, None)
    rows = [
        bench.PairRow("freedom", "trained", train, evals, load_start=1.04, load_end=2.0),
        bench.PairRow("mgcn", "trained", errors=["MMRec exited with code 1: KeyError (log: x)"]),
        bench.PairRow("bm3", "frozen", train, train, load_start=0.3, load_end=0.4),
    ]
    md = bench.table(rows, "trained").splitlines()
    assert md[0].startswith("trained: like for like") and md[2] == bench.HEADER
    assert md[4] == (
        "| FREEDOM | 0.50 | 5.00 | 10.0x (>= 8x met) | 0.10 | 1.50 | 15.0x (>= 8x met) "
        "| 40 / 12 (evaluations 40 / 11) | 1.0 / 2.0 |"
    )
    assert md[5].startswith("| MGCN | error: MMRec exited with code 1") and md[5].count("|") == 10
    assert len(md) == 6  # the frozen row is in the other table
    assert "| 40 / 12 | 0.3 / 0.4 |" in bench.table(rows, "frozen")


# -- flags -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--models", "lightgcn,itemknn"], "--models"),
        (["--settings", "warm"], "--settings"),
        (["--features", "clip"], "--features"),
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "many"], "--epochs"),
        (["--cores", "0,0"], "--cores"),
        (["--cores", "a,b"], "--cores"),
        (["--pair-timeout", "-1"], "--pair-timeout"),
        (["--reference", "/nonexistent/reference-impl"], "--reference"),
    ],
)
def test_a_wrong_flag_is_one_line_naming_it_and_exit_code_2(argv, flag, capsys):
    assert bench.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and flag in err and "Traceback" not in err


def test_a_datasets_root_without_the_catalog_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BEFA_DATASETS_ROOT", str(tmp_path / "nowhere"))
    assert bench.main(["--home", str(tmp_path / "home")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "BEFA_DATASETS_ROOT" in err and "--home" in err


def test_runner_command_sets_one_value_for_each_grid_key(tmp_path):
    cmd = reference_side.runner_command(
        Path("/v/bin/python"), Path("/ref"), "lightgcn", tmp_path, "ml", tmp_path / "o.json", 1000, 999
    )
    assert cmd[:4] == ["/v/bin/python", "/ref/mmrec-runner/run_mmrec.py", "LightGCN", str(tmp_path)]
    assert cmd[cmd.index("--threads") + 1] == "1" and cmd[cmd.index("--seed") + 1] == "999"
    assert [cmd[i + 1] for i, x in enumerate(cmd) if x == "--set"] == ["n_layers=2", "reg_weight=0.0001"]
    assert set(reference_side.MMREC_MODELS) == set(bench.MODELS) == set(bench.TARGETS)
    assert "PYTHONPATH" not in reference_side.runner_env()


def test_the_reference_venv_is_reused_while_its_marker_matches(tmp_path, monkeypatch):
    import sysconfig

    venv = tmp_path / "mmrec-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / reference_side.MARKER).write_text(json.dumps(reference_side._marker(sysconfig.get_paths()["purelib"])))
    monkeypatch.setattr(reference_side.subprocess, "run", lambda *a, **k: pytest.fail("rebuilt a fresh venv"))
    assert reference_side.side_venv(venv) == venv / "bin" / "python"


# -- the pair's processes, with two stand-ins ------------------------------------------------------------
FAKE_BEFA = """
import json, sys, time
with open(sys.argv[1], "a", buffering=1) as f:
    f.write(json.dumps({"fit_start": time.time()}) + "\\n")
    for e in range(10000):
        time.sleep(0.02)
        f.write(json.dumps({"epoch": e, "end": time.time(), "train_s": 0.015, "eval_s": 0.005}) + "\\n")
"""
FAKE_MMREC = """
import json, sys, time
rec = {"pre_epoch_s": [], "train_epoch_s": [], "train_end_t": [], "eval_calls_s": [], "eval_end_t": []}
for e in range(int(sys.argv[2])):
    time.sleep(0.06); rec["pre_epoch_s"].append(0.0); rec["train_epoch_s"].append(0.06)
    rec["train_end_t"].append(time.time())
    for _ in range(2):
        time.sleep(0.01); rec["eval_calls_s"].append(0.01); rec["eval_end_t"].append(time.time())
    open(sys.argv[1], "w").write(json.dumps(rec))
"""


def _pair(tmp_path, mmrec_epochs: str, epochs: int):
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores to pin the sides to")
    b, r = tmp_path / "b.jsonl", tmp_path / "r.json"
    return run_pair(
        [sys.executable, "-c", FAKE_BEFA, str(b)],
        [sys.executable, "-c", FAKE_MMREC, str(r), mmrec_epochs],
        b,
        r,
        cores=(cores[0], cores[1]),
        cwd=(tmp_path, tmp_path),
        env=(dict(os.environ), dict(os.environ)),
        logs=(tmp_path / "b.log", tmp_path / "r.log"),
        epochs=epochs,
        timeout_s=60,
    )


def test_the_faster_side_keeps_running_until_both_have_their_overlapping_epochs(tmp_path):
    res = _pair(tmp_path, "1000", 5)
    assert res.reason == "both had 5 overlapping epochs" and res.errors == []
    window = both_running(res.befa, res.ref, now=0.0)
    assert len(inside(res.ref.train, window)) >= 5 and len(inside(res.ref.evals, window)) >= 5
    assert len(inside(res.befa.train, window)) > len(inside(res.ref.train, window))


def test_a_side_that_ends_first_ends_the_pair_and_its_epochs_decide(tmp_path):
    res = _pair(tmp_path, "2", 5)
    assert res.reason == "MMRec exited first (code 0)" and res.errors == []
    window = both_running(res.befa, res.ref, now=0.0)
    assert compare(res.befa.train, res.ref.train, window).refused == "MMRec 2 overlapping, under 5"


# -- layering --------------------------------------------------------------------------------------------
def test_nothing_here_imports_the_reference_toolbox():
    """MMRec's top-level packages are ``common`` and ``utils`` (and its own ``models``, run from its
    src folder only): no module of befa's package, tests or benchmarks imports those two."""
    found = []
    for folder in ("storage", "encoders", "models", "pipeline", "flows", "tests", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                found += [f"{path}: {n}" for n in names if n.split(".")[0] in ("common", "utils", "mmrec")]
    assert found == []
