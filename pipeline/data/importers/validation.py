"""Input checks shared by the importers. Every failure is a :class:`CatalogError` naming
the file, the row (1-based, header excluded: row 1 is the first data line) and the problem.

Rules (the same for every importer):

- missing or unreadable file, or a required column absent: error;
- an empty id (item or user): error;
- duplicate item ids: rows identical in the columns the catalog uses are folded into the
  first one and every fold is reported; rows that differ there are an error naming both
  rows and the differing columns (no row silently "wins");
- a rating that is not a finite number: error;
- a timestamp that is neither a number (unix seconds) nor a parseable date: error;
- interactions naming unknown items: error listing the first offenders by default;
  ``on_unknown_items="skip"`` drops them and reports each one;
- no items, or no interactions left: error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import pandas as pd

from pipeline.data.catalog import CatalogError, IngestReport

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
        raise CatalogError(path, f"{what} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        # pyarrow's ArrowInvalid subclasses ValueError: a corrupt Parquet file lands here.
        raise CatalogError(path, f"cannot parse {what}: {exc}") from exc


def require_columns(frame: pd.DataFrame, path: str | Path, columns: Iterable[str], role: str = "") -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        role = f" ({role})" if role else ""
        raise CatalogError(
            path, f"missing column(s) {missing}{role}; found {list(frame.columns)}. Column names are configurable."
        )


def _is_blank(values: pd.Series) -> np.ndarray:
    return (values.isna() | values.astype(str).str.strip().eq("")).to_numpy()


def clean_ids(values: pd.Series, path: str | Path, column: str, rows: np.ndarray | None = None) -> pd.Series:
    """Ids as stripped strings; an empty id is an error. Integral floats (Parquet ids read
    as float because of a null elsewhere) are written without the trailing ``.0``."""
    blank = _is_blank(values)
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        raise CatalogError(path, f"empty {column}", _row(rows, i))
    if pd.api.types.is_float_dtype(values) and np.all(np.mod(values.to_numpy(), 1) == 0):
        values = values.astype(np.int64)
    return values.astype(str).str.strip()


def parse_numbers(values: pd.Series, path: str | Path, column: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Finite floats, or an error naming the first bad row and its value."""
    out = _to_float(values)
    bad = ~np.isfinite(out)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CatalogError(path, f"{column} {values.iloc[i]!r} is not a number", _row(rows, i))
    return out


def _to_float(values: pd.Series) -> np.ndarray:
    """Floats, NaN where a value is not a number."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=np.float64)
    try:  # fast path: one vectorised cast (2x faster than to_numeric on Arrow strings)
        return values.astype("float64").to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        return pd.to_numeric(values.astype(str).str.strip(), errors="coerce").to_numpy(dtype=np.float64)


def parse_timestamps(values: pd.Series, path: str | Path, column: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Unix seconds (int64). Accepts numbers (seconds) or date strings (ISO 8601 and the
    like, read as UTC when they carry no zone). Empty -> 0 (unknown), as the catalog says."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return _unix_seconds(pd.to_datetime(values, utc=True))
    text = values.astype(str).str.strip()
    blank = _is_blank(values)
    num = _to_float(text.where(~blank, "0"))
    out = np.zeros(len(values), dtype=np.int64)
    numeric = np.isfinite(num)
    out[numeric] = np.round(num[numeric]).astype(np.int64)
    if (~numeric).any():
        dates = pd.to_datetime(text[~numeric], utc=True, errors="coerce", format="mixed")
        bad = dates.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(~numeric)[np.flatnonzero(bad)[0]])
            raise CatalogError(path, f"{column} {values.iloc[i]!r} is neither unix seconds nor a date", _row(rows, i))
        out[~numeric] = _unix_seconds(dates)
    return out


def _unix_seconds(dates: pd.Series) -> np.ndarray:
    # via a Timedelta: the datetime resolution (ns, us, s) differs across pandas versions
    return ((dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


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
                f"duplicate {id_column} {item_id!r} with conflicting content in rows {first_row} and "
                f"{row} ({show}); fix the file or remove one of the rows",
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
    """Boolean keep-mask over the interactions. Unknown items: error (default) or skip+report."""
    known = pd.Index(known)
    unknown = ~item_ids.isin(known).to_numpy()
    if not unknown.any():
        return np.ones(len(item_ids), dtype=bool)
    bad = np.flatnonzero(unknown)
    if policy == "error":
        listed = ", ".join(f"row {_row(rows, i)}: {item_ids.iloc[i]!r}" for i in bad[:_MAX_LISTED])
        more = f" (and {len(bad) - _MAX_LISTED} more)" if len(bad) > _MAX_LISTED else ""
        raise CatalogError(
            path,
            f"{len(bad)} interaction(s) name items that are not in the item table: {listed}{more}. "
            "Pass on_unknown_items='skip' to drop them (each is reported).",
            _row(rows, int(bad[0])),
        )
    for i in bad:
        extra = {"user_id": str(user_ids.iloc[i])} if user_ids is not None else {}
        report.add("unknown item", "interaction skipped", file=path, row=_row(rows, int(i)), item_id=str(item_ids.iloc[i]), **extra)
    return ~unknown


def report_lost_users(before: pd.Series, after: pd.Series, report: IngestReport, path: str | Path, reason: str) -> None:
    """Report each user whose every interaction was filtered out (the catalog will not know them)."""
    lost = sorted(set(before.unique().tolist()) - set(after.unique().tolist()), key=lambda u: (len(u), u))
    for uid in lost:
        report.add(reason, "user not in the catalog", file=path, user_id=uid)


def require_nonempty(n: int, path: str | Path, what: str) -> None:
    if n == 0:
        raise CatalogError(path, f"empty catalog: no {what}")


def _row(rows: np.ndarray | None, i: int) -> int:
    return int(rows[i]) if rows is not None else i + 1
