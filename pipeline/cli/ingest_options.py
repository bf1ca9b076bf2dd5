"""The importer options on the command line, derived from the importers' option models.

``befa ingest`` and ``befa run`` take the same ingest options, and the deployment takes
them as ``ingest_options``: every field of every importer's ``Options`` model (a
pydantic model in :mod:`pipeline.data.importers`) becomes one ``--flag`` whose help is
the field's description, so a new importer option appears in both commands without
being restated. Column names go through one ``--column KEY=NAME`` option (eight keys,
one flag). ``root`` (``--datasets-root``) and ``name`` (``--as`` / the dataset) are named
by each command itself.

:class:`ImporterHelpCommand` makes ``befa ingest generic --help`` show the generic
importer's own help: its file format and only the options that apply to it.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from typer.core import TyperCommand

from pipeline.cli.common import fail
from pipeline.data.importers import IMPORTERS

# named by the commands themselves, not per importer (image_cache: set from the settings)
_OWN = ("root", "name", "image_cache")


def _fields() -> dict[str, tuple[Any, list[str]]]:
    """option key -> (pydantic field of the first importer that has it, importers that take it)."""
    out: dict[str, tuple[Any, list[str]]] = {}
    for name, importer in IMPORTERS.items():
        for key, field in importer.Options.model_fields.items():
            if key in _OWN or key.endswith("_column"):
                continue
            first, users = out.setdefault(key, (field, []))
            users.append(name)
            if first.description is None and field.description:
                out[key] = (field, users)
    return out


FIELDS = _fields()
COLUMN_KEYS = sorted({k for imp in IMPORTERS.values() for k in imp.Options.model_fields if k.endswith("_column")})


def _base_type(annotation: Any) -> Any:
    """``Path | None`` -> Path, ``Literal['a', 'b']`` -> str: what the command line parses."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return str
    return annotation if annotation in (Path, float, int, str, bool) else str


def _option(key: str, field: Any, users: list[str], panel: str | None = None) -> tuple[Any, Any]:
    """(annotation, typer.Option) of one importer option."""
    annotation, option = _plain_option(key, field, users)
    option.rich_help_panel = panel
    return annotation, option


def _plain_option(key: str, field: Any, users: list[str]) -> tuple[Any, Any]:
    flag = "--" + key.replace("_", "-")
    help_text = field.description or key.replace("_", " ")
    choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else ()
    if choices:
        help_text += f" (one of {', '.join(map(str, choices))})"
    if len(users) < len(IMPORTERS):
        help_text += f" (for {', '.join(users)})"
    base = _base_type(field.annotation)
    if base is bool and field.default is False:
        return bool, typer.Option(False, flag, help=help_text, show_default=False)
    if base is bool:
        return Optional[bool], typer.Option(None, f"{flag}/--no-{flag[2:]}", help=help_text, show_default=False)
    return Optional[base], typer.Option(None, flag, help=help_text, show_default=False)


COLUMN_OPTION = typer.Option(
    [], "--column", help=f"column name, KEY=NAME (e.g. --column item_id_column=sku); keys: {', '.join(COLUMN_KEYS)}"
)


def collect(values: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    """The importer options given on the command line (paths absolute: they are recorded)."""
    options: dict[str, Any] = {}
    for key, value in values.items():
        if value is None or (value is False and FIELDS[key][0].default is False):
            continue
        options[key] = Path(os.path.abspath(os.path.expanduser(value))) if isinstance(value, Path) else value
    for mapping in columns:
        key, sep, value = mapping.partition("=")
        if not sep or key not in COLUMN_KEYS or not value:
            fail(f"--column expects KEY=NAME with KEY one of {', '.join(COLUMN_KEYS)}; got {mapping!r}")
        options[key] = value
    return options


def with_ingest_options(fn: Callable[..., Any] | None = None, *, panel: str | None = None) -> Any:
    """Add every importer option (and ``--column``) to a command; the command receives them
    as one ``ingest_options`` dict holding only the options given. ``panel``: the help
    section they are listed in (``@with_ingest_options(panel=...)``)."""
    if fn is None:
        return functools.partial(with_ingest_options, panel=panel)
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.name != "ingest_options"]
    extra, annotations = [], {}
    for key, (field, users) in FIELDS.items():
        annotation, default = _option(key, field, users, panel)
        extra.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
        annotations[key] = annotation
    column = copy.copy(COLUMN_OPTION)
    column.rich_help_panel = panel
    extra.append(inspect.Parameter("column", inspect.Parameter.KEYWORD_ONLY, default=column, annotation=list[str]))
    annotations["column"] = list[str]

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        given = {key: kwargs.pop(key) for key in FIELDS}
        kwargs["ingest_options"] = collect(given, kwargs.pop("column"))
        return fn(*args, **kwargs)

    # keyword-only parameters must follow the command's own (typer reads this signature)
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra
    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != "ingest_options"} | annotations
    return command


class ImporterHelpCommand(TyperCommand):
    """``befa ingest NAME --help`` with NAME an importer: that importer's help (its format,
    from its module's docstring) and only the options it takes."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if "--help" in args:
            name = next((a for a in args if a in IMPORTERS), None)
            if name is not None:
                typer.echo(self.importer_help(ctx, name), color=ctx.color)
                ctx.exit(0)
        return super().parse_args(ctx, args)

    def importer_help(self, ctx: typer.Context, name: str) -> str:
        importer = IMPORTERS[name]
        takes = set(importer.Options.model_fields)
        keep = [
            p
            for p in self.params
            if p.param_type_name != "argument"
            and (p.name not in FIELDS or p.name in takes)
            and (p.name != "column" or any(k.endswith("_column") for k in takes))
            and (p.name != "catalog_name" or importer.dataset is None)
        ]
        doc = inspect.getdoc(sys.modules[type(importer).__module__]) or ""
        # \b keeps click from re-flowing the format tables
        text = "\n\n".join("\b\n" + para for para in doc.split("\n\n"))
        # plain (not rich) help: the format's tables and {item_id[:3]} must print as written
        sub = TyperCommand(name=f"{ctx.command_path} {name}", params=keep, help=text, rich_markup_mode=None)
        with typer.Context(sub, info_name=f"{ctx.command_path} {name}") as sub_ctx:
            return sub.get_help(sub_ctx)
