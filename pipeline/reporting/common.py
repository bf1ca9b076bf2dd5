"""What every report shares: one pyplot bootstrap (no display, files only), saving a
figure atomically, a markdown table, number formatting and the adapter labels."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from storage.atomic import atomic_path

ADAPTER_LABEL = {"none": "base", "befa": "+BeFA"}


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: reports without plots
    and the CLI's other commands do not pay for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as PNG under a temporary name, rename it into place, close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)
    return path


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None
) -> list[str]:
    """A GitHub markdown table as lines; ``|`` inside cells is escaped."""
    align = list(align or ["---"] * len(header))
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def fmt_number(value: Any, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals; ``-`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.{digits}f}"
