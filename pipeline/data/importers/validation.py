"""Input checks shared by the importers. Every failure is a :class:`CatalogError` naming
the file, the row (1-based, header excluded: data row 1 is line 2 of a CSV) and the problem.

Rules (the same for every importer):

- missing or unreadable file, or a required column absent: error;
- an empty id (item or user), or one holding a control or other non-printable character
  (``\\x00``-``\\x1f``, ``\\x7f``, zero-width and format characters): error;
- duplicate item ids: rows identical in the columns the catalog uses are folded into the
  first one and every fold is reported; rows that differ there are an error naming both
  rows and the differing columns (no row silently "wins");
- a rating that is not a finite number: error;
- a timestamp must be unix seconds from 1970-01-01 to 9999-12-31 (NaN, ``1e30``, negative
  or millisecond values are errors) or an ISO 8601 date; another date form only with
  ``--date-format`` (a strptime format), so ``05/01/2024`` is never guessed as US or EU order
  (:mod:`pipeline.data.importers.timestamps`);
- a file that is not UTF-8 is an error naming the line, data row and byte offset;
- interactions naming unknown items: error listing the first offenders by default;
  ``--on-unknown-items skip`` drops them and reports each one; when *no* interaction names
  a known item it is an error either way, with a hint when the ids differ only in case,
  leading zeros or a trailing ``.0`` (a spreadsheet or a numeric column rewrote them);
- repeat (user, item) interactions: each pair is kept once, as its latest event
  (:func:`fold_repeat_interactions`), counted and stated in the report;
- no items, or no interactions left: error.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Iterable, Literal, Mapping

import numpy as np
import pandas as pd

from pipeline.data.catalog import CatalogError, IngestReport, row_location

UnknownPolicy = Literal["error", "skip"]
_MAX_LISTED = 5


def require_file(path: str | Path, what: str = "file") -> Path:
    """The path exists, is a regular file and can be opened for reading."""
    path = Path(path)
    if not path.exists():
        raise CatalogError(path, f"missing {what}")
    if not path.is_file():
        raise CatalogError(path, f"{what} is not a regular file")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise CatalogError(path, f"unreadable {what}: {exc.strerror or exc}") from exc
    return path


def read_table(path: str | Path, what: str = "table", **csv_kwargs) -> pd.DataFrame:
    """A CSV/TSV (every column read as text, nothing guessed) or Parquet file."""
    path = require_file(path, what)
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        sep = "\t" if suffix in (".tsv", ".tab") else ","
        csv_kwargs.setdefault("sep", sep)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8", **csv_kwargs)
    except pd.errors.EmptyDataError as exc:
        raise CatalogError(path, f"empty {what} (no header, no rows)") from exc
    except UnicodeDecodeError as exc:
        raise CatalogError(
            path, f"{what} is not UTF-8 text: {_utf8_error_location(path, exc)}; save it as UTF-8"
        ) from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        # pyarrow's ArrowInvalid subclasses ValueError: a corrupt Parquet file lands here.
        raise CatalogError(path, f"cannot parse {what}: {exc}") from exc


def _utf8_error_location(path: Path, exc: UnicodeDecodeError) -> str:
    """Where the first undecodable byte is in the file (the exception's offset is relative to
    the chunk the reader was decoding), in words: byte offset, line, data row, the byte."""
    base, lines, pending, line_start = 0, 0, b"", 0  # base: file offset of buf[0]
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            buf = pending + chunk
            if not buf:
                break
            try:
                buf.decode("utf-8")
                good = len(buf)
            except UnicodeDecodeError as bad:
                # a sequence cut by the chunk boundary is decoded with the next chunk
                if chunk and bad.reason == "unexpected end of data":
                    good = bad.start
                else:
                    nl = buf.rfind(b"\n", 0, bad.start)
                    lines += buf.count(b"\n", 0, bad.start)
                    line_start = base + nl + 1 if nl >= 0 else line_start
                    pos = base + bad.start
                    where = row_location(path, lines) if lines else "the header line (line 1)"
                    return (
                        f"byte 0x{buf[bad.start]:02x} at byte offset {pos} "
                        f"({where}, byte {pos - line_start + 1} of the line) "
                        f"is not valid UTF-8 ({bad.reason})"
                    )
            nl = buf.rfind(b"\n", 0, good)
            lines += buf.count(b"\n", 0, good)
            line_start = base + nl + 1 if nl >= 0 else line_start
            pending, base = buf[good:], base + good
            if not chunk:
                break
    return f"{exc.reason} near byte {exc.start}"


def require_columns(
    frame: pd.DataFrame, path: str | Path, columns: Iterable[str] | Mapping[str, str], role: str = ""
) -> None:
    """Fail naming the missing columns; ``columns`` as {column: option key} also names the
    option that sets each one's name (``interaction_item_column``), as the user gives it."""
    keys = dict(columns) if isinstance(columns, Mapping) else {}
    missing = [c for c in columns if c not in frame.columns]
    if not missing:
        return
    role = f" ({role})" if role else ""
    named = [keys[c] for c in missing if c in keys]
    how = (
        "Name the column with "
        + ", ".join(f"--column {k}=NAME" for k in named)
        + f" (ingest option{'s' if len(named) > 1 else ''} {', '.join(named)})."
        if named
        else "Column names are configurable."
    )
    raise CatalogError(path, f"missing column(s) {missing}{role}; found {list(frame.columns)}. {how}")


def is_blank(values: pd.Series) -> np.ndarray:
    """True where a value is missing or only whitespace."""
    return (values.isna() | values.astype(str).str.strip().eq("")).to_numpy()


def clean_ids(values: pd.Series, path: str | Path, column: str, rows: np.ndarray | None = None) -> pd.Series:
    """Ids as stripped strings; an empty id is an error. Integral floats (Parquet ids read
    as float because of a null elsewhere) are written without the trailing ``.0``."""
    blank = is_blank(values)
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        raise CatalogError(path, f"empty {column}", data_row(rows, i))
    if pd.api.types.is_float_dtype(values) and np.all(np.mod(values.to_numpy(), 1) == 0):
        values = values.astype(np.int64)
    out = values.astype(str).str.strip()
    for i, value in enumerate(out.tolist()):
        if not value.isprintable():
            ch = next(c for c in value if not c.isprintable())
            raise CatalogError(
                path,
                f"{column} {value!r} holds a non-printable character "
                f"(U+{ord(ch):04X}, {unicodedata.name(ch, 'a control character')}); "
                "ids must be printable text: fix the file",
                data_row(rows, i),
            )
    return out


def parse_numbers(values: pd.Series, path: str | Path, column: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Finite floats, or an error naming the first bad row and its value."""
    out = to_float(values)
    bad = ~np.isfinite(out)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CatalogError(path, f"{column} {values.iloc[i]!r} is not a number", data_row(rows, i))
    return out


def to_float(values: pd.Series) -> np.ndarray:
    """Floats, NaN where a value is not a number."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=np.float64)
    try:  # fast path: one vectorised cast (2x faster than to_numeric on Arrow strings)
        return values.astype("float64").to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        return pd.to_numeric(values.astype(str).str.strip(), errors="coerce").to_numpy(dtype=np.float64)


def fold_duplicate_items(
    items: pd.DataFrame,
    path: str | Path,
    report: IngestReport,
    content_columns: Iterable[str],
    id_column: str = "item_id",
    rows: np.ndarray | None = None,
) -> pd.DataFrame:
    """Fold duplicate ids whose content is identical; error on conflicting content.

    ``content_columns`` are the columns the catalog uses; other columns that differ are
    named in the fold's report entry (transparent, but not an error). Returns ``items``
    without the folded rows, first occurrence kept, order unchanged."""
    rows = np.arange(1, len(items) + 1) if rows is None else np.asarray(rows)
    content_columns = [c for c in content_columns if c in items.columns and c != id_column]
    dup = items.duplicated(id_column, keep=False).to_numpy()
    if not dup.any():
        return items
    drop = np.zeros(len(items), dtype=bool)
    positions = np.flatnonzero(dup)
    # plain Python lists of the few duplicate rows: row-wise .iloc is slow on Arrow strings
    sub = {c: items[c].to_numpy(object)[positions].tolist() for c in items.columns}
    first_of: dict[object, int] = {}
    for k, p in enumerate(positions):
        item_id = sub[id_column][k]
        if item_id not in first_of:
            first_of[item_id] = k
            continue
        f = first_of[item_id]
        differs = [c for c in items.columns if not _same(sub[c][f], sub[c][k])]
        conflicting = [c for c in differs if c in content_columns]
        first_row, row = int(rows[positions[f]]), int(rows[p])
        if conflicting:
            show = ", ".join(f"{c}: {sub[c][f]!r} vs {sub[c][k]!r}" for c in conflicting[:3])
            raise CatalogError(
                path,
                f"duplicate {id_column} {item_id!r} with conflicting content in {row_location(path, first_row)} and "
                f"{row_location(path, row)} ({show}); fix the file or remove one of the rows",
                row,
            )
        if differs:
            problem, extra = "duplicate item id, differs only in unused columns", {"columns": differs}
        else:
            problem, extra = "duplicate item id, identical row", {}
        report.add(
            problem, "folded into the first row", file=path, row=row, item_id=str(item_id), first_row=first_row, **extra
        )
        drop[p] = True
    return items[~drop]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    a_na = a is None or (isinstance(a, float) and np.isnan(a))
    b_na = b is None or (isinstance(b, float) and np.isnan(b))
    if a_na or b_na:
        return a_na and b_na
    return bool(a == b)


def check_known_items(
    item_ids: pd.Series,
    known: Iterable[str] | pd.Index,
    path: str | Path,
    report: IngestReport,
    policy: UnknownPolicy = "error",
    rows: np.ndarray | None = None,
    user_ids: pd.Series | None = None,
) -> np.ndarray:
    """Boolean keep-mask over the interactions. Unknown items: error (default) or skip+report;
    an error either way when no interaction names a known item (skipping would leave nothing)."""
    known = pd.Index(known)
    unknown = ~item_ids.isin(known).to_numpy()
    if not unknown.any():
        return np.ones(len(item_ids), dtype=bool)
    bad = np.flatnonzero(unknown)
    listed = ", ".join(
        f"{item_ids.iloc[i]!r} ({row_location(path, data_row(rows, int(i)), short=True)})" for i in bad[:_MAX_LISTED]
    )
    more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
    hint = id_mismatch_hint(item_ids.iloc[bad], known, all_unknown=bool(unknown.all()))
    if unknown.all():
        examples = ", ".join(repr(k) for k in known[:3])
        raise CatalogError(
            path,
            f"none of the {len(bad)} interactions names an item of the item table (e.g. {listed}{more}; "
            f"item table ids look like {examples}). {hint}",
        )
    if policy == "error":
        raise CatalogError(
            path,
            f"{len(bad)} interaction(s) name items that are not in the item table: {listed}{more}. "
            + (f"{hint} " if hint else "")
            + "Pass --on-unknown-items skip to drop them (each is reported).",
            data_row(rows, int(bad[0])),
        )
    if hint:
        report.warnings.append(f"{len(bad)} interactions skipped for unknown items: {hint}")
    for i in bad:
        extra = {"user_id": str(user_ids.iloc[i])} if user_ids is not None else {}
        report.add(
            "unknown item",
            "interaction skipped",
            file=path,
            row=data_row(rows, int(i)),
            item_id=str(item_ids.iloc[i]),
            **extra,
        )
    return ~unknown


def _loose_ids(ids: pd.Series | pd.Index) -> pd.Series:
    """Ids with case, surrounding blanks, a trailing ``.0`` and leading zeros ignored."""
    s = pd.Series(ids, dtype=object).astype(str).str.strip().str.lower()
    s = s.str.replace(r"\.0+$", "", regex=True)
    return s.str.replace(r"(?<!\d)0+(?=\d)", "", regex=True)


def id_mismatch_hint(unknown: pd.Series, known: pd.Index, all_unknown: bool = False) -> str:
    """Why ids do not match when it can be seen: they do once case, leading zeros or a
    trailing ``.0`` are ignored. Empty when no such near match exists (unless every
    interaction is unknown: then the likely causes are named)."""
    distinct = pd.Index(pd.unique(unknown.astype(str)))
    loose_known = pd.Series(known.astype(str), index=_loose_ids(known).to_numpy())
    loose_known = loose_known[~loose_known.index.duplicated()]
    loose = _loose_ids(distinct)
    hit = loose.isin(loose_known.index).to_numpy()
    if not hit.any():
        if not all_unknown:
            return ""
        return (
            "No unknown id resembles an item id, even ignoring case and leading zeros: check that --items and "
            "--interactions are files of the same catalog, and that --column interaction_item_column names the "
            "interactions' item column."
        )
    a, b = str(distinct[hit][0]), str(loose_known[loose.to_numpy()[hit][0]])
    if a.lower() == b.lower():
        cause = "case"
    elif a.rstrip("0").endswith(".") or b.rstrip("0").endswith("."):
        cause = "a trailing '.0' (ids read as numbers)"
    else:
        cause = "leading zeros (a spreadsheet or a numeric column drops them)"
    return (
        f"{int(hit.sum())} of {len(distinct)} unknown ids match an item id once case and leading zeros are ignored "
        f"(e.g. {a!r} vs {b!r}): the two files write ids differently, in {cause}. Write the ids the same way in both "
        "files (keep ids as text)."
    )


def fold_repeat_interactions(inter: pd.DataFrame, report: IngestReport) -> pd.DataFrame:
    """One interaction per (user, item): the rule for repeats, the same for every split.

    A repeat purchase or view says the user likes the item again, but a split or a
    training graph counts a pair once, so the pair is kept once here, where it is stated,
    and not silently later: its *latest* event (largest timestamp, the later row on a tie)
    with that event's rating. The report counts the folded rows and the pairs."""
    dup = inter.duplicated(["user_id", "item_id"], keep=False).to_numpy()
    if not dup.any():
        return inter
    latest = inter.sort_values("timestamp", kind="stable").drop_duplicates(["user_id", "item_id"], keep="last")
    kept = inter[inter.index.isin(latest.index)]  # the file's order
    folded = len(inter) - len(kept)
    pairs = int(inter[dup].groupby(["user_id", "item_id"]).ngroups)
    report.counts_out["repeat_interactions_folded"] = folded
    report.notes.append(
        f"repeats: {folded} interactions repeat an earlier (user, item) pair ({pairs} pairs); each pair is kept once, "
        f"as its latest event (its rating and timestamp), so the catalog has {len(kept)} interactions, one per pair, "
        "and every split uses exactly these"
    )
    return kept


def report_lost_users(before: pd.Series, after: pd.Series, report: IngestReport, path: str | Path, reason: str) -> None:
    """Report each user whose every interaction was filtered out (the catalog will not know them)."""
    lost = sorted(set(before.unique().tolist()) - set(after.unique().tolist()), key=lambda u: (len(u), u))
    for uid in lost:
        report.add(reason, "user not in the catalog", file=path, user_id=uid)


def require_nonempty(n: int, path: str | Path, what: str) -> None:
    if n == 0:
        raise CatalogError(path, f"empty catalog: no {what}")


def data_row(rows: np.ndarray | None, i: int) -> int:
    """The 1-based data row of position ``i`` (``rows``: the positions' own row numbers, when a subset)."""
    return int(rows[i]) if rows is not None else i + 1
