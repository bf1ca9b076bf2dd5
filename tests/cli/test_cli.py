"""The befa command line, through typer's runner (same code path as the console script)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.data.catalog import Catalog

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("datasets", "download", "ingest", "split", "stats", "demo", "export-mmrec"):
        assert command in result.output


def test_ingest_split_stats_on_movielens(tmp_path, datasets_root):
    env = {"BEFA_DATASETS_ROOT": str(datasets_root), "BEFA_HOME": str(tmp_path)}
    result = runner.invoke(app, ["ingest", "movielens-100k-posters"], env=env)
    assert result.exit_code == 0, result.output
    assert "55375" in result.output.replace(",", "")
    result = runner.invoke(app, ["split", "movielens-100k-posters", "--seed", "7"], env=env)
    assert result.exit_code == 0, result.output
    assert (Catalog.load(tmp_path / "catalogs/movielens-100k-posters").splits_dir / "random-s7.parquet").exists()
    result = runner.invoke(app, ["stats", "movielens-100k-posters"], env=env)
    assert result.exit_code == 0, result.output
    assert "1682" in result.output and "random-s7" in result.output


def test_ingest_missing_dataset_is_a_clear_error(tmp_path):
    env = {"BEFA_DATASETS_ROOT": str(tmp_path / "nowhere"), "BEFA_HOME": str(tmp_path)}
    result = runner.invoke(app, ["ingest", "movielens-100k-posters"], env=env)
    assert result.exit_code == 2
    assert "error" in result.output and "nowhere" in result.output


def test_ingest_rejects_bad_column_option(tmp_path):
    result = runner.invoke(app, ["ingest", "generic", "--column", "oops"], env={"BEFA_HOME": str(tmp_path)})
    assert result.exit_code == 2 and "--column" in result.output


def test_train_then_evaluate_reproduces_metrics(tmp_path, datasets_root):
    env = {"BEFA_DATASETS_ROOT": str(datasets_root), "BEFA_HOME": str(tmp_path)}
    assert runner.invoke(app, ["ingest", "movielens-100k-posters"], env=env).exit_code == 0
    run_dir = tmp_path / "run-lightgcn"
    result = runner.invoke(
        app,
        [
            "train",
            "--dataset",
            "movielens-100k-posters",
            "--model",
            "lightgcn",
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--set",
            "reg=1e-4",
            "--run-dir",
            str(run_dir),
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    import json

    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["reg"] == 1e-4 and record["split_id"].startswith("random-s2024")
    result = runner.invoke(app, ["evaluate", str(run_dir), "--device", "cpu"], env=env)
    assert result.exit_code == 0, result.output
    test_row = next(line for line in result.output.splitlines() if line.lstrip("│ ").startswith("test "))
    assert f"{record['test']['recall@20']:.4f}" in test_row


def test_train_unknown_model_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["train", "--dataset", "x", "--model", "nope"], env={"BEFA_HOME": str(tmp_path)})
    assert result.exit_code == 2 and "unknown model" in result.output


def test_the_command_table_matches_the_command_modules():
    """`befa --help` shows COMMANDS without importing the groups: it must say what they say."""
    import importlib

    from pipeline.cli.main import COMMANDS

    defined = {}
    for module in sorted({m for m, _ in COMMANDS.values()}):
        for name, fn, _ in importlib.import_module(module).commands.commands:
            defined[name] = (module, (fn.__doc__ or "").strip().splitlines()[0])
    assert COMMANDS == defined


@pytest.mark.parametrize("argv", [["--help"], ["ingest", "--help"], ["datasets"]], ids=" ".join)
def test_quick_commands_start_without_torch(argv, tmp_path):
    """Only the commands that need torch (extract, train, run, ...) pay for importing it."""
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom pipeline.cli.main import app\n"
        f"r = CliRunner().invoke(app, {argv!r})\nassert r.exit_code == 0, r.output\n"
        "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n"
    )
    env = {**os.environ, "BEFA_HOME": str(tmp_path), "BEFA_DATASETS_ROOT": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "no torch"
