"""Timestamps at ingest: unix seconds or dates, to int64 unix seconds, checked for range.

Numbers are unix seconds from 1970-01-01 to 9999-12-31 (NaN, ``1e30``, negative or
millisecond values are errors naming the file and row); dates are ISO 8601, or another
form only with ``--date-format`` (a strptime format), so ``05/01/2024`` is never guessed
as US or EU order. The other input checks are in :mod:`pipeline.data.importers.validation`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.catalog import CatalogError
from pipeline.data.importers.validation import data_row, is_blank, to_float

# unix seconds of 9999-12-31T23:59:59Z: beyond it no datetime type holds the value
MAX_UNIX_SECONDS = 253_402_300_799


def parse_timestamps(
    values: pd.Series, path: str | Path, column: str, rows: np.ndarray | None = None, date_format: str | None = None
) -> np.ndarray:
    """Unix seconds (int64). Accepts numbers (seconds) or dates: ISO 8601 (read as UTC when
    they carry no zone), or ``date_format`` (strptime) when given. Empty -> 0 (unknown), as
    the catalog says. Out of range (before 1970, after 9999, NaN, infinite): an error."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return _checked_range(_unix_seconds(pd.to_datetime(values, utc=True)), values, path, column, rows)
    text = values.astype(str).str.strip()
    blank = is_blank(values)
    num = to_float(text.where(~blank, "0"))
    out = np.zeros(len(values), dtype=np.int64)
    numeric = np.isfinite(num)
    spelled_number = ~numeric & text.str.lower().str.lstrip("+-").isin(["nan", "inf", "infinity"]).to_numpy()
    if spelled_number.any():
        i = int(np.flatnonzero(spelled_number)[0])
        raise CatalogError(
            path, f"{column} {values.iloc[i]!r} is not a time (unix seconds or a date)", data_row(rows, i)
        )
    in_range = numeric & (num >= 0) & (num <= MAX_UNIX_SECONDS)
    if (numeric & ~in_range).any():
        i = int(np.flatnonzero(numeric & ~in_range)[0])
        hint = " (it looks like milliseconds: divide by 1000)" if 0 < num[i] / 1000 <= MAX_UNIX_SECONDS else ""
        raise CatalogError(
            path,
            f"{column} {values.iloc[i]!r} is out of range: unix seconds must lie between 0 (1970-01-01) and "
            f"{MAX_UNIX_SECONDS} (9999-12-31){hint}",
            data_row(rows, i),
        )
    out[numeric] = np.round(num[numeric]).astype(np.int64)
    if (~numeric).any():
        fmt = date_format or "ISO8601"
        dates = pd.to_datetime(text[~numeric], utc=True, errors="coerce", format=fmt)
        bad = dates.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(~numeric)[np.flatnonzero(bad)[0]])
            if date_format:
                problem = (
                    f"{column} {values.iloc[i]!r} is neither unix seconds nor a date in --date-format {date_format!r}"
                )
            else:
                problem = (
                    f"{column} {values.iloc[i]!r} is neither unix seconds nor an ISO 8601 date (2024-05-01, "
                    "2024-05-01T10:00:00Z); for another date form name its strptime format with --date-format "
                    "(e.g. --date-format '%d/%m/%Y'): befa never guesses day and month order"
                )
            raise CatalogError(path, problem, data_row(rows, i))
        out[~numeric] = _checked_range(
            _unix_seconds(dates), values[~numeric], path, column, rows, np.flatnonzero(~numeric)
        )
    return out


def _checked_range(seconds: np.ndarray, values: pd.Series, path, column: str, rows, positions=None) -> np.ndarray:
    bad = seconds < 0
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        i = int(positions[k]) if positions is not None else k
        raise CatalogError(
            path, f"{column} {values.iloc[k]!r} is before 1970-01-01: out of range for unix seconds", data_row(rows, i)
        )
    return seconds


def _unix_seconds(dates: pd.Series) -> np.ndarray:
    # via a Timedelta: the datetime resolution (ns, us, s) differs across pandas versions
    return ((dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
