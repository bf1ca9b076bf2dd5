"""Is a run whose record says ``"running"`` still running, or was it killed?

A killed ``befa train`` cannot close its record, so ``run.json`` keeps ``"status": "running"``.
The trainer therefore records the process that trains (:class:`ProcessInfo`: pid, host and
the process's start time, which guards against a pid the system has since reused) and
writes the record as soon as the run starts. Whoever reads the folder later asks
:func:`run_state`:

- ``running``: the recorded process is alive on this host (or the run lives on another host,
  which cannot be checked from here: it is trusted);
- ``interrupted``: the process is gone, or it is this very process and no longer trains the
  folder (a run stopped by an exception or a simulated kill in tests), or the record is
  older than process records and still says running (it can only have been killed);
- any other status as recorded.

A pid + start time, not a lock file: it needs no cleanup, survives ``kill -9`` and works
where ``flock`` does not (some network filesystems). Torch-free.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel

# Run folders this process is training right now (see ``run_state``).
ACTIVE: set[str] = set()


class ProcessInfo(BaseModel):
    """The process that trains a run."""

    pid: int
    host: str
    started: str | None = None  # /proc start time (clock ticks since boot); None where unknown


def _start_token(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: count fields after its closing parenthesis
    return stat.rsplit(")", 1)[1].split()[19]


def this_process() -> ProcessInfo:
    pid = os.getpid()
    return ProcessInfo(pid=pid, host=socket.gethostname(), started=_start_token(pid))


def _alive(info: ProcessInfo) -> bool:
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    if info.started is not None:
        return _start_token(info.pid) == info.started
    return True


def _key(run_dir: str | Path) -> str:
    return str(Path(run_dir).resolve())


def mark_active(run_dir: str | Path, active: bool) -> None:
    (ACTIVE.add if active else ACTIVE.discard)(_key(run_dir))


def run_state(status: str, process: ProcessInfo | None, run_dir: str | Path | None) -> str:
    """``status``, with ``running`` checked against the recorded process (module docstring)."""
    if status != "running":
        return status
    if process is None:  # written before records named their process: a run that never closed its record
        return "interrupted"
    if process.host != socket.gethostname():
        return "running"
    if not _alive(process):
        return "interrupted"
    if process.pid == os.getpid() and run_dir is not None and _key(run_dir) not in ACTIVE:
        return "interrupted"
    return "running"


def resume_hint(run_dir: str | Path) -> str:
    return f"befa train --run-dir {run_dir} --resume"


def interrupted_note(record: Any) -> str:
    """One line: what happened to an interrupted run and the command that continues it."""
    proc = record.process
    who = f"process {proc.pid} on {proc.host} is gone" if proc is not None else "its process is gone"
    done = f"{len(record.epochs)} epochs done" + (
        f", best valid {record.selection_metric} {record.best_valid.get(record.selection_metric, float('nan')):.4f} "
        f"at epoch {record.best_epoch}"
        if record.best_epoch is not None
        else ""
    )
    return (
        f"{record.run_dir}: interrupted (run.json says running, but {who}; {done}); "
        f"continue it with `{resume_hint(record.run_dir)}`"
    )
