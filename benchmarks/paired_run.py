"""Run befa's and the reference's training of one model side by side, load-matched.

Both processes are started together (back to back), each pinned to its own core with
``taskset`` and limited to one thread (``torch`` and the BLAS/OpenMP pools). While they run,
the parent reads their per-epoch records every :data:`POLL_S` seconds and stops both (SIGTERM
to each one's own process group, SIGKILL after :data:`GRACE_S`) as soon as each side has
trained and evaluated ``epochs`` epochs while the other was running
(:func:`benchmarks.pair_timing.enough`). So the faster system keeps training, and keeps its
core busy, until the slower one has its epochs: neither side's epochs are timed on a machine
the other has left. A process that exits by itself (an error, or its epoch cap) ends the pair
too; ``timeout_s`` bounds it.

A process's end, for the overlap accounting, is the moment the parent decided to stop it, or
for one that exited by itself the moment its waiter thread saw it exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.befa_side import read_progress
from benchmarks.pair_timing import SideTiming, befa_spans, enough, mmrec_spans

POLL_S = 0.25
GRACE_S = 10.0


@dataclass
class Launched:
    """One side's process: how it was started and what became of it."""

    name: str
    popen: subprocess.Popen
    started: float
    log: Path
    exited_at: float | None = None  # set by a waiter thread the moment the process exits
    ended: float | None = None
    returncode: int | None = None
    stopped: bool = False  # the parent stopped it (its exit code is then no error)


@dataclass
class PairResult:
    befa: SideTiming
    ref: SideTiming
    reason: str  # why the pair ended
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]
    errors: list[str] = field(default_factory=list)


def launch(name: str, cmd: list[str], core: int, cwd: Path, env: dict[str, str], log: Path) -> Launched:
    with open(log, "wb") as out:
        started = time.time()
        popen = subprocess.Popen(
            ["taskset", "-c", str(core), *cmd], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    proc = Launched(name, popen, started, log)

    def wait() -> None:
        popen.wait()
        proc.exited_at = time.time()

    threading.Thread(target=wait, daemon=True).start()
    return proc


def stop(proc: Launched, at: float) -> None:
    """End ``proc`` (its own process group: the one this module started) if it still runs."""
    if proc.ended is not None:
        return
    if proc.exited_at is not None:  # it exited by itself since the last poll
        proc.ended, proc.returncode = proc.exited_at, proc.popen.returncode
        return
    proc.ended, proc.stopped = at, True
    try:
        os.killpg(proc.popen.pid, signal.SIGTERM)
        proc.popen.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait()
    except ProcessLookupError:
        proc.popen.wait()
    proc.returncode = proc.popen.returncode


class MmrecReader:
    """The runner's JSON as last written. It rewrites the whole file after every epoch and
    evaluation, so a read can meet it half written (or a stop can cut a write short): the
    last complete read is kept."""

    def __init__(self, path: Path):
        self.path, self.last = path, {}

    def read(self) -> dict:
        try:
            self.last = json.loads(self.path.read_text())
        except (OSError, ValueError):
            pass
        return self.last


def timings(befa: Launched, ref: Launched, befa_out: Path, ref_json: MmrecReader) -> tuple[SideTiming, SideTiming]:
    bt = SideTiming("befa", befa.started, befa.ended, *befa_spans(read_progress(befa_out)))
    rt = SideTiming("MMRec", ref.started, ref.ended, *mmrec_spans(ref_json.read()))
    return bt, rt


def _tail(proc: Launched) -> str:
    try:
        lines = [x for x in proc.log.read_text(errors="replace").strip().splitlines() if x.strip()]
    except OSError:
        lines = []
    return lines[-1].strip()[:300] if lines else "(no output)"


def errors_of(*procs: Launched) -> list[str]:
    """One line per process that exited by itself with an error."""
    return [
        f"{p.name} exited with code {p.returncode}: {_tail(p)} (log: {p.log})"
        for p in procs
        if not p.stopped and p.returncode not in (0, None)
    ]


def _poll(proc: Launched) -> None:
    if proc.ended is None and proc.exited_at is not None:
        proc.ended, proc.returncode = proc.exited_at, proc.popen.returncode


def run_pair(
    befa_cmd: list[str],
    ref_cmd: list[str],
    befa_out: Path,
    ref_out: Path,
    cores: tuple[int, int],
    cwd: tuple[Path, Path],
    env: tuple[dict[str, str], dict[str, str]],
    logs: tuple[Path, Path],
    epochs: int,
    timeout_s: float,
) -> PairResult:
    """Start both, stop both when each has ``epochs`` overlapping epochs (see the module docstring)."""
    load_start = os.getloadavg()
    befa = launch("befa", befa_cmd, cores[0], cwd[0], env[0], logs[0])
    ref = launch("MMRec", ref_cmd, cores[1], cwd[1], env[1], logs[1])
    deadline, reason, ref_json = befa.started + timeout_s, "", MmrecReader(ref_out)
    try:
        while not reason:
            time.sleep(POLL_S)
            now = time.time()
            _poll(befa)
            _poll(ref)
            bt, rt = timings(befa, ref, befa_out, ref_json)
            gone = [p for p in (befa, ref) if p.ended is not None]
            if gone:
                reason = f"{gone[0].name} exited first (code {gone[0].returncode})"
            elif enough(bt, rt, now, epochs):
                reason = f"both had {epochs} overlapping epochs"
            elif now > deadline:
                reason = f"timed out after {timeout_s:.0f} s"
    finally:
        at = time.time()
        stop(befa, at)
        stop(ref, at)
    bt, rt = timings(befa, ref, befa_out, ref_json)
    return PairResult(bt, rt, reason, load_start, os.getloadavg(), errors_of(befa, ref))
