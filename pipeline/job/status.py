"""Where each catalog stands: its current version against the one the served recommendations
were made from (``befa status``).

Reads only small JSON files (the watch registry and state, the served records, each
catalog's ``catalog.json``): no table is loaded and nothing heavy is imported, so it answers
at once, also while a retrain runs.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from pipeline.job.served import (
    CatalogVersion,
    RunningRetrain,
    ServedRecord,
    current_catalog,
    registered_names,
    running_retrain,
    served_names,
    served_record,
    watch_dir,
)
from pipeline.settings import Settings


class CatalogStatus(BaseModel):
    """One catalog: its current version, what the served recommendations were made from,
    whether a retrain runs, and what the last watch found."""

    catalog: str
    registered: bool
    current: CatalogVersion | None
    served: ServedRecord | None
    running: RunningRetrain | None
    last_watch_at: str | None = None
    last_watch: str | None = None

    @property
    def stale(self) -> bool:
        """The served recommendations are older than the catalog (or there are none)."""
        if self.current is None:
            return False
        return self.served is None or self.served.fingerprint != self.current.fingerprint

    def verdict(self) -> str:
        """The one line that says whether the served recommendations are up to date."""
        if self.current is None:
            return "NOT INGESTED: no catalog version is stored"
        if self.served is None:
            return "STALE: no pipeline run of this catalog has succeeded, nothing is served from it"
        if self.stale:
            return (
                f"STALE: the served recommendations are older than the catalog: made from version "
                f"{self.served.catalog_version.label()}, the catalog is at {self.current.label()}"
            )
        if self.served.recommendations is None:
            return "up to date: the last successful run used the current version (it wrote no recommendations)"
        return "up to date: the served recommendations were made from the current catalog version"

    def retrain_line(self) -> str | None:
        if self.running is not None:
            return f"a pipeline run of this catalog is running now ({self.running.describe()})"
        if not self.stale or self.current is None:
            return None
        if self.registered:
            return f"due: the catalog watch asks for it at its next check (or run `befa run {self.catalog}`)"
        return f"due: run `befa run {self.catalog}` (the catalog is not registered for watching)"


def catalog_status(settings: Settings, name: str, registered: bool = True) -> CatalogStatus:
    state_path = watch_dir(settings) / "state" / f"{name}.json"
    try:
        state = json.loads(state_path.read_text())
    except (FileNotFoundError, ValueError):
        state = {}
    last = state.get("last") or {}
    return CatalogStatus(
        catalog=name,
        registered=registered,
        current=current_catalog(settings, name),
        served=served_record(settings, name),
        running=running_retrain(settings, name),
        last_watch_at=state.get("checked_at"),
        last_watch=last.get("error") or last.get("reason"),
    )


def known_catalogs(settings: Settings) -> dict[str, bool]:
    """Every catalog to report on: the registered ones and those with a served record
    (name -> registered)."""
    registered = set(registered_names(settings))
    return {name: name in registered for name in sorted(registered | set(served_names(settings)))}
