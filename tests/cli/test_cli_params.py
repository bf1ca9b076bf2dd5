"""The CLI derived from the parameter models (issue 21): ``befa run`` and ``befa study`` take one
flag per field of ``PipelineParams`` / ``StudyParams``, ``--set MODEL.KEY=VALUE`` fills
``model_overrides`` (and works in ``befa train``), the commands share one encoder default, and
``befa serve`` / ``server`` / ``demo`` are typer apps whose ``--help`` lists their options.

Most tests parse only: ``run_pipeline`` / ``run_study`` are swapped for a stub that records
the parameters the command built. One test runs ``befa run`` for real on
movielens-100k-posters (one epoch, a tiny random text encoder) and reads the run record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from pydantic import Field
from typer.testing import CliRunner

import pipeline.cli.job as cli_job
from models.befa import BeFA
from pipeline.cli.ingest_options import FIELDS as IMPORTER_FIELDS
from pipeline.cli.main import app, load_command
from pipeline.cli.params_options import NOT_FLAGS, flag_of, train_overrides, with_params
from pipeline.job.params import DEFAULT_ENCODER, PipelineError, PipelineParams
from pipeline.study.params import StudyParams
from pipeline.training.api import load_trained
from pipeline.training.record import RunRecord
from pipeline.training.run_features import load_run_features
from storage.feature_store import FeatureStore

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
WIDE = {"COLUMNS": "200"}


class Stop(PipelineError):
    """Raised by the stub instead of running: the command prints it and exits 2."""


@pytest.fixture
def captured(monkeypatch):
    """The parameters ``befa run`` / ``befa study`` hand to the pipeline / the study (not run)."""
    seen: dict = {}

    def stub(params, settings, log=None):
        seen["params"] = params
        raise Stop("stopped before any work")

    monkeypatch.setattr(cli_job, "run_pipeline", stub)
    monkeypatch.setattr(cli_job, "run_study", stub)
    return seen


def invoke(argv: list[str], seen: dict | None = None):
    result = runner.invoke(app, argv, env=WIDE)
    if seen is not None:
        assert "params" in seen, f"{argv}: the command did not get as far as the pipeline:\n{result.output}"
    return result


# -- (b) every field has a flag ---------------------------------------------------------------
def missing_flags(command, model) -> list[str]:
    """Fields of ``model`` that ``command`` (a click command) takes no value for."""
    names = {p.name: p for p in command.params}
    opts = {o for p in command.params for o in p.opts}
    missing = []
    for field in model.model_fields:
        if field == "model_overrides":
            ok = "--set" in opts
        elif field == "ingest_options":
            ok = all(flag_of(k) in opts for k in IMPORTER_FIELDS) and "--column" in opts
        else:
            param = names.get(field)
            ok = param is not None and (param.param_type_name == "argument" or flag_of(field) in param.opts)
        if not ok:
            missing.append(field)
    return missing


@pytest.mark.parametrize("name, model", [("run", PipelineParams), ("study", StudyParams)])
def test_every_params_field_has_a_flag(name, model):
    command = load_command(name)
    assert missing_flags(command, model) == []
    help_text = invoke([name, "--help"]).output
    for field in model.model_fields:
        if field not in NOT_FLAGS and not (name == "run" and field == "dataset"):
            assert flag_of(field) in help_text, field


def test_the_flag_check_bites():
    def cmd(params: dict | None = None) -> None:
        """A command that leaves out seed."""

    command = typer.main.get_command(_app_of(with_params(PipelineParams, skip=(*NOT_FLAGS, "seed"))(cmd)))
    assert "seed" in missing_flags(command, PipelineParams)


def test_help_is_the_field_description_and_default_is_the_model_default():
    help_text = invoke(["run", "--help"]).output
    assert "--split-seed" in help_text and "2024" in help_text
    assert PipelineParams.model_fields["recommend_k"].description.split(";")[0] in help_text
    assert "mostpop" in help_text and "floor" in help_text  # the models field's description
    study_help = invoke(["study", "--help"]).output
    assert "--threads" in study_help and "--num-threads" in study_help  # the old short name stays
    assert "999,1000,1001" in study_help and "image;text;image,text" in study_help


# -- the flags parse as the field types say; only given options are passed on -------------------
def test_run_passes_only_the_options_given(captured):
    invoke(
        [
            "run",
            "shop",
            "--models",
            "lightgcn,freedom",
            "--adapters",
            "befa",
            "--epochs",
            "3",
            "--no-verify-checkpoints",
            "--split-kind",
            "temporal",
            "--encoder",
            "text=minilm",
        ],
        captured,
    )
    p = captured["params"]
    assert isinstance(p, PipelineParams)
    assert p.model_fields_set == {
        "dataset",
        "models",
        "adapters",
        "epochs",
        "verify_checkpoints",
        "split_kind",
        "encoder",
    }
    assert (p.dataset, p.models, p.adapters, p.epochs, p.verify_checkpoints, p.split_kind, p.encoder) == (
        "shop",
        ["lightgcn", "freedom"],
        ["befa"],
        3,
        False,
        "temporal",
        "text=minilm",
    )
    assert p.patience == PipelineParams.model_fields["patience"].default  # not given: the model's default


def test_run_takes_the_importer_options_as_ingest_options(captured, tmp_path):
    invoke(["run", "shop", "--items", str(tmp_path / "items.csv"), "--column", "item_id_column=sku"], captured)
    assert captured["params"].ingest_options == {"items": tmp_path / "items.csv", "item_id_column": "sku"}


def test_study_parses_lists_none_and_json(captured):
    invoke(
        [
            "study",
            "--dataset",
            "shop",
            "--seeds",
            "999,1000",
            "--sweep-t",
            "none",
            "--modality-sets",
            "image;image,text",
            "--train-fractions",
            "1,0.5",
            "--cold-fraction",
            "none",
            "--threads",
            "2",
            "--grid",
            "none",
            "--befa-grid",
            '{"befa.t": [1, 2]}',
            "--pooling",
            "concat",
            "--items",
            "items.csv",
        ],
        captured,
    )
    p = captured["params"]
    assert isinstance(p, StudyParams)
    assert (p.dataset, p.seeds, p.sweep_t, p.modality_sets, p.train_fractions, p.cold_fraction, p.num_threads) == (
        "shop",
        [999, 1000],
        None,
        [["image"], ["image", "text"]],
        [1.0, 0.5],
        None,
        2,
    )
    assert (p.grid, p.befa_grid, p.pooling) == ("none", {"befa.t": [1, 2]}, "concat")
    assert p.ingest_options["items"].name == "items.csv"
    assert p.models == StudyParams.model_fields["models"].get_default(call_default_factory=True)


def test_study_takes_a_json_grid(captured):
    invoke(["study", "--grid", '{"freedom": {"lr": [0.01]}}', "--models", "freedom"], captured)
    assert captured["params"].grid == {"freedom": {"lr": [0.01]}}


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["run", "--adapters", "none,nope"], "--adapters"),
        (["run", "--split-kind", "sideways"], "--split-kind"),
        (["run", "--epochs", "0"], "--epochs"),
        (["study", "--seeds", "a,b"], "--seeds"),
        (["study", "--sweep-t", "1,-2"], "sweep_t"),
        (["study", "--befa-grid", "{not json"], "--befa-grid"),
        (["study", "--cold-fraction", "often"], "--cold-fraction"),
    ],
)
def test_a_bad_value_names_its_flag_without_a_traceback(argv, flag, captured):
    result = invoke(argv)
    assert result.exit_code == 2, result.output
    assert flag in result.output and "Traceback" not in result.output
    assert "params" not in captured


# -- (a) a new field in a subclass is a new flag ---------------------------------------------------
class WarmupParams(PipelineParams):
    warmup_epochs: int = Field(0, ge=0, description="epochs before early stopping starts counting")


def _app_of(command) -> typer.Typer:
    sub = typer.Typer(add_completion=False)
    sub.command("run")(command)
    return sub


def test_a_field_added_in_a_subclass_is_a_befa_run_flag(captured):
    sub = _app_of(cli_job.make_run_command(WarmupParams))
    help_text = runner.invoke(sub, ["--help"], env=WIDE).output
    assert "--warmup-epochs" in help_text and "epochs before early stopping starts counting" in help_text
    runner.invoke(sub, ["shop", "--warmup-epochs", "3", "--epochs", "5"])
    p = captured["params"]
    assert isinstance(p, WarmupParams) and (p.warmup_epochs, p.epochs, p.dataset) == (3, 5, "shop")
    runner.invoke(sub, ["shop"])
    assert captured["params"].warmup_epochs == 0 and "warmup_epochs" not in captured["params"].model_fields_set
    bad = runner.invoke(sub, ["shop", "--warmup-epochs", "-1"])
    assert bad.exit_code == 2 and "--warmup-epochs" in bad.output


# -- (c) --set MODEL.KEY=VALUE ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["run", "study"])
def test_set_fills_model_overrides(name, captured):
    invoke(
        [
            name,
            "--models",
            "freedom,mgcn",
            "--set",
            "freedom.befa.t=0.5",
            "--set",
            "*.embedding_dim=16",
            "--set",
            "mgcn.befa.dropout=0.1",
        ],
        captured,
    )
    assert captured["params"].model_overrides == {
        "freedom": {"befa.t": 0.5},
        "*": {"embedding_dim": 16},
        "mgcn": {"befa.dropout": 0.1},
    }


@pytest.mark.parametrize("name", ["run", "study"])
@pytest.mark.parametrize(
    "item, says",
    [
        ("befa.t=0.5", "name the model"),  # no model: 'befa' is not one
        ("freedom.befa.t", "MODEL.KEY=VALUE"),  # no value
        ("freedom.nosuch=1", "freedom.nosuch=1"),  # not a config field
        ("freedom.befa.t=abc", "freedom.befa.t=abc"),  # not a number
        ("*.nosuch.x=1", "nosuch"),  # not a section
        ("lightgcn.reg=0.1", "not among the models"),  # a model this command does not train
    ],
)
def test_a_bad_set_is_a_clear_error(name, item, says, captured):
    result = invoke([name, "--models", "freedom", "--set", item])
    assert result.exit_code == 2, result.output
    assert "--set" in result.output and says in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit) and "params" not in captured


def test_train_set_takes_model_prefixes():
    assert train_overrides(["befa.t=2", "freedom.reg=0.01", "*.embedding_dim=8"], "freedom") == {
        "befa.t": 2,
        "reg": 0.01,
        "embedding_dim": 8,
    }


def test_train_set_names_the_problem(tmp_path):
    env = {"BEFA_HOME": str(tmp_path), **WIDE}
    other = runner.invoke(
        app, ["train", "--dataset", "nosuch", "--model", "lightgcn", "--set", "freedom.befa.t=0.5"], env=env
    )
    assert other.exit_code == 2 and "--set freedom.befa.t=0.5" in other.output and "lightgcn" in other.output
    # a valid prefixed override passes the --set checks: the command goes on to the (missing) catalog
    ok = runner.invoke(
        app, ["train", "--dataset", "nosuch", "--model", "lightgcn", "--set", "lightgcn.embedding_dim=8"], env=env
    )
    assert ok.exit_code == 2 and "--set" not in ok.output and "no ingested catalog" in ok.output
    bad = runner.invoke(app, ["train", "--dataset", "nosuch", "--model", "lightgcn", "--set", "*.nosuch=1"], env=env)
    assert bad.exit_code == 2 and "--set nosuch=1" in bad.output


# -- (e) one encoder default -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["extract", "train", "run", "study"])
def test_the_commands_share_one_encoder_default(name):
    (param,) = [p for p in load_command(name).params if p.name == "encoder"]
    assert param.default == DEFAULT_ENCODER
    assert (
        PipelineParams.model_fields["encoder"].default == StudyParams.model_fields["encoder"].default == DEFAULT_ENCODER
    )


# -- (d) serve, server, demo -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, flags",
    [
        (
            "serve",
            ["--interval", "--cron", "--no-schedule", "--retrain-on-change", "--no-retrain-on-change", "--catalog"],
        ),
        (
            "server",
            [
                "--port",
                "--home",
                "--no-serve",
                "--startup-timeout",
                "--interval",
                "--cron",
                "--no-schedule",
                "--no-retrain-on-change",
                "--catalog",
            ],
        ),
        ("demo", ["--dataset", "--epochs", "--patience", "--models"]),
    ],
)
def test_prefect_commands_list_their_options(name, flags):
    result = invoke([name, "--help"])
    assert result.exit_code == 0, result.output
    for flag in flags:
        assert flag in result.output, (name, flag)


def test_demo_keeps_its_defaults(monkeypatch):
    import flows.demo

    calls = []
    monkeypatch.setattr(flows.demo, "demo", lambda *args: calls.append(args))
    assert invoke(["demo"]).exit_code == 0
    assert invoke(["demo", "--epochs", "2", "--models", "freedom"]).exit_code == 0
    assert calls == [
        ("movielens-100k-posters", 30, 5, ["lightgcn", "freedom", "mgcn"]),
        ("movielens-100k-posters", 2, 5, ["freedom"]),
    ]


def test_serve_schedule_options_exclude_each_other():
    result = invoke(["serve", "--interval", "60", "--cron", "0 3 * * *"])
    assert result.exit_code == 2 and "exclude each other" in result.output


def test_only_the_prefect_commands_load_prefect(tmp_path):
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom pipeline.cli.main import app\n"
        "for argv in (['--help'], ['run', '--help'], ['study', '--help']):\n"
        "    assert CliRunner().invoke(app, argv).exit_code == 0\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'flows'}))\n"
        "assert CliRunner().invoke(app, ['serve', '--help']).exit_code == 0\n"
        "flows = {'flows.serve', 'flows.server', 'flows.demo'}\n"
        "print(sorted({m for m in sys.modules if m.startswith('flows.')} & flows))\n"
    )
    env = {**os.environ, "BEFA_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-2:] == ["[]", "['flows.serve']"]


# -- (f) end to end: --set reaches the adapter -------------------------------------------------------
def test_befa_run_movielens_set_befa_t_reaches_the_adapter(tmp_path, datasets_root):
    """``befa run movielens-100k-posters --set freedom.befa.t=0.5``, for real (one epoch, a tiny
    random text encoder: about 20 s on 2 cores), then the FREEDOM+BeFA run record says t = 0.5."""
    home = tmp_path / "home"
    result = runner.invoke(
        app,
        [
            "run",
            "movielens-100k-posters",
            "--set",
            "freedom.befa.t=0.5",
            "--set",
            "freedom.embedding_dim=8",
            "--models",
            "freedom",
            "--adapters",
            "befa",
            "--epochs",
            "1",
            "--recommend-k",
            "0",
            "--no-verify-checkpoints",
            "--encoder",
            "text=imagebind:tiny@random",
            "--device",
            "cpu",
            "--run-name",
            "set-t",
            "--home",
            str(home),
            "--feature-store",
            str(home / "features"),
            "--datasets-root",
            str(datasets_root),
        ],
    )
    assert result.exit_code == 0, result.output
    folder = home / "runs" / "pipelines" / "set-t"
    assert json.loads((folder / "params.json").read_text())["model_overrides"] == {
        "freedom": {"befa.t": 0.5, "embedding_dim": 8}
    }
    run_dir = folder / "runs" / "freedom-befa"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["adapter"] == "befa" and record["config"]["befa"]["t"] == 0.5
    assert record["config"]["embedding_dim"] == 8
    # the model rebuilt from that record (what evaluation and serving do) carries t = 0.5 in every adapter
    features = load_run_features(RunRecord.load(run_dir), FeatureStore(home / "features"), run_dir)
    trained = load_trained(run_dir, features=features, device="cpu")
    adapters = [m for m in trained.model.modules() if isinstance(m, BeFA)]
    assert adapters and all(a.t == 0.5 for a in adapters)
