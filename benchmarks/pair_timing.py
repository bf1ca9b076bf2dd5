"""Per-epoch timing of two training processes run side by side, and what may be read from it.

Pure logic (no process, no torch): ``make bench-vs-reference`` (``benchmarks.bench_vs_reference``)
feeds it the records the two sides write while they train, and it answers which epochs ran
while BOTH processes were alive, the median seconds over those epochs, the ratio, and
whether there are enough of them to print a ratio at all.

Why only the overlapping epochs: on this machine, when the faster system finishes, the other
speeds up by up to 3x (measured, issue #24), so a median over all epochs flatters the slower
one. An epoch counts when the window that surely holds it lies inside the interval during
which both processes ran (from the later start to the earlier end):

- befa (``benchmarks.befa_side``) writes ``{"fit_start": t}`` before training, then one line
  per epoch ``{"epoch", "end", "train_s", "eval_s"}`` from the trainer's per-epoch callback,
  after the epoch's training, evaluation and checkpoint. Its epoch e surely lies in
  ``[end of epoch e-1 (fit_start for e = 0), end of epoch e]``: a conservative window.
- MMRec (the reference runner's JSON): per epoch the training seconds, the
  ``pre_epoch_processing`` seconds (befa's epoch time holds its ``pre_epoch`` too, so they
  are added) and the end timestamp; per evaluation call its seconds and end timestamp. An
  epoch's evaluation is its two calls (valid, then test) that end after that epoch's
  training and before the next one's end; an epoch with fewer calls (stopped in between)
  has no evaluation.

Timestamps are wall-clock seconds (``time.time()``) of the same machine.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MIN_OVERLAP = 5  # fewer overlapping epochs than this: no ratio is printed
EVALS_PER_EPOCH = 2  # MMRec evaluates valid, then test, after every epoch


@dataclass(frozen=True)
class Span:
    """One timed piece of work: its seconds, and a wall-clock window that surely contains it."""

    seconds: float
    start: float
    end: float


@dataclass
class SideTiming:
    """One system's process: when it was started and ended (None: still running), and its
    epochs' training and evaluation spans."""

    name: str
    started: float
    ended: float | None = None
    train: list[Span] = field(default_factory=list)
    evals: list[Span] = field(default_factory=list)


def befa_spans(lines: Iterable[Mapping[str, Any]]) -> tuple[list[Span], list[Span]]:
    """(train, eval) spans from befa's progress records (see the module docstring)."""
    train: list[Span] = []
    evals: list[Span] = []
    previous: float | None = None
    for rec in lines:
        if "fit_start" in rec:
            previous = float(rec["fit_start"])
        elif "epoch" in rec and previous is not None:
            end = float(rec["end"])
            train.append(Span(float(rec["train_s"]), previous, end))
            evals.append(Span(float(rec["eval_s"]), previous, end))
            previous = end
    return train, evals


def mmrec_spans(rec: Mapping[str, Any]) -> tuple[list[Span], list[Span]]:
    """(train, eval) spans from the reference runner's JSON (see the module docstring)."""
    ends = [float(t) for t in rec.get("train_end_t", [])]
    seconds = [float(s) for s in rec.get("train_epoch_s", [])]
    pre = [float(s) for s in rec.get("pre_epoch_s", [])]
    train = []
    for e, (end, s) in enumerate(zip(ends, seconds)):
        total = s + (pre[e] if e < len(pre) else 0.0)
        train.append(Span(total, end - total, end))
    calls = list(zip((float(t) for t in rec.get("eval_end_t", [])), (float(s) for s in rec.get("eval_calls_s", []))))
    evals = []
    for e, end in enumerate(ends):
        after = ends[e + 1] if e + 1 < len(ends) else math.inf
        mine = [(t, s) for t, s in calls if end < t < after]
        if len(mine) == EVALS_PER_EPOCH:
            evals.append(Span(sum(s for _, s in mine), end, max(t for t, _ in mine)))
    return train, evals


def both_running(a: SideTiming, b: SideTiming, now: float) -> tuple[float, float]:
    """The interval during which both processes ran (``now`` stands in for a missing end)."""
    end_a = a.ended if a.ended is not None else now
    end_b = b.ended if b.ended is not None else now
    return max(a.started, b.started), min(end_a, end_b)


def inside(spans: Sequence[Span], window: tuple[float, float]) -> list[Span]:
    """The spans whose whole window lies in ``window``."""
    lo, hi = window
    return [s for s in spans if lo <= s.start and s.end <= hi]


def enough(befa: SideTiming, ref: SideTiming, now: float, epochs: int) -> bool:
    """Both sides have ``epochs`` overlapping epochs, trained and evaluated: the pair may stop."""
    window = both_running(befa, ref, now)
    return all(len(inside(spans, window)) >= epochs for side in (befa, ref) for spans in (side.train, side.evals))


@dataclass(frozen=True)
class Comparison:
    """One quantity (train s/epoch or eval s) of both sides over their overlapping epochs."""

    befa_s: float | None
    ref_s: float | None
    befa_n: int
    ref_n: int
    ratio: float | None  # reference / befa; None when refused
    refused: str | None  # why no ratio is printed


def compare(befa: Sequence[Span], ref: Sequence[Span], window: tuple[float, float]) -> Comparison:
    """Medians of both sides' spans inside ``window`` and their ratio (reference / befa),
    refused under :data:`MIN_OVERLAP` overlapping epochs on either side."""
    b, r = inside(befa, window), inside(ref, window)
    befa_s = statistics.median(s.seconds for s in b) if b else None
    ref_s = statistics.median(s.seconds for s in r) if r else None
    short = [f"{name} {len(x)}" for name, x in (("befa", b), ("MMRec", r)) if len(x) < MIN_OVERLAP]
    if short:
        why = f"{', '.join(short)} overlapping, under {MIN_OVERLAP}"
        return Comparison(befa_s, ref_s, len(b), len(r), None, why)
    if not befa_s:
        return Comparison(befa_s, ref_s, len(b), len(r), None, "befa's median is 0 s")
    return Comparison(befa_s, ref_s, len(b), len(r), ref_s / befa_s, None)
