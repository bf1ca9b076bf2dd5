"""The catalog watch flow: re-ingest and re-encode changed catalogs, announce it with an event.

Run on a schedule (``flows/serve.py``: interval or cron). For each registered catalog
(``pipeline.job.watch``) whose content changed, the flow emits one Prefect event::

    event     befa.features.updated
    resource  prefect.resource.id = befa.catalog.<name>, befa.catalog = <name>,
              befa.retrain = "true" | "false"
    payload   what changed (counts), items re-encoded, new snapshot ids

and nothing at all when nothing changed. A catalog whose served recommendations come
from an older version than the current one (its last retrain failed or was killed) counts
as changed, watch after watch, until a retrain succeeds (``pipeline.job.watch``): the
event is emitted again, so the trigger retries the retrain; with ``retrain=False`` such a
catalog emits nothing (its features did not change). The ``full-pipeline`` deployment carries a
trigger on that event (``befa.retrain = "true"`` only) that reruns the pipeline for
that catalog with its registered parameters; ``retrain=False`` keeps the event (for
other automations and the event feed) but does not match the trigger.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from pipeline.job.watch import CatalogChange, watch_catalogs
from pipeline.settings import get_settings

EVENT = "befa.features.updated"


def resource_for(catalog: str, retrain: bool) -> dict[str, str]:
    return {
        "prefect.resource.id": f"befa.catalog.{catalog}",
        "prefect.resource.name": catalog,
        "befa.catalog": catalog,
        "befa.retrain": "true" if retrain else "false",
    }


@task(name="watch-catalogs", cache_policy=NO_CACHE)
def watch_task(catalogs: list[str] | None) -> list[CatalogChange]:
    return watch_catalogs(get_settings(), catalogs)


@flow(name="befa-watch", description="re-ingest and re-encode changed catalogs; emit befa.features.updated")
def watch(catalogs: list[str] | None = None, retrain: bool = True) -> list[dict[str, Any]]:
    logger = get_run_logger()
    changes = watch_task(catalogs)
    out = []
    for change in changes:
        summary = change.summary()
        if change.error:  # one catalog failed: said here, the others are still watched
            logger.error(change.sentence())
        elif change.retrain_only and not retrain:  # no new features, no retrain wanted: nothing to announce
            logger.info(change.sentence() + " (retrain off: no event)")
        elif change.changed:
            emit_event(event=EVENT, resource=resource_for(change.catalog, retrain), payload=summary)
            logger.info(change.sentence(event=EVENT, retrain=retrain))
        else:
            logger.info(change.sentence())
        out.append(summary)
    return out
