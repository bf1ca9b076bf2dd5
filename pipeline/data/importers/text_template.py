"""``--text-template``: an item's text built from several columns of the item table.

    --text-template '{name}. {product_type}, {colour}. {description}'

Each ``{column}`` is replaced by that row's cell (stripped; an empty cell gives nothing),
the rest is kept as written, and the result is stripped. A row whose every named cell is
empty gets no text (an empty text, reported as any empty text is). ``{{`` and ``}}`` write
literal braces. Only plain column names: no attribute or index access, conversion or
format spec (the template comes from a command line or a deployment parameter), so a
column whose name holds ``.``, ``[``, ``!`` or ``:`` cannot be named (rename it).

The template is checked twice before any work: its form when the options are built, and
its columns against the item table's header before any table is read in full, an unknown
column named with the columns the table has.
"""

from __future__ import annotations

import string
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pipeline.data.catalog import CatalogError
from pipeline.data.importers.validation import read_table

Part = tuple[str, str | None]  # (literal text, column or None)


def parse_text_template(template: str) -> list[Part]:
    """(literal, column) pairs; ValueError naming what is not allowed."""
    try:
        raw = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
    parts: list[Part] = []
    for literal, field, spec, conversion in raw:
        if field is None:
            parts.append((literal, None))
            continue
        shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if not field.strip() or spec or conversion or any(c in field for c in ".[]"):
            raise ValueError(
                f"{template!r}: {shown} is not a template field; name a column of the item table, "
                "e.g. {title} or {description} (write {{ and }} for literal braces)"
            )
        parts.append((literal, field))
    if not any(column for _, column in parts):
        raise ValueError(f"{template!r} names no column: every item would get the same text")
    return parts


def template_columns(template: str) -> list[str]:
    """The columns the template names, in order, each once."""
    return list(dict.fromkeys(column for _, column in parse_text_template(template) if column))


def table_columns(path: str | Path, what: str = "item table") -> list[str]:
    """The header of a CSV/TSV or Parquet table, without reading its rows."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            return list(pq.read_schema(path).names)
        except (OSError, ValueError) as exc:
            raise CatalogError(path, f"cannot parse {what}: {exc}") from exc
    return list(read_table(path, what, nrows=0).columns)


def check_text_template(template: str, path: str | Path) -> None:
    """Every column the template names is in the header of the item table at ``path``; else
    an error naming them and the columns the table has."""
    columns = table_columns(path)
    unknown = [c for c in template_columns(template) if c not in columns]
    if unknown:
        raise CatalogError(
            path,
            f"--text-template {template!r} names {'columns' if len(unknown) > 1 else 'a column'} the item table "
            f"does not have: {', '.join(repr(c) for c in unknown)}; its columns are {columns}",
        )


def render_text_template(template: str, table: pd.DataFrame) -> pd.Series:
    """Each row's text (see the module docstring); the table must hold every named column."""
    out = pd.Series([""] * len(table), index=table.index, dtype=object)
    filled = pd.Series(False, index=table.index)
    for literal, column in parse_text_template(template):
        out = out + literal
        if column is not None:
            cells = table[column].fillna("").astype(str).str.strip()
            out = out + cells
            filled |= cells.astype(bool)
    return out.str.strip().where(filled, "")
