"""The rich console every command prints through (no torch: the CLI's light commands use it)."""

from __future__ import annotations

import sys

from rich.console import Console

# Lines as wide as they need when stdout is a log or a pipe: rich would otherwise wrap
# every table at 80 columns there, cutting counts, snapshot ids and fingerprints. (Colours
# are off there anyway: rich only styles a terminal.)
PLAIN_WIDTH = 1000


def make_console() -> Console:
    """A terminal's console, or full-width plain lines when stdout is not a terminal."""
    return Console() if sys.stdout.isatty() else Console(width=PLAIN_WIDTH, soft_wrap=True)
