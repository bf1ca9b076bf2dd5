"""What the served recommendations were made from, and whether a retrain is running.

The job (:func:`pipeline.job.run.run_pipeline`) writes, per catalog (the pipeline's
``dataset``), under ``$BEFA_HOME/watch/``:

- ``served/<catalog>.json`` (:class:`ServedRecord`): the last *successful* pipeline run of
  the catalog: the catalog version and fingerprint it used, its folder, its
  recommendations file. One atomic write (``storage.atomic``), made only after the run's
  recommendations and ``summary.json`` were committed: a run that fails or is killed
  leaves the previous record as it was.
- ``retraining/<catalog>.lock``, held (an OS lock) by a pipeline run of the catalog for as
  long as it runs, and ``retraining/<catalog>.json`` (:class:`RunningRetrain`) saying
  which. The OS drops the lock when the process dies, so a run killed with -9 is never
  mistaken for a running one.

The catalog watch (``pipeline.job.watch``) judges "changed" against the served record:
a catalog whose current version is not the one the last successful run used needs a
retrain, until one succeeds. ``befa status`` reads the same files. A home written before
these records finds its served version in the newest ``summary.json`` of the catalog's
pipeline runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, Field

from pipeline.data.versions import META, VERSIONS, current_version, meta_path, version_ids
from pipeline.settings import Settings
from storage.atomic import write_json
from storage.locks import LockTimeout, file_lock, holder_pid, is_held

REGISTRY = "catalogs.json"  # the watch's registry of catalogs, in watch_dir (pipeline.job.watch)


def watch_dir(settings: Settings) -> Path:
    return settings.home / "watch"


def registered_names(settings: Settings) -> list[str]:
    """The catalogs registered for watching, by name (the registry read raw: no parameter is parsed)."""
    try:
        return sorted(json.loads((watch_dir(settings) / REGISTRY).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return []


def served_names(settings: Settings) -> list[str]:
    """The catalogs with a served record."""
    return sorted(p.stem for p in (watch_dir(settings) / "served").glob("*.json"))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# -- the catalog as it is now ------------------------------------------------------------
class CatalogVersion(BaseModel):
    """One catalog version: its id (None for a catalog stored before versions) and fingerprint."""

    version: str | None
    fingerprint: str

    def label(self) -> str:
        return f"{self.version or 'unversioned'} (fingerprint {self.fingerprint})"


def current_catalog(settings: Settings, name: str) -> CatalogVersion | None:
    """The catalog's current version, read from its ``catalog.json`` (no table is loaded);
    None when nothing is ingested."""
    folder = settings.catalog_dir(name)
    try:
        meta = json.loads(meta_path(folder).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return CatalogVersion(version=current_version(folder), fingerprint=str(meta.get("fingerprint") or "?"))


def version_with(folder: str | Path, fingerprint: str) -> str | None:
    """The newest stored version of the catalog in ``folder`` with this fingerprint."""
    for version in reversed(version_ids(folder)):
        try:
            if json.loads((Path(folder) / VERSIONS / version / META).read_text()).get("fingerprint") == fingerprint:
                return version
        except (FileNotFoundError, ValueError):
            continue
    return None


# -- the last successful run ---------------------------------------------------------------
class ServedRecord(BaseModel):
    """The last successful pipeline run of a catalog: what its recommendations were made from."""

    catalog: str
    version: str | None = Field(description="the catalog version the run used (None: stored before versions)")
    fingerprint: str = Field(description="that version's content fingerprint")
    pipeline_folder: str
    recommendations: str | None = Field(description="its recommendations file (None: recommend_k was 0)")
    served_run: str | None = Field(None, description="the run they came from, '<model>-<adapter>'")
    finished_at: str
    source: str = Field("record", description="'record', or 'summary.json' for a run from before the records")

    @property
    def catalog_version(self) -> CatalogVersion:
        return CatalogVersion(version=self.version, fingerprint=self.fingerprint)


def _served_path(settings: Settings, name: str) -> Path:
    return watch_dir(settings) / "served" / f"{name}.json"


def record_served(
    settings: Settings,
    name: str,
    catalog_dir: str,
    fingerprint: str,
    folder: str | Path,
    recommendations: str | None,
    served_run: str | None,
) -> ServedRecord:
    """Record a successful run of catalog ``name`` (one atomic write). Call it only once the
    run's recommendations are committed."""
    record = ServedRecord(
        catalog=name,
        version=version_with(catalog_dir, fingerprint),
        fingerprint=fingerprint,
        pipeline_folder=str(folder),
        recommendations=recommendations,
        served_run=served_run,
        finished_at=_now(),
    )
    write_json(_served_path(settings, name), record.model_dump(mode="json"))
    return record


def served_record(settings: Settings, name: str) -> ServedRecord | None:
    """The last successful run of catalog ``name``, or None when none is known."""
    path = _served_path(settings, name)
    if path.exists():
        try:
            return ServedRecord.model_validate_json(path.read_text())
        except ValueError:
            pass  # unreadable: fall back to the runs themselves
    return _from_summaries(settings, name)


def _from_summaries(settings: Settings, name: str) -> ServedRecord | None:
    """The newest ``summary.json`` of the catalog's pipeline runs (what finished runs wrote
    before served records existed): a run that wrote it had finished."""
    found = []
    for path in (settings.runs_dir / "pipelines").glob("*/summary.json"):
        try:
            summary = json.loads(path.read_text())
            if summary["params"]["dataset"] == name:
                found.append((path.stat().st_mtime, path, summary))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not found:
        return None
    mtime, path, summary = max(found, key=lambda f: f[0])
    ingest, recs = summary.get("ingest") or {}, summary.get("recommendations") or {}
    return ServedRecord(
        catalog=name,
        version=version_with(ingest.get("catalog_dir", ""), ingest.get("fingerprint", "")),
        fingerprint=str(ingest.get("fingerprint", "?")),
        pipeline_folder=str(path.parent),
        recommendations=recs.get("path"),
        served_run=f"{recs['model']}-{recs['adapter']}" if recs.get("model") else None,
        finished_at=dt.datetime.fromtimestamp(mtime, dt.timezone.utc).isoformat(timespec="seconds"),
        source="summary.json",
    )


# -- a run in progress ---------------------------------------------------------------------
class RunningRetrain(BaseModel):
    """A pipeline run of a catalog that holds its retraining lock now."""

    pid: int | None
    host: str | None = None
    started_at: str | None = None
    pipeline_folder: str | None = None

    def describe(self) -> str:
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        since = f" since {self.started_at}" if self.started_at else ""
        return f"pid {self.pid if self.pid is not None else '?'}{where}{since}, folder {self.pipeline_folder or '?'}"


def _retraining_paths(settings: Settings, name: str) -> tuple[Path, Path]:
    base = watch_dir(settings) / "retraining"
    return base / f"{name}.lock", base / f"{name}.json"


@contextlib.contextmanager
def retraining(settings: Settings, name: str, folder: str | Path) -> Iterator[None]:
    """Hold catalog ``name``'s retraining lock for the block and say which run holds it. A
    second run of the same catalog does not wait: it runs unmarked (the first holds the mark;
    the last to finish writes the served record)."""
    lock, info = _retraining_paths(settings, name)
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(file_lock(lock, f"retraining {name}", timeout_s=0.0))
        held = True
    except LockTimeout:
        held = False
    if not held:
        yield
        return
    with stack:
        running = RunningRetrain(
            pid=os.getpid(), host=socket.gethostname(), started_at=_now(), pipeline_folder=str(folder)
        )
        write_json(info, running.model_dump(mode="json"))
        try:
            yield
        finally:
            info.unlink(missing_ok=True)


def running_retrain(settings: Settings, name: str) -> RunningRetrain | None:
    """The pipeline run of catalog ``name`` running now, or None."""
    lock, info = _retraining_paths(settings, name)
    if not is_held(lock):
        return None
    try:
        return RunningRetrain.model_validate_json(info.read_text())
    except (OSError, ValueError):
        return RunningRetrain(pid=holder_pid(lock))
