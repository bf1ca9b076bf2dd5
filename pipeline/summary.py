"""The base of every step summary: a small, JSON-friendly pydantic record with the step's wall time.

Each package owns the summary of the step it performs (``pipeline.data.summary``,
``pipeline.features.summary``, ``pipeline.training.summary``); the job collects them and
the reports read them, typed, across every package boundary.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from pydantic import BaseModel, ConfigDict

S = TypeVar("S", bound="StepSummary")


class StepSummary(BaseModel):
    """What one step did; ``seconds`` is its wall time (set by :func:`timed`)."""

    model_config = ConfigDict(extra="forbid")
    seconds: float = 0.0


def timed(fn: Callable[[], S]) -> S:
    """Run ``fn`` and set the summary's ``seconds`` to its wall time."""
    start = time.perf_counter()
    out = fn()
    out.seconds = round(time.perf_counter() - start, 3)
    return out
