"""What a new training call may do with a run folder that already holds a run.

- a run that is training right now (``RunRecord.state == "running"``): nothing, ever;
- without ``resume``: overwrite only when asked; an interrupted run is named as such, with
  the command that continues it;
- with ``resume``: only on the feature snapshots the run recorded (unless
  ``allow_new_features``) and with the model config it recorded. A resume must never switch
  to a newer snapshot silently: after a catalog edit the store's current snapshot moves on,
  while the run's weights were fitted on the recorded one.

Torch-free: the trainer passes the snapshot ids and the config as JSON.
"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.training.liveness import interrupted_note, resume_hint
from pipeline.training.record import RunRecord


class RunFolderBusy(FileExistsError, ValueError):
    """The run folder holds a run this call must not overwrite or resume (the message says why and what to do)."""


class FeaturesChanged(ValueError):
    """``resume`` was given other feature snapshots than the run trained on."""


def check_previous(
    previous: RunRecord,
    snapshots: Mapping[str, str],
    config: Mapping[str, Any],
    resume: bool,
    overwrite: bool,
    allow_new_features: bool = False,
) -> None:
    """Raise :class:`RunFolderBusy` / :class:`FeaturesChanged` when the call may not go on (module docstring)."""
    state, where = previous.state, previous.run_dir
    if state == "running":
        proc = previous.process
        who = f"process {proc.pid} on {proc.host}" if proc else "another process"
        raise RunFolderBusy(
            f"{where}: a run is training there right now ({who}); wait for it or choose another --run-dir"
        )
    if not resume:
        if overwrite:
            return
        if state == "interrupted":
            raise RunFolderBusy(f"{interrupted_note(previous)}, or choose another --run-dir to start anew")
        raise RunFolderBusy(
            f"{where}: already holds a run (status {state}); pass --resume to continue it, or choose another --run-dir"
        )
    recorded, given = previous.feature_snapshots, dict(snapshots)
    changed = sorted(m for m in set(recorded) | set(given) if recorded.get(m) != given.get(m))
    if changed and not allow_new_features:
        detail = "; ".join(
            f"{m}: the run trained on snapshot {recorded.get(m, '(none)')}, given {given.get(m, '(none)')}"
            for m in changed
        )
        raise FeaturesChanged(
            f"{where}: --resume: the features differ from the run's ({detail}). A resume never switches snapshots "
            "silently: pass --allow-new-features to continue on the given ones"
        )
    differ = sorted(k for k in config if k in previous.config and previous.config[k] != config[k])
    if differ:
        raise RunFolderBusy(
            f"{where}: --resume: the model config differs from the run's in {', '.join(differ)}; "
            f"`{resume_hint(where)}` reads the run's own config from run.json"
        )
