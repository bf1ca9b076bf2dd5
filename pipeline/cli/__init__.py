"""The ``befa`` command: the composition root. It parses, calls the library and prints.

May import anything in ``pipeline``; its Prefect commands alone import ``flows``.
"""

from pipeline.cli.main import app

__all__ = ["app"]
