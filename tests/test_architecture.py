"""The layering rule, held by a walk over every module's ``ast`` imports.

Floors, lowest first; a module may import its own floor and the floors below it::

    storage - (pipeline.settings, pipeline.device, pipeline.cluster, pipeline.summary, pipeline.quiet,
    pipeline.cpu_threads)
    - (encoders, models) - pipeline.data - pipeline.features - pipeline.evaluation
    - pipeline.training - pipeline.serving - pipeline.reporting - pipeline.job
    - pipeline.study - pipeline.cli

The floors follow the order the job runs: data is ingested, features are extracted from
it, then models are trained and evaluated on both.

``flows`` (Prefect only) may import ``pipeline.job``, ``pipeline.study``,
``pipeline.reporting``, ``pipeline.training`` (it implements the run-executor interface on
Prefect's task runner), ``pipeline.settings``, ``pipeline.cluster``, ``pipeline.quiet`` and
``pipeline.cpu_threads``, and
nothing else of the core; only the CLI's Prefect commands import ``flows``, lazily, inside
the command. First-party imports sit at the top of files (imports inside functions hid
cycles before), and the module graph has no cycle.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("storage", "encoders", "models", "pipeline", "flows")
FLOORS: list[tuple[str, ...]] = [
    ("storage",),
    (
        "pipeline.settings",
        "pipeline.device",
        "pipeline.cluster",
        "pipeline.summary",
        "pipeline.quiet",
        "pipeline.cpu_threads",
    ),
    ("encoders", "models"),
    ("pipeline.data",),
    ("pipeline.features",),
    ("pipeline.evaluation",),
    ("pipeline.training",),
    ("pipeline.serving",),
    ("pipeline.reporting",),
    ("pipeline.job",),
    ("pipeline.study",),
    ("pipeline.cli",),
]
# flows implements training's run-executor interface on Prefect's task runner, hence pipeline.training
FLOWS_MAY_IMPORT = (
    "flows",
    "pipeline.job",
    "pipeline.study",
    "pipeline.reporting",
    "pipeline.training",
    "pipeline.settings",
    "pipeline.cluster",
    "pipeline.quiet",
    "pipeline.cpu_threads",
)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (dotted)
    line: int
    top_level: bool


def _unit(module: str) -> str:
    """The floor unit a module belongs to (``pipeline.job.run`` -> ``pipeline.job``)."""
    parts = module.split(".")
    if parts[0] == "pipeline" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def _floor(unit: str) -> int | None:
    for i, units in enumerate(FLOORS):
        if unit in units:
            return i
    return None


def imports_of(module: str, source: str, known: set[str]) -> list[Import]:
    """First-party imports of one module; ``from pkg import sub`` resolves to the submodule."""
    tree = ast.parse(source)
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                out.append(Import(module, target, node.lineno, id(node) in top))
    return out


def violations(sources: dict[str, str]) -> list[str]:
    """Every wrong-way import, function-level first-party import and import cycle."""
    known = set(sources)
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, source in sources.items():
        for imp in imports_of(module, source, known):
            here, there = _unit(module), _unit(imp.target)
            where = f"{module}:{imp.line} imports {imp.target}"
            lazy_flows = here == "pipeline.cli" and there == "flows" and not imp.top_level
            if not imp.top_level and not lazy_flows:
                problems.append(f"{where} inside a function (first-party imports go at the top)")
            if here == "flows":
                if there not in FLOWS_MAY_IMPORT:
                    problems.append(f"{where}: flows may import only {', '.join(FLOWS_MAY_IMPORT)}")
            elif there == "flows":
                if not lazy_flows:
                    problems.append(f"{where}: only the CLI's Prefect commands import flows (inside the command)")
            else:
                a, b = _floor(here), _floor(there)
                if a is None or b is None:
                    problems.append(f"{where}: {here if a is None else there} is on no floor")
                elif b > a or (a == b and here != there):
                    problems.append(f"{where}: {there} is {'above' if b > a else 'beside'} {here}")
            if imp.target in graph and imp.target != module and not lazy_flows:
                graph[module].add(imp.target)
    problems.extend(f"import cycle: {' -> '.join(c)}" for c in _cycles(graph))
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def repo_sources() -> dict[str, str]:
    sources = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            sources[".".join(parts)] = path.read_text()
    return sources


def test_the_tree_keeps_the_layering_rule():
    assert violations(repo_sources()) == []


def test_the_checker_catches_a_wrong_way_import():
    sources = {
        "storage": "",
        "storage.keys": "from pipeline.job.run import run_pipeline\n",
        "pipeline": "",
        "pipeline.job": "",
        "pipeline.job.run": "",
    }
    assert violations(sources) == ["storage.keys:1 imports pipeline.job.run: pipeline.job is above storage"]


def test_the_checker_catches_lazy_imports_cycles_and_flows():
    sources = {
        "pipeline": "",
        "pipeline.data": "",
        "pipeline.data.a": "from pipeline.data.b import x\n",
        "pipeline.data.b": "def f():\n    from pipeline.data.a import y\n",
        "pipeline.reporting": "",
        "pipeline.reporting.r": "import flows.artifacts\n",
        "pipeline.cli": "",
        "pipeline.cli.main": "def serve():\n    from flows.serve import main\n",
        "flows": "",
        "flows.artifacts": "from pipeline.serving.servable import load_servable\n",
        "flows.serve": "",
        "pipeline.serving": "",
        "pipeline.serving.servable": "",
    }
    found = violations(sources)
    assert "pipeline.data.b:2 imports pipeline.data.a inside a function (first-party imports go at the top)" in found
    assert "import cycle: pipeline.data.a -> pipeline.data.b -> pipeline.data.a" in found
    assert (
        "pipeline.reporting.r:1 imports flows.artifacts: "
        "only the CLI's Prefect commands import flows (inside the command)" in found
    )
    assert any(
        p.startswith("flows.artifacts:1 imports pipeline.serving.servable: flows may import only") for p in found
    )
    assert not any(p.startswith("pipeline.cli.main") for p in found)  # the lazy Prefect command is the allowed case


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 420, 65  # "about 400 / about 60"
EXCUSE = "must be longer"  # a module docstring sentence that says why one is


def too_long(sources: dict[str, str]) -> list[str]:
    """Modules and functions over the size limits whose module docstring gives no reason."""
    out = []
    for module, source in sources.items():
        if _unit(module) not in ("storage", "flows") and not module.startswith("pipeline"):
            continue
        tree = ast.parse(source)
        if EXCUSE in (ast.get_docstring(tree) or ""):
            continue
        if source.count("\n") > MAX_MODULE_LINES:
            out.append(f"{module}: {source.count(chr(10))} lines")
        for node in ast.walk(tree):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
            ):
                out.append(f"{module}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    return out


def test_modules_and_functions_stay_small():
    assert too_long(repo_sources()) == []


# -- typed records at the reporting boundary ------------------------------------------------
UNTYPED = ("dict[str, Any]", "Dict[str, Any]", "dict[str, object]")


def untyped_inputs(sources: dict[str, str], unit: str = "pipeline.reporting") -> list[str]:
    """Parameters of public functions and fields of classes in ``unit`` annotated as a bare
    ``dict[str, Any]`` (alone or inside a list/union): data that should arrive as a record."""
    out = []
    for module, source in sources.items():
        if _unit(module) != unit:
            continue
        tree = ast.parse(source)
        for node in ast.walk(tree):
            annotated: list[tuple[str, ast.expr | None]] = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                annotated = [(f"{node.name}({a.arg})", a.annotation) for a in args]
            elif isinstance(node, ast.ClassDef):
                annotated = [
                    (f"{node.name}.{s.target.id}", s.annotation)
                    for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                ]
            for name, annotation in annotated:
                text = ast.unparse(annotation) if annotation is not None else ""
                if any(u in text for u in UNTYPED):
                    out.append(f"{module}: {name}: {text}")
    return out


def test_reporting_takes_records_not_dicts():
    """What job/, study/ and training/ hand to reporting/ arrives typed: 18 such parameters and
    fields at 5eeaac2 (ReportContext 4, StudyData 14), 0 now."""
    assert untyped_inputs(repo_sources()) == []


def test_the_record_check_catches_a_dict_field():
    src = (
        "class Ctx(BaseModel):\n    dataset: dict[str, Any] = {}\n\n"
        "def render(ctx: Ctx, extra: list[dict[str, Any]]) -> str: ...\n"
    )
    found = untyped_inputs({"pipeline.reporting.x": src})
    assert found == [
        "pipeline.reporting.x: Ctx.dataset: dict[str, Any]",
        "pipeline.reporting.x: render(extra): list[dict[str, Any]]",
    ]
