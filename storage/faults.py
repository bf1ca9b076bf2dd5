"""Named pause points, so a crash test can kill a process at a deterministic place.

``pause_point("catalog-write")`` does nothing unless the environment says
``BEFA_PAUSE_AT=catalog-write`` (several names: comma-separated; shell patterns such as
``write:part-*`` match too; ``BEFA_PAUSE_HIT=N`` pauses at the N-th time the point is
reached, e.g. the second epoch's checkpoint). Then it writes
``$BEFA_PAUSE_DIR/<name>.reached`` (holding the process id; ``<name>`` as given in
``BEFA_PAUSE_AT``, see ``marker_stem``) and waits until
``$BEFA_PAUSE_DIR/<name>.release`` exists, or ``BEFA_PAUSE_MAX_S`` seconds (default 600)
have passed. A test starts the process, waits for the ``.reached`` file, then either
``kill -9``s it there (a crash at exactly that point) or creates the ``.release`` file
to let it go on (to hold it while a second process starts). No timing is involved.

Points in the code (grep ``pause_point(``):

- ``catalog-write``: ingest, inside the catalog lock, after the new version's items and
  interactions are written and before its ``catalog.json`` (a half-written version);
- ``catalog-switch``: ingest, the new version complete, before ``CURRENT`` points at it;
- ``write:<file name>``: every atomic write (``storage.atomic.atomic_path``), after the
  temporary is written and before it is renamed into place: ``write:last.pt`` is a
  checkpoint, ``write:part-*`` a feature-store part;
- ``extract-locked``: extraction, holding the feature set's lock, before it looks at what
  is left to encode;
- ``extract-part``: extraction, after each part of new vectors is written (not committed).
"""

from __future__ import annotations

import fnmatch
import os
import re
import tempfile
import time
from pathlib import Path

PAUSE_AT = "BEFA_PAUSE_AT"
PAUSE_DIR = "BEFA_PAUSE_DIR"
PAUSE_MAX_S = "BEFA_PAUSE_MAX_S"
PAUSE_HIT = "BEFA_PAUSE_HIT"  # pause at the N-th time the point is reached (default 1)
_HITS: dict[str, int] = {}  # per process; only read when a test set BEFA_PAUSE_AT


def marker_stem(pattern: str) -> str:
    """The file stem of a point's ``.reached``/``.release`` markers: the name (or pattern) as
    given in ``BEFA_PAUSE_AT``, with characters other than letters, digits, ``._-`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", pattern)


def pause_point(name: str) -> None:
    """Wait here when ``BEFA_PAUSE_AT`` names this point (see the module docstring)."""
    wanted = os.environ.get(PAUSE_AT)
    pattern = next(
        (w.strip() for w in (wanted or "").split(",") if w.strip() and fnmatch.fnmatchcase(name, w.strip())), None
    )
    if pattern is None:
        return
    _HITS[pattern] = _HITS.get(pattern, 0) + 1  # counted per pattern: `write:part-*` counts every part
    if _HITS[pattern] != int(os.environ.get(PAUSE_HIT) or 1):
        return
    folder = Path(os.environ.get(PAUSE_DIR) or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    stem = marker_stem(pattern)
    release = folder / f"{stem}.release"
    reached = folder / f"{stem}.reached"
    # written under a temporary name and renamed: the test never reads a half-written file
    tmp = folder / f".{stem}.reached.{os.getpid()}"
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, reached)
    deadline = time.monotonic() + float(os.environ.get(PAUSE_MAX_S) or 600)
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
