"""The README's commands work as written: parsed from README.md, checked against the code.

What is read from README.md:

- every line of every fenced ``bash``/``sh`` block (continuation lines joined, ``# ...``
  comments dropped) that starts with ``befa``, ``prefect``, ``ray`` or ``make``; ``export``
  lines are checked for the server address;
- in the "Orchestration (Prefect)" section (the Ray paragraph included), the inline code
  spans that are commands (``befa ...``, ``prefect ...``, ``ray ...``) or fragments of
  one: ``--param k=v`` is a parameter of ``prefect deployment run befa/full-pipeline``,
  another ``--option`` continues the last inline ``befa`` command of its paragraph
  (``befa serve --interval 600``, ``--cron "0 3 * * *"`` -> ``befa serve --cron ...``).

What each kind of command must pass:

- ``befa SUB ...``: SUB exists and click parses every argument and option shown (the
  command's ``make_context``, nothing runs); ``befa serve`` / ``befa server`` pass their
  options on, so those go through ``flows.serve`` / ``flows.server``'s own parsers; ``befa
  run`` is also run up to the pipeline's parameter validation (``run_pipeline`` swapped for
  ``validate_params``).
- ``prefect deployment run NAME ...``: prefect's own CLI parser accepts the options
  (cyclopts ``parse_args``, nothing runs); NAME is a deployment that ``befa serve``
  registers; the parameters are built as the CLI builds them (``--params`` JSON, then
  ``--param k=v`` with prefect's ``load_json_key_values``) and every key is a parameter of
  the deployment (the CLI's check); they validate against the deployment's parameter
  schema (the server's check), through the flow's pydantic parameter model
  (``Flow.validate_parameters``, what the run does first) and, for ``befa/full-pipeline``,
  through ``pipeline.job.run.validate_params`` (what the flow does before any task).
- other ``prefect``/``ray`` commands: their CLI parses them (cyclopts / click).
- ``make TARGET``: TARGET is a rule of the Makefile.

Placeholders: a README path under ``/models/`` or ``/data/`` (a checkpoint, a user's
item table) cannot exist here; the test replaces each with a file or folder of the same
name under a temporary folder before validation, and checks that the README path really
is absent (so only placeholders are substituted). ``<...>`` stands for one argument.

The test then fails when an option is renamed, a parameter removed, a deployment renamed,
or the README gains a command the code does not accept.
"""

from __future__ import annotations

import inspect
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from pipeline.job.params import PipelineError, validate_params

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SECTION = "## Orchestration (Prefect)"
PLACEHOLDER_ROOTS = ("/models/", "/data/")
PIPELINE = "befa/full-pipeline"


@dataclass(frozen=True)
class Command:
    line: int
    text: str
    kind: str  # "code" (fenced block) or "inline"

    @property
    def tokens(self) -> list[str]:
        # "<run folder>" is one argument
        return shlex.split(re.sub(r"<([^>]*)>", lambda m: "PLACEHOLDER_" + re.sub(r"\W", "_", m.group(1)), self.text), comments=True)

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.kind}): {self.text}"


def fenced_commands(text: str) -> list[Command]:
    out: list[Command] = []
    lang, pending, start = None, "", 0
    for no, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            lang = None if lang is not None else (stripped[3:].strip() or "text")
            continue
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        if not pending:
            start = no
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line, pending = re.sub(r"\s+# .*$", "", (pending + stripped)).strip(), ""  # drop a trailing comment
        if line and not line.startswith("#"):
            out.append(Command(start, line, "code"))
    return out


def inline_commands(text: str, section: str = SECTION) -> list[Command]:
    lines = text.splitlines()
    begin = next(i for i, x in enumerate(lines) if x.strip() == section)
    end = next((i for i in range(begin + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    out: list[Command] = []
    base: list[str] | None = None
    for i in range(begin, end):
        if not lines[i].strip() or lines[i].startswith("```"):
            base = None  # a new paragraph: fragments no longer continue the previous command
        if lines[i].startswith("```"):
            continue
        for span in re.findall(r"`([^`]+)`", lines[i]):
            span = span.strip()
            first = span.split()[0]
            if first in ("befa", "prefect", "ray") and len(span.split()) > 1 or span == "befa":
                if first == "befa":
                    base = span.split()[:2]
                out.append(Command(i + 1, span, "inline"))
            elif span.startswith("--param "):
                out.append(Command(i + 1, f"prefect deployment run {PIPELINE} {span}", "inline"))
            elif span.startswith("--"):
                assert base is not None, f"README.md:{i + 1}: option fragment `{span}` follows no `befa ...` command in its paragraph"
                out.append(Command(i + 1, " ".join(base) + " " + span, "inline"))
    return out


def readme_commands() -> list[Command]:
    text = README.read_text()
    return fenced_commands(text) + inline_commands(text)


COMMANDS = readme_commands()


def _of(*firsts: str) -> list[Command]:
    return [c for c in COMMANDS if c.tokens and c.tokens[0] in firsts]


# -- befa --------------------------------------------------------------------------
def befa_click():
    """The click command tree of ``befa`` (typer 0.29 vendors click as ``typer._click``)."""
    from pipeline.cli.main import app

    return typer.main.get_command(app)


def parse_befa(tokens: list[str]) -> tuple[str, typer.Context]:
    """Parse ``befa SUB ...`` as click would, without running it; raise typer's click errors (``typer.TyperException``)."""
    assert tokens[0] == "befa" and len(tokens) > 1, f"not a befa subcommand line: {tokens}"
    group = befa_click()
    root = group.make_context("befa", [tokens[1]])
    name = tokens[1]
    cmd = group.get_command(root, name)
    if cmd is None:
        raise typer.BadParameter(f"no such befa command {name!r} (have {sorted(group.list_commands(root))})")
    ctx = cmd.make_context(name, list(tokens[2:]), parent=root)
    if name == "serve":
        from flows.serve import parser

        _argparse_ok(parser(), ctx.args)
    elif name == "server":
        from flows.server import split_argv

        try:
            split_argv(ctx.args)
        except SystemExit as exc:
            raise typer.BadParameter(f"befa server {ctx.args}: rejected by flows.server (exit {exc.code})") from None
    elif ctx.args:
        raise typer.BadParameter(f"unexpected extra arguments {ctx.args}")
    return name, ctx


def _argparse_ok(parser, args: list[str]) -> None:
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        raise typer.BadParameter(f"{parser.prog} rejects {args} (exit {exc.code})") from None


# -- prefect -----------------------------------------------------------------------
def parse_prefect(tokens: list[str]):
    """(command function, bound arguments) as prefect's CLI would parse them; nothing runs."""
    from prefect.cli._app import _app

    assert tokens[0] == "prefect"
    command, bound, _ = _app.parse_args(tokens[1:], print_error=False, exit_on_error=False)
    return command, bound.arguments


def deployments() -> dict[str, Any]:
    """The deployments ``befa serve`` registers, by 'flow/deployment'."""
    from flows.serve import build_deployments

    return {f"{d.flow_name}/{d.name}": d for d in build_deployments()}


def run_parameters(arguments: dict[str, Any]) -> dict[str, Any]:
    """The parameters ``prefect deployment run`` sends, built the way its CLI builds them."""
    from prefect.cli._utilities import load_json_key_values

    multi = json.loads(arguments.get("multiparams") or "{}")
    return {**multi, **load_json_key_values(arguments.get("params") or [], "parameter")}


def substitute_placeholders(value: Any, root: Path, seen: dict[str, Path]) -> Any:
    """Replace README placeholder paths (under /models/, /data/) with existing stand-ins."""
    if isinstance(value, dict):
        return {k: substitute_placeholders(v, root, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_placeholders(v, root, seen) for v in value]
    if not isinstance(value, str):
        return value

    def swap(m: re.Match) -> str:
        readme_path = m.group(0)
        assert not Path(readme_path).exists(), f"{readme_path} exists here: not a placeholder"
        local = root / readme_path.lstrip("/")
        if Path(readme_path).suffix:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.touch()
        else:
            local.mkdir(parents=True, exist_ok=True)
        seen[readme_path] = local
        return str(local)

    pattern = "(?:" + "|".join(re.escape(r) for r in PLACEHOLDER_ROOTS) + r")[^,\s\"']+"
    return re.sub(pattern, swap, value)


def validate_deployment_run(tokens: list[str], settings, root: Path) -> dict[str, Any]:
    """All the checks a ``prefect deployment run`` line meets before its flow does any work."""
    from prefect.utilities.schema_tools import validate

    command, arguments = parse_prefect(tokens)
    assert (command.__module__, command.__name__) == ("prefect.cli.deployment", "run"), f"not `prefect deployment run`: {tokens}"
    known = deployments()
    name = arguments.get("name")
    assert name in known, f"deployment {name!r} is not served by `befa serve` (serves {sorted(known)})"
    deployment = known[name]
    schema = deployment._parameter_openapi_schema.model_dump(exclude_unset=True)
    parameters = run_parameters(arguments)
    unknown = sorted(set(parameters) - set(schema["properties"]))
    assert not unknown, f"{name}: no parameter {unknown} (has {sorted(schema['properties'])})"
    seen: dict[str, Path] = {}
    parameters = substitute_placeholders(parameters, root, seen)
    merged = {**(deployment.parameters or {}), **parameters}
    validate(merged, schema, raise_on_error=True)  # the server, on create_flow_run_from_deployment
    flow = _flow_of(name)
    validated = flow.validate_parameters(merged)  # the flow run, before its body
    if name == PIPELINE:
        # the flow body: its arguments, defaults filled, are the PipelineParams fields
        args = {k: p.default for k, p in inspect.signature(flow.fn).parameters.items()}
        args.update(validated)
        assert not args.pop("use_registered"), "README runs use their own parameters"
        args["ingest_options"] = args["ingest_options"] or {}
        args["model_overrides"] = args["model_overrides"] or {}
        validate_params(args, settings)
    return {"parameters": validated, "substituted": seen}


def _flow_of(name: str):
    from flows.pipeline_flow import befa
    from flows.watch_flow import watch

    return {befa.name: befa, watch.name: watch}[name.split("/")[0]]


# -- fixtures -------------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path, datasets_root):
    from pipeline.settings import get_settings

    return get_settings(home=tmp_path / "home", datasets_root=datasets_root, feature_store=str(tmp_path / "features"))


# -- the README has what the issue asks it to show ----------------------------------------
def test_readme_shows_the_orchestration_commands():
    texts = [c.text for c in COMMANDS]

    def has(pattern: str) -> bool:
        return any(re.search(pattern, t) for t in texts)

    assert has(r"^befa server\b"), "starting the server"
    assert has(r"^befa serve\b"), "serving"
    assert has(rf"^prefect deployment run {PIPELINE} --watch$"), "the plain deployment run"
    assert has(rf"^prefect deployment run {PIPELINE} .*--param encoder="), "a run with another encoder"
    assert has(r"^befa serve .*--(interval|cron)"), "the schedule"
    assert has(r"--param cluster=ray://"), "connecting to a Ray cluster"
    assert has(r"^befa run "), "running without Prefect"


# -- each command ----------------------------------------------------------------------
@pytest.mark.parametrize("cmd", _of("befa"), ids=str)
def test_befa_command_parses(cmd: Command):
    try:
        parse_befa(cmd.tokens)
    except typer.TyperException as exc:
        pytest.fail(f"{cmd}\n  {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("cmd", [c for c in _of("befa") if c.tokens[1] == "run"], ids=str)
def test_befa_run_validates_its_pipeline_parameters(cmd: Command, settings, monkeypatch, tmp_path):
    """``befa run`` as shown (placeholder paths swapped for stand-ins), up to the pipeline's
    parameter validation (then stops)."""
    import pipeline.cli.job as cli_job
    from pipeline.cli.main import app

    seen = {}

    def validate_only(params, settings_, log=None):
        seen["params"] = validate_params(params, settings)
        raise PipelineError("validated; stopping before any work")

    monkeypatch.setattr(cli_job, "run_pipeline", validate_only)

    result = CliRunner().invoke(app, substitute_placeholders(cmd.tokens[1:], tmp_path / "placeholders", {}))
    assert "params" in seen, f"{cmd}\n{result.output}"
    assert "validated; stopping" in result.output, f"{cmd}: validation failed:\n{result.output}"


@pytest.mark.parametrize("cmd", [c for c in _of("prefect") if c.tokens[1:3] == ["deployment", "run"]], ids=str)
def test_deployment_run_parameters_validate(cmd: Command, settings, tmp_path):
    out = validate_deployment_run(cmd.tokens, settings, tmp_path / "placeholders")
    for readme_path in out["substituted"]:
        assert readme_path in cmd.text


@pytest.mark.parametrize("cmd", [c for c in _of("prefect", "ray") if c.tokens[1:3] != ["deployment", "run"]], ids=str)
def test_other_cli_commands_parse(cmd: Command):
    if cmd.tokens[0] == "prefect":
        parse_prefect(cmd.tokens)
    else:
        from ray.scripts.scripts import cli

        group = cli.make_context("ray", [cmd.tokens[1]])
        sub = cli.get_command(group, cmd.tokens[1])
        assert sub is not None, f"{cmd}: no such ray command"
        sub.make_context(cmd.tokens[1], cmd.tokens[2:], parent=group)


@pytest.mark.parametrize("cmd", _of("make"), ids=str)
def test_make_targets_exist(cmd: Command):
    rules = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (REPO / "Makefile").read_text(), flags=re.M))
    targets = [t for t in cmd.tokens[1:] if "=" not in t and not t.startswith("-")]
    assert targets and all(t in rules for t in targets), f"{cmd}: not a Makefile rule: {set(targets) - rules}"


def test_export_points_at_the_local_server():
    from flows.server import parser

    port = parser().get_default("port")
    exports = [c for c in COMMANDS if c.tokens and c.tokens[0] == "export"]
    urls = [t.split("=", 1)[1] for c in exports for t in c.tokens[1:] if t.startswith("PREFECT_API_URL=")]
    assert urls and set(urls) == {f"http://127.0.0.1:{port}/api"}


# -- the checks bite -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "line",
    [
        "befa serve --intervall 600",
        "befa serve --interval often",
        "befa server --prot 4300",
        "befa run movielens-100k-posters --encodr minilm",
        "befa nosuchcommand",
    ],
)
def test_a_wrong_befa_line_fails(line):
    with pytest.raises(typer.TyperException):
        parse_befa(shlex.split(line))


@pytest.mark.parametrize(
    "line, error",
    [
        (f"prefect deployment run {PIPELINE} --wacth", "Unknown option"),
        (f"prefect deployment run {PIPELINE} --param encodr=minilm", "no parameter"),
        (f"prefect deployment run {PIPELINE} --param encoder=nosuchfamily", "encoder"),
        (f"prefect deployment run {PIPELINE} --param epochs=0", "epochs"),
        (f"prefect deployment run {PIPELINE} --param cluster=head:10001", "cluster"),
        (f"prefect deployment run {PIPELINE} --param dataset=no-such-catalog", "no-such-catalog"),
        ("prefect deployment run befa/no-such-deployment", "not served"),
        (f"prefect deployment run {PIPELINE} --param encoder='clip:ViT-B-32@/nonexistent/x.safetensors'", "does not exist"),
    ],
)
def test_a_wrong_deployment_run_fails(line, error, settings, tmp_path):
    with pytest.raises(Exception) as info:
        validate_deployment_run(shlex.split(line), settings, tmp_path / "placeholders")
    assert error in str(info.value)


def test_befa_server_takes_serve_options_mixed_in_or_after_double_dash():
    """``befa server --cron ...`` reaches flows.server without its ``--`` (click drops it)."""
    from flows.server import split_argv

    _, ctx = parse_befa(shlex.split('befa server --port 4300 -- --cron "0 3 * * *"'))
    args, serve_args = split_argv(ctx.args)
    assert args.port == 4300 and serve_args == ["--cron", "0 3 * * *"]
    assert split_argv(["--port", "4300", "--", "--no-schedule"])[1] == ["--no-schedule"]
