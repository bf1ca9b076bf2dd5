"""Register and serve both deployments, with the catalog-change trigger.

    python -m flows.serve                          # watch every hour, retrain on change
    python -m flows.serve --cron "0 3 * * *"       # watch at 03:00 every day
    python -m flows.serve --interval 600 --no-retrain-on-change
    python -m flows.serve --no-schedule            # watch only when run by hand

Deployments (``prefect deployment ls``):

- ``befa/full-pipeline``: the pipeline flow; its parameters default to the flow's
  defaults, override per run with ``--param``; carries the trigger below.
- ``befa-watch/catalog-watch``: the watch flow on the schedule.

Trigger: an event ``befa.features.updated`` whose resource has ``befa.retrain = "true"``
runs ``befa/full-pipeline`` with ``dataset`` = the catalog and ``use_registered=True``,
once per event and catalog. ``--no-retrain-on-change`` registers the deployment without
the trigger (and the watch labels its events ``befa.retrain = "false"``).

Needs ``PREFECT_API_URL`` pointing at a Prefect server (``python -m flows.server`` starts
one and this process together); without it, Prefect starts a temporary local server
that runs no schedules.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from typing import Any, Sequence

from prefect import serve
from prefect.events import DeploymentEventTrigger

from flows.pipeline_flow import befa
from flows.watch_flow import EVENT, watch

PIPELINE_DEPLOYMENT = "full-pipeline"
WATCH_DEPLOYMENT = "catalog-watch"
DEFAULT_INTERVAL_S = 3600.0


def retrain_trigger() -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name="befa-retrain-on-features-updated",
        description="rerun the pipeline of a catalog whose features were updated by the watch",
        expect={EVENT},
        match={"befa.retrain": "true"},
        for_each={"prefect.resource.id"},
        # single-expression templates keep their JSON type when rendered
        parameters={"dataset": "{{ event.payload.catalog }}", "use_registered": True},
    )


def build_deployments(
    interval_s: float | None = DEFAULT_INTERVAL_S,
    cron: str | None = None,
    retrain_on_change: bool = True,
    catalogs: Sequence[str] | None = None,
    pipeline_parameters: dict[str, Any] | None = None,
) -> list[Any]:
    """The two RunnerDeployments (not yet applied). ``cron`` wins over ``interval_s``;
    both None: the watch has no schedule."""
    pipeline = befa.to_deployment(
        name=PIPELINE_DEPLOYMENT,
        parameters=dict(pipeline_parameters or {}),
        triggers=[retrain_trigger()] if retrain_on_change else [],
        tags=["befa"],
        description="ingest -> extract -> split -> train base and +BeFA -> evaluate -> report",
    )
    schedule: dict[str, Any] = {}
    if cron:
        schedule["cron"] = cron
    elif interval_s:
        schedule["interval"] = dt.timedelta(seconds=interval_s)
    watcher = watch.to_deployment(
        name=WATCH_DEPLOYMENT,
        parameters={"catalogs": list(catalogs) if catalogs else None, "retrain": retrain_on_change},
        tags=["befa"],
        description="watch registered catalogs; re-ingest and re-encode what changed; emit befa.features.updated",
        **schedule,
    )
    return [pipeline, watcher]


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() not in ("0", "false", "no", "off")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flows.serve", description="Serve befa/full-pipeline and befa-watch/catalog-watch.")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--interval", type=float, default=float(os.environ.get("BEFA_WATCH_INTERVAL", DEFAULT_INTERVAL_S)), help="watch every N seconds (default 3600, env BEFA_WATCH_INTERVAL)")
    when.add_argument("--cron", default=os.environ.get("BEFA_WATCH_CRON"), help="watch on a cron schedule instead (env BEFA_WATCH_CRON)")
    when.add_argument("--no-schedule", action="store_true", help="no schedule: run the watch deployment by hand")
    p.add_argument("--retrain-on-change", dest="retrain", action=argparse.BooleanOptionalAction, default=_env_bool("BEFA_RETRAIN_ON_CHANGE", True), help="rerun the pipeline when the watch updates a catalog's features (env BEFA_RETRAIN_ON_CHANGE)")
    p.add_argument("--catalog", action="append", dest="catalogs", help="watch only this catalog (repeatable; default: all registered)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    interval = None if args.no_schedule or args.cron else args.interval
    cron = None if args.no_schedule else args.cron
    deployments = build_deployments(interval_s=interval, cron=cron, retrain_on_change=args.retrain, catalogs=args.catalogs)
    serve(*deployments)


if __name__ == "__main__":
    main()
