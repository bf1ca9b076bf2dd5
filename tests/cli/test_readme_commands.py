"""The documented commands work as written: parsed from README.md and every docs/*.md,
checked against the code. A failure names the file and the line.

What is read from each page:

- every line of every fenced ``bash``/``sh`` block (continuation lines joined, ``# ...``
  comments dropped) that starts with ``befa``, ``prefect``, ``ray`` or ``make``; ``export``
  lines are checked for the server address;
- every inline code span that is a command: ``befa SUB ...``, ``prefect SUB ...``, ``ray
  SUB ...`` (a span may run over a line break; ``...`` and ``[OPTIONAL]`` tokens are left
  out, and an inline span may leave out a required option: it is prose, not a command to
  paste);
- on the orchestration page (``docs/orchestration.md``, the README's former "Orchestration
  (Prefect)" section) also the inline fragments of one: ``--param k=v`` is a parameter of
  ``prefect deployment run befa/full-pipeline``, another ``--option`` continues the last
  inline ``befa`` command of its paragraph (``befa serve --interval 600``, ``--cron "0 3 * *
  *"`` -> ``befa serve --cron ...``).

What each kind of command must pass:

- ``befa SUB ...``: SUB exists and click parses every argument and option shown (the
  command's ``make_context``, down through sub-apps such as ``befa serve``; nothing runs);
  ``befa run`` is also run up to the pipeline's parameter validation (``run_pipeline``
  swapped for ``validate_params``).
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

Placeholders: a documented path under ``/models/`` or ``/data/`` (a checkpoint, a user's
item table) cannot exist here; the test replaces each with a file or folder of the same
name under a temporary folder before validation, and checks that the documented path
really is absent (so only placeholders are substituted). ``<...>`` stands for one argument.

The pages themselves: every relative link and image points to a file that exists (and a
``#anchor`` to a heading of that page), every docs page is linked from the README, and the
README stays short with its layout map on the first screen.

The test then fails when an option is renamed, a parameter removed, a deployment renamed,
a page moved, or the docs gain a command the code does not accept.
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

REPO = next(p for p in Path(__file__).resolve().parents if (p / "Makefile").exists())
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
ORCHESTRATION = REPO / "docs" / "orchestration.md"  # the page whose inline fragments are commands too
PLACEHOLDER_ROOTS = ("/models/", "/data/")
PIPELINE = "befa/full-pipeline"
COMMAND_WORDS = ("befa", "prefect", "ray")
README_MAX_LINES = 250
MAP_WITHIN_LINES = 60


def rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


@dataclass(frozen=True)
class Command:
    file: str
    line: int
    text: str
    kind: str  # "code" (fenced block) or "inline"

    @property
    def tokens(self) -> list[str]:
        # "<run folder>" is one argument
        text = re.sub(r"<([^>]*)>", lambda m: "PLACEHOLDER_" + re.sub(r"\W", "_", m.group(1)), self.text)
        tokens = shlex.split(text, comments=True)
        if self.kind == "inline":  # prose: "befa train ... --resume", "befa run [DATASET]"
            tokens = [t for t in tokens if t != "..." and not re.fullmatch(r"\[[^\]]*\]", t)]
        return tokens

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.kind}): {self.text}"


# -- reading the pages -------------------------------------------------------------------
def fenced_commands(text: str, file: str) -> list[Command]:
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
            out.append(Command(file, start, line, "code"))
    return out


def paragraphs(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each prose paragraph: fenced blocks left out, a blank
    line or a fence ends a paragraph."""
    out: list[tuple[int, str]] = []
    lines: list[str] = []
    start, fenced = 0, False

    def flush() -> None:
        if lines:
            out.append((start, "\n".join(lines)))
        lines.clear()

    for no, raw in enumerate(text.splitlines(), 1):
        if raw.strip().startswith("```"):
            flush()
            fenced = not fenced
            continue
        if fenced:
            continue
        if not raw.strip():
            flush()
            continue
        if not lines:
            start = no
        lines.append(raw)
    flush()
    return out


def code_spans(paragraph: str) -> list[tuple[int, str]]:
    """(line offset in the paragraph, content) of each inline code span; a span may run over a line break."""
    return [
        (paragraph.count("\n", 0, m.start()), " ".join(m.group(1).split()))
        for m in re.finditer(r"`([^`]+)`", paragraph)
    ]


def is_command(span: str) -> bool:
    words = span.split()
    return len(words) > 1 and words[0] in COMMAND_WORDS and re.fullmatch(r"[a-z][a-z0-9-]*", words[1]) is not None


def inline_commands(text: str, file: str, fragments: bool) -> list[Command]:
    out: list[Command] = []
    for start, paragraph in paragraphs(text):
        base: list[str] | None = None  # fragments continue the last befa command of their paragraph
        for offset, span in code_spans(paragraph):
            line = start + offset
            if is_command(span):
                if span.split()[0] == "befa":
                    base = span.split()[:2]
                out.append(Command(file, line, span, "inline"))
            elif not fragments:
                continue
            elif span.startswith("--param "):
                out.append(Command(file, line, f"prefect deployment run {PIPELINE} {span}", "inline"))
            elif span.startswith("--"):
                assert base is not None, (
                    f"{file}:{line}: option fragment `{span}` follows no `befa ...` command in its paragraph"
                )
                out.append(Command(file, line, " ".join(base) + " " + span, "inline"))
    return out


def page_commands(path: Path) -> list[Command]:
    text = path.read_text()
    return fenced_commands(text, rel(path)) + inline_commands(text, rel(path), fragments=path == ORCHESTRATION)


COMMANDS = [c for page in PAGES for c in page_commands(page)]


def _of(*firsts: str) -> list[Command]:
    return [c for c in COMMANDS if c.tokens and c.tokens[0] in firsts]


# -- befa --------------------------------------------------------------------------
def befa_click():
    """The click command tree of ``befa`` (typer 0.29 vendors click as ``typer._click``)."""
    from pipeline.cli.main import app

    return typer.main.get_command(app)


def _leftover(ctx) -> list[str]:
    """What a command left unparsed: a group's subcommand and its arguments, or extra arguments."""
    return [*getattr(ctx, "_protected_args", []), *ctx.args]


def parse_befa(tokens: list[str], inline: bool = False) -> tuple[str, Any]:
    """Parse ``befa SUB ...`` as click would, without running it; raise typer's click errors
    (``typer.TyperException``). ``inline``: a required option may be missing (prose)."""
    assert tokens[0] == "befa" and len(tokens) > 1, f"not a befa subcommand line: {tokens}"
    args = list(tokens[1:])
    helped = "--help" in args  # the help option exits while parsing: check the rest without it
    args = [a for a in args if a != "--help"]
    cmd, ctx, name = befa_click(), None, "befa"
    while True:
        try:
            ctx = cmd.make_context(name, args, parent=ctx, resilient_parsing=helped)
        except typer._click.exceptions.MissingParameter:
            if not inline:
                raise
            ctx = cmd.make_context(name, args, parent=ctx, resilient_parsing=True)
        rest = _leftover(ctx)
        if not rest or not hasattr(cmd, "list_commands") or not cmd.list_commands(ctx):  # no (more) sub-apps
            break
        sub = cmd.get_command(ctx, rest[0])
        if sub is None:
            raise typer.BadParameter(
                f"no such command {' '.join(tokens[: tokens.index(rest[0])] + [rest[0]])!r} "
                f"(have {sorted(cmd.list_commands(ctx))})"
            )
        cmd, name, args = sub, rest[0], rest[1:]
    if rest:
        raise typer.BadParameter(f"unexpected extra arguments {rest}")
    return tokens[1], ctx


def server_port() -> int:
    """The port ``befa server`` starts the Prefect server on by default."""
    group = befa_click()
    cmd = group.get_command(group.make_context("befa", ["server"], resilient_parsing=True), "server")
    return int(next(p.default for p in cmd.params if p.name == "port"))


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
    """Replace documented placeholder paths (under /models/, /data/) with existing stand-ins."""
    if isinstance(value, dict):
        return {k: substitute_placeholders(v, root, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_placeholders(v, root, seen) for v in value]
    if not isinstance(value, str):
        return value

    def swap(m: re.Match) -> str:
        doc_path = m.group(0)
        assert not Path(doc_path).exists(), f"{doc_path} exists here: not a placeholder"
        local = root / doc_path.lstrip("/")
        if Path(doc_path).suffix:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.touch()
        else:
            local.mkdir(parents=True, exist_ok=True)
        seen[doc_path] = local
        return str(local)

    pattern = "(?:" + "|".join(re.escape(r) for r in PLACEHOLDER_ROOTS) + r")[^,\s\"']+"
    return re.sub(pattern, swap, value)


def validate_deployment_run(tokens: list[str], settings, root: Path) -> dict[str, Any]:
    """All the checks a ``prefect deployment run`` line meets before its flow does any work."""
    from prefect.utilities.schema_tools import validate

    command, arguments = parse_prefect(tokens)
    assert (command.__module__, command.__name__) == ("prefect.cli.deployment", "run"), (
        f"not `prefect deployment run`: {tokens}"
    )
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
        assert not args.pop("use_registered"), "documented runs use their own parameters"
        args["ingest_options"] = args["ingest_options"] or {}
        args["model_overrides"] = args["model_overrides"] or {}
        validate_params(args, settings)
    return {"parameters": validated, "substituted": seen}


def _flow_of(name: str):
    from flows.pipeline_flow import befa
    from flows.watch_flow import watch

    return {befa.name: befa, watch.name: watch}[name.split("/")[0]]


# -- links ---------------------------------------------------------------------------------
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


@dataclass(frozen=True)
class Link:
    page: Path
    line: int
    target: str

    @property
    def file(self) -> str:
        return rel(self.page)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: ({self.target})"

    def problem(self) -> str | None:
        """Why the link does not resolve (None: it does)."""
        path, _, anchor = self.target.partition("#")
        target = (self.page.parent / path).resolve() if path else self.page
        if not target.exists():
            return f"no such file {rel(target)}"
        if anchor and target.suffix == ".md" and anchor not in anchors(target):
            return f"no heading with anchor #{anchor} in {rel(target)}"
        return None


def page_links(path: Path) -> list[Link]:
    """The relative links and images of a page's prose (code spans and fenced blocks left out)."""
    out = []
    for start, paragraph in paragraphs(path.read_text()):
        prose = re.sub(r"(?<!\[)`[^`]*`(?!\])", lambda m: " " * len(m.group(0)), paragraph)  # `[c](x.md)` is code
        for m in LINK.finditer(prose):
            if not re.match(r"[a-z][a-z0-9+.-]*:", m.group(1)):  # http:, https:, mailto: ...
                out.append(Link(path, start + paragraph.count("\n", 0, m.start()), m.group(1)))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out: set[str] = set()
    fenced = False
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", raw)):
            base, n = slug(m.group(1)), 1
            name = base
            while name in out:  # repeated headings get -1, -2, ...
                name, n = f"{base}-{n}", n + 1
            out.add(name)
    return out


LINKS = [link for page in PAGES for link in page_links(page)]


# -- fixtures -------------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path, datasets_root):
    from pipeline.settings import get_settings

    return get_settings(home=tmp_path / "home", datasets_root=datasets_root, feature_store=str(tmp_path / "features"))


# -- the pages have what the issues ask them to show --------------------------------------------
def test_the_docs_show_the_orchestration_commands():
    assert ORCHESTRATION.exists(), "the orchestration page moved: update ORCHESTRATION"
    texts = [c.text for c in COMMANDS if c.file == rel(ORCHESTRATION)]

    def has(pattern: str) -> bool:
        return any(re.search(pattern, t) for t in texts)

    assert has(r"^befa server\b"), "starting the server"
    assert has(r"^befa serve\b"), "serving"
    assert has(rf"^prefect deployment run {PIPELINE} --watch$"), "the plain deployment run"
    assert has(rf"^prefect deployment run {PIPELINE} .*--param encoder="), "a run with another encoder"
    assert has(r"^befa serve .*--(interval|cron)"), "the schedule"
    assert has(r"--param cluster=ray://"), "connecting to a Ray cluster"
    assert has(r"^befa run "), "running without Prefect"


def test_the_readme_is_short_with_the_map_on_its_first_screen():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move reference to docs/"
    )
    heading = next((no for no, x in enumerate(lines, 1) if x.strip() == "## Layout"), None)
    assert heading is not None and heading <= MAP_WITHIN_LINES, (
        f"README.md: '## Layout' at line {heading}, not in the first {MAP_WITHIN_LINES}"
    )


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / link.target.split("#")[0]).resolve() for link in LINKS if link.page == README}
    missing = [rel(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("link", LINKS, ids=str)
def test_relative_links_resolve(link: Link):
    problem = link.problem()
    assert problem is None, f"{link}: {problem}"


# -- each command ----------------------------------------------------------------------
@pytest.mark.parametrize("cmd", _of("befa"), ids=str)
def test_befa_command_parses(cmd: Command):
    try:
        parse_befa(cmd.tokens, inline=cmd.kind == "inline")
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
    try:
        out = validate_deployment_run(cmd.tokens, settings, tmp_path / "placeholders")
    except Exception as exc:
        pytest.fail(f"{cmd}\n  {type(exc).__name__}: {exc}")
    for doc_path in out["substituted"]:
        assert doc_path in cmd.text


@pytest.mark.parametrize("cmd", [c for c in _of("prefect", "ray") if c.tokens[1:3] != ["deployment", "run"]], ids=str)
def test_other_cli_commands_parse(cmd: Command):
    try:
        if cmd.tokens[0] == "prefect":
            parse_prefect(cmd.tokens)
        else:
            from ray.scripts.scripts import cli

            group = cli.make_context("ray", [cmd.tokens[1]])
            sub = cli.get_command(group, cmd.tokens[1])
            assert sub is not None, "no such ray command"
            sub.make_context(cmd.tokens[1], cmd.tokens[2:], parent=group)
    except Exception as exc:
        pytest.fail(f"{cmd}\n  {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("cmd", _of("make"), ids=str)
def test_make_targets_exist(cmd: Command):
    rules = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (REPO / "Makefile").read_text(), flags=re.M))
    targets = [t for t in cmd.tokens[1:] if "=" not in t and not t.startswith("-")]
    assert targets and all(t in rules for t in targets), f"{cmd}: not a Makefile rule: {set(targets) - rules}"


def test_export_points_at_the_local_server():
    exports = [c for c in COMMANDS if c.tokens and c.tokens[0] == "export"]
    urls = {
        f"{c.file}:{c.line}": t.split("=", 1)[1]
        for c in exports
        for t in c.tokens[1:]
        if t.startswith("PREFECT_API_URL=")
    }
    want = f"http://127.0.0.1:{server_port()}/api"
    assert urls and all(u == want for u in urls.values()), f"PREFECT_API_URL should be {want}: {urls}"


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


def test_an_inline_command_may_leave_out_a_required_option_but_not_misspell_one():
    parse_befa(shlex.split("befa recommend"), inline=True)  # names the command: RUN left out
    with pytest.raises(typer.TyperException):
        parse_befa(shlex.split("befa recommend"))
    with pytest.raises(typer.TyperException):
        parse_befa(shlex.split("befa recommend --kk 20"), inline=True)


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
        (
            f"prefect deployment run {PIPELINE} --param encoder='clip:ViT-B-32@/nonexistent/x.safetensors'",
            "does not exist",
        ),
    ],
)
def test_a_wrong_deployment_run_fails(line, error, settings, tmp_path):
    with pytest.raises(Exception) as info:
        validate_deployment_run(shlex.split(line), settings, tmp_path / "placeholders")
    assert error in str(info.value)


def test_a_broken_link_or_anchor_fails(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "# Title\n\nSee [a](nope.md), [b](p.md#no-such-heading), [c](p.md#title) and [d](#title),\n"
        "not `[e](x.md)`.\n\n```\n[f](y.md)\n```\n\n![g](img.png) [h](https://example.org)\n"
    )
    (tmp_path / "img.png").touch()
    links = page_links(page)
    assert [(link.target, link.line) for link in links] == [
        ("nope.md", 3),
        ("p.md#no-such-heading", 3),
        ("p.md#title", 3),
        ("#title", 3),
        ("img.png", 10),
    ]
    assert [link.problem() is None for link in links] == [False, False, True, True, True]
    assert (
        slug("Large catalogs (opt-in): `--set max_batches_per_epoch=N`")
        == "large-catalogs-opt-in---set-max_batches_per_epochn"
    )


def test_befa_server_takes_serve_options_mixed_in_or_after_double_dash():
    """``befa server`` passes the serve options on, given among its own or after ``--``; a
    wrong one fails while parsing, before anything starts."""
    _, ctx = parse_befa(shlex.split('befa server --port 4300 --cron "0 3 * * *"'))
    assert ctx.params["port"] == 4300 and ctx.params["cron"] == "0 3 * * *"
    _, ctx = parse_befa(shlex.split("befa server --port 4300 -- --no-schedule"))
    assert ctx.params["port"] == 4300 and ctx.params["after"] == ["--no-schedule"]
    with pytest.raises(typer.TyperException):
        parse_befa(shlex.split("befa server -- --intervall 600"))
