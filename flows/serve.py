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

import datetime as dt
from typing import Any, Optional, Sequence

import typer
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


# -- the command line: `python -m flows.serve`, `befa serve` (and `befa server`, which passes these on) --
Interval = typer.Option(DEFAULT_INTERVAL_S, "--interval", envvar="BEFA_WATCH_INTERVAL", help="Watch every N seconds.")
Cron = typer.Option(
    None,
    "--cron",
    envvar="BEFA_WATCH_CRON",
    help="Watch on a cron schedule instead, e.g. '0 3 * * *' (not with --interval; "
    "set by env var, it wins over the interval).",
)
NoSchedule = typer.Option(False, "--no-schedule", help="No schedule: run the watch deployment by hand.")
RetrainOnChange = typer.Option(
    True,
    "--retrain-on-change/--no-retrain-on-change",
    envvar="BEFA_RETRAIN_ON_CHANGE",
    help="Rerun the pipeline when the watch updates a catalog's features.",
)
CatalogOpt = typer.Option([], "--catalog", help="Watch only this catalog (repeatable; default: all registered).")
SERVE_OPTIONS = ("interval", "cron", "no_schedule", "retrain", "catalogs")


def schedule_of(
    ctx: typer.Context, interval: float, cron: str | None, no_schedule: bool
) -> tuple[float | None, str | None]:
    """(interval, cron) of the watch; --interval, --cron and --no-schedule exclude each other on the command line."""
    given = [
        flag
        for name, flag in (("interval", "--interval"), ("cron", "--cron"), ("no_schedule", "--no-schedule"))
        if _source(ctx, name) == "COMMANDLINE"
    ]
    if len(given) > 1:
        raise typer.BadParameter(f"{' and '.join(given)} exclude each other: give one", param_hint=given[-1])
    return (None if no_schedule or cron else interval), (None if no_schedule else cron)


def serve_argv(ctx: typer.Context) -> list[str]:
    """The serve options given on this command line, as ``python -m flows.serve`` takes them
    (defaults and environment variables are left to the serve process)."""
    p, out = ctx.params, []
    if _source(ctx, "interval") == "COMMANDLINE":
        out += ["--interval", str(p["interval"])]
    if _source(ctx, "cron") == "COMMANDLINE":
        out += ["--cron", p["cron"]]
    if p["no_schedule"]:
        out.append("--no-schedule")
    if _source(ctx, "retrain") == "COMMANDLINE":
        out.append("--retrain-on-change" if p["retrain"] else "--no-retrain-on-change")
    for name in p["catalogs"] or ():
        out += ["--catalog", name]
    return out


def _source(ctx: typer.Context, name: str) -> str | None:
    source = ctx.get_parameter_source(name)
    return None if source is None else source.name


app = typer.Typer(add_completion=False)


@app.command(name="serve")
def serve_command(
    ctx: typer.Context,
    interval: float = Interval,
    cron: Optional[str] = Cron,
    no_schedule: bool = NoSchedule,
    retrain: bool = RetrainOnChange,
    catalogs: list[str] = CatalogOpt,
) -> None:
    """Serve befa/full-pipeline and befa-watch/catalog-watch (+ retrain trigger) to a Prefect server.

    Needs PREFECT_API_URL pointing at a Prefect server (`befa server` starts one and this
    process together); without it, Prefect starts a temporary local server that runs no
    schedules."""
    interval_s, cron_expr = schedule_of(ctx, interval, cron, no_schedule)
    serve(
        *build_deployments(interval_s=interval_s, cron=cron_expr, retrain_on_change=retrain, catalogs=catalogs or None)
    )


if __name__ == "__main__":
    app(prog_name="python -m flows.serve")
