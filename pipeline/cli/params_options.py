"""Command-line options derived from a parameter model, and ``--set MODEL.KEY=VALUE``.

``befa run`` takes :class:`~pipeline.job.params.PipelineParams` and ``befa study``
:class:`~pipeline.study.params.StudyParams`: :func:`with_params` gives a command one
``--flag`` per field of the model it is handed (``split_seed`` -> ``--split-seed``), whose
help is the field's description and whose shown default is the model's default, so a new
field is a new flag without touching the command. Only the options the user gave reach the
model (the model's own defaults apply to the rest), and the model validates them: a bad
value fails with the flag named, exit 2.

What a flag takes follows the field's type:

- a scalar (``int``, ``float``, ``str``, a path) as itself; a ``Literal`` is a choice;
- a ``bool`` is ``--x/--no-x``;
- a list of scalars is a comma list (``--models lightgcn,freedom``, ``--seeds 999,1000``),
  a list of lists is ``;``-separated comma lists (``--modality-sets "image;text;image,text"``);
- ``none`` means None where the field may be None and its default is not
  (``--sweep-t none``, ``--cold-fraction none``);
- a mapping is JSON (``--grid '{"freedom": {"lr": [0.001]}}'``); a field that is a
  string or a mapping (``encoder``) takes the string, or JSON when it starts with ``{``.

``model_overrides`` and ``ingest_options`` get no flag of their own: the first is filled
by ``--set MODEL.KEY=VALUE`` (:func:`parse_set`), the second by the importer options
(:mod:`pipeline.cli.ingest_options`).
"""

from __future__ import annotations

import functools
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import typer
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from models import MODELS, make_config, parse_overrides
from pipeline.cli.common import fail

# filled by --set and by the importer options, not by a flag of their own
NOT_FLAGS = ("model_overrides", "ingest_options")
SCALARS = (int, float, str, Path)
SET_HELP = (
    "Model config override MODEL.KEY=VALUE (JSON value; dotted keys reach nested sections), repeatable: "
    "--set freedom.befa.t=0.5, --set '*.embedding_dim=16' for every model."
)
CTX = "_params_ctx"  # the context parameter with_params adds (it tells given options from defaults)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


# -- what a field's flag takes ----------------------------------------------------------
def _optional(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) < len(typing.get_args(annotation)):
            inner = args[0] if len(args) == 1 else typing.Union[tuple(args)]
            return inner, True
    return annotation, False


def _is_scalar(annotation: Any) -> bool:
    return annotation in SCALARS or typing.get_origin(annotation) is typing.Literal


def _list_of(annotation: Any) -> Any:
    """The element type of ``list[X]`` (None for anything else)."""
    if typing.get_origin(annotation) in (list, tuple, set) and typing.get_args(annotation):
        return typing.get_args(annotation)[0]
    return None


def _members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def shape(annotation: Any) -> str:
    """How a field is written on the command line: bool, scalar, list, lists or json."""
    inner, _ = _optional(annotation)
    if inner is bool:
        return "bool"
    if _is_scalar(inner):
        return "scalar"
    element = _list_of(inner)
    if element is not None and _is_scalar(element):
        return "list"
    if element is not None and _list_of(element) is not None and _is_scalar(_list_of(element)):
        return "lists"
    return "json"


def _default(field: FieldInfo) -> Any:
    return field.get_default(call_default_factory=True)


def format_value(value: Any, how: str) -> str:
    """A value as it is written on the command line (the shown default)."""
    if value is None:
        return "none"
    if how == "list":
        return ",".join(map(str, value))
    if how == "lists":
        return ";".join(",".join(map(str, v)) for v in value)
    if how == "json" and not isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _raw(text: str, how: str, inner: Any) -> Any:
    """The command-line text as the structure the field's type validates."""
    if how == "list":
        return [v.strip() for v in text.split(",") if v.strip()]
    if how == "lists":
        return [[v.strip() for v in part.split(",") if v.strip()] for part in text.split(";") if part.strip()]
    if how == "json":
        takes_text = any(m is str or typing.get_origin(m) is typing.Literal for m in _members(inner))
        if not takes_text or text.lstrip().startswith(("{", "[")):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expects JSON: {exc}") from None
    return text


def _msg(err: Any) -> str:
    """A pydantic error's message, as one clause: 'value error, x' -> 'x'."""
    msg = err["msg"].removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def value_parser(name: str, field: FieldInfo) -> Callable[[str], Any]:
    """Text -> the field's value, checked against the field's type (its validators run later, in the model)."""
    how = shape(field.annotation)
    inner, optional = _optional(field.annotation)
    adapter = TypeAdapter(field.annotation)

    def parse(text: Any) -> Any:
        if not isinstance(text, str):  # a default, already a value
            return text
        if optional and text.strip().lower() == "none":
            return None
        try:
            return adapter.validate_python(_raw(text, how, inner))
        except ValidationError as exc:
            raise typer.BadParameter("; ".join(dict.fromkeys(_msg(e) for e in exc.errors()))) from None
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    parse.__name__ = name
    return parse


def _metavar(name: str, field: FieldInfo) -> str:
    """Short (help tables are narrow on 80 columns); the help text says the rest."""
    how = shape(field.annotation)
    inner, _ = _optional(field.annotation)
    if how in ("list", "lists"):
        return how.upper()
    if how == "json":
        return "JSON" if all(typing.get_origin(m) is dict for m in _members(inner)) else "TEXT"
    if typing.get_origin(inner) is typing.Literal:
        return "CHOICE"
    return getattr(inner, "__name__", "TEXT").upper()


def _choices(annotation: Any) -> tuple[Any, ...]:
    """The values of a Literal field, or of a list of them (empty for anything else)."""
    inner, _ = _optional(annotation)
    inner = _list_of(inner) or inner
    return typing.get_args(inner) if typing.get_origin(inner) is typing.Literal else ()


def field_option(name: str, field: FieldInfo, aliases: Sequence[str] = ()) -> tuple[Any, Any]:
    """(annotation, typer.Option) of one field: the flag, its help, the model's default shown."""
    how = shape(field.annotation)
    inner, optional = _optional(field.annotation)
    default = _default(field)
    flag = flag_of(name)
    help_text = field.description or name.replace("_", " ")
    choices = ", ".join(map(str, _choices(field.annotation)))
    hints = {"list": "comma list", "lists": "';'-separated comma lists", "json": "JSON"}
    if how in hints:
        help_text += (
            " (or JSON)" if _metavar(name, field) == "TEXT" else f" ({hints[how]}{' of ' + choices if choices else ''})"
        )
    elif choices:
        help_text += f" (one of {choices})"
    if optional and default is not None:
        help_text += " ('none' for None)"
    if how == "bool":
        return bool, typer.Option(bool(default), f"{flag}/--no-{flag[2:]}", *aliases, help=help_text)
    if how == "scalar" and (not optional or default is None):
        annotation = Optional[inner] if optional else inner
        metavar = "CHOICE" if choices else None
        return annotation, typer.Option(default, flag, *aliases, help=help_text, metavar=metavar)
    # the default as it is written (shown so); never passed on: only given options reach the model
    return Optional[Any], typer.Option(
        None if default is None else format_value(default, how),
        flag,
        *aliases,
        help=help_text,
        parser=value_parser(name, field),
        metavar=_metavar(name, field),
    )


def flag_fields(model: type[BaseModel], skip: Sequence[str] = NOT_FLAGS) -> dict[str, FieldInfo]:
    """The fields of ``model`` that get a flag."""
    return {name: field for name, field in model.model_fields.items() if name not in skip}


# -- the decorator ------------------------------------------------------------------------------
def with_params(
    model: type[BaseModel],
    aliases: Mapping[str, Sequence[str]] | None = None,
    skip: Sequence[str] = NOT_FLAGS,
    panel: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of ``model``; it receives the fields the user
    gave as one ``params`` dict (field -> value). A field the command declares itself (the
    positional ``dataset`` of ``befa run``) keeps its declaration, and is in ``params`` too."""

    aliases = dict(aliases or {})

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != "params"]
        own_names = {p.name for p in own}
        fields = flag_fields(model, skip)
        derived = {name: field for name, field in fields.items() if name not in own_names}
        extra, annotations = [], {}
        for name, field in derived.items():
            annotation, option = field_option(name, field, aliases.get(name, ()))
            if panel:
                option.rich_help_panel = panel
            extra.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
            annotations[name] = annotation
        extra.append(inspect.Parameter(CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
        annotations[CTX] = typer.Context

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            ctx = kwargs.pop(CTX)
            given = {}
            for name in fields:
                value = kwargs.pop(name) if name in derived else kwargs.get(name)
                if _given(ctx, name):
                    given[name] = value
            return fn(*args, params=given, **kwargs)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != "params"} | annotations
        return command

    return decorate


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave this option (command line or environment), not its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def build_params(model: type[BaseModel], given: Mapping[str, Any]) -> BaseModel:
    """The model from the options given; a value the model rejects fails naming its flag (exit 2)."""
    try:
        return model.model_validate(dict(given))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            where = flag_of(field) if field else "parameters"
            lines.append(f"{where}: {_msg(err)}")
        fail("; ".join(lines))
    raise AssertionError("unreachable")  # fail() exits


# -- --set MODEL.KEY=VALUE ------------------------------------------------------------------
def _split_set(item: str) -> tuple[str, str, Any]:
    """``freedom.befa.t=0.5`` -> ("freedom", "befa.t", 0.5); the model part may be missing ("")."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        fail(f"--set expects MODEL.KEY=VALUE, got {item!r}")
    key = key.strip()
    head, dot, rest = key.partition(".")
    model = head if dot and rest and (head == "*" or head in MODELS) else ""
    name = rest if model else key
    return model, name, parse_overrides([f"{name}={value}"])[name]


def parse_set(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--set`` of ``befa run`` / ``befa study`` -> ``model_overrides`` (model or '*' -> {key: value})."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        model, key, value = _split_set(item)
        if not model:
            fail(
                f"--set {item}: name the model: MODEL.KEY=VALUE with MODEL one of {', '.join(MODELS)}, or '*' for "
                f"every model (e.g. --set freedom.{item} or --set '*.{item}')"
            )
        out.setdefault(model, {})[key] = value
    return out


def train_overrides(items: Sequence[str], model: str) -> dict[str, Any]:
    """``--set`` of ``befa train``: KEY=VALUE applies to the trained model, and so does
    MODEL.KEY=VALUE when MODEL is that model or '*'; another model is an error."""
    out: dict[str, Any] = {}
    for item in items:
        named, key, value = _split_set(item)
        if named not in ("", "*", model):
            fail(f"--set {item}: names model {named!r}, but this command trains {model!r} (--model)")
        out[key] = value
    return out


def check_set(overrides: Mapping[str, Mapping[str, Any]], models: Sequence[str]) -> None:
    """Each model's ``--set`` overrides against its config (``models.make_config``), before any
    work, with the override named; the command's own validation (``validate_params``,
    ``validate_study``) checks them again with the adapters."""
    for named in overrides:
        if named != "*" and named not in models:
            fail(f"--set {named}.*: {named!r} is not among the models of this command ({', '.join(models)})")
    for model in models:
        merged = {**overrides.get("*", {}), **overrides.get(model, {})}
        if not merged or model not in MODELS:  # an unknown model: the command's validation names it
            continue
        try:
            make_config(MODELS[model], merged)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            fail(f"--set {_source(overrides, model, key)}={merged.get(key, err.get('input'))}: {err['msg'].lower()}")
        except (KeyError, ValueError) as exc:
            fail(f"--set ({model}): {exc.args[0] if exc.args else exc}")


def _source(overrides: Mapping[str, Mapping[str, Any]], model: str, key: str) -> str:
    return f"{model}.{key}" if key in overrides.get(model, {}) else f"*.{key}"


def set_option(panel: str | None = None) -> Any:
    """``--set`` (repeatable), listed in ``panel`` of the help."""
    return typer.Option([], "--set", help=SET_HELP, metavar="KEY=VALUE", rich_help_panel=panel)
