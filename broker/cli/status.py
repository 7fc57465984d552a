"""``gpubroker status`` (what is live and what it costs) and ``gpubroker down`` (stop it).

``status --format json`` prints one object: ``at``, ``allocations`` (``id``, ``job_id``,
``job``, ``team``, ``state``, ``provider``, ``region``, ``zone``, ``instance_type``,
``pricing``, ``gpu``, ``nodes``, ``gpus``, ``up``, ``created_at``, ``age_seconds``,
``price_per_hour`` per node, ``burn_rate``, ``cost_so_far``, ``estimate``), ``instances``
(``id``, ``allocation_id``, ``job_id``, ``provider``, ``region``, ``zone``,
``instance_type``, ``pricing``, ``instance``, ``node``, ``state``, ``address``,
``launched_at``, ``age_seconds``, ``price_per_hour``, ``cost_so_far``), ``providers``
(``provider``, ``allocations``, ``instances``, ``gpus``, ``burn_rate``, ``cost_so_far``),
``burn_rate`` (USD per hour), ``cost_so_far`` and ``notes``. ``--format csv`` prints the
allocations.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

import typer

from broker.cli.output import FORMAT_HELP, Format, duration, money, print_json, render

ALLOCATION_COLUMNS = [
    "id",
    "job",
    "team",
    "state",
    "provider",
    "region",
    "instance_type",
    "pricing",
    "gpu",
    "nodes",
    "up",
    "age",
    "price_per_hour",
    "burn_rate",
    "cost_so_far",
    "estimate",
]
ALLOCATION_CSV = [
    "id",
    "job_id",
    "job",
    "team",
    "state",
    "provider",
    "region",
    "zone",
    "instance_type",
    "pricing",
    "gpu",
    "nodes",
    "gpus",
    "up",
    "created_at",
    "age_seconds",
    "price_per_hour",
    "burn_rate",
    "cost_so_far",
    "estimate",
]
INSTANCE_COLUMNS = [
    "allocation_id",
    "node",
    "provider",
    "zone",
    "instance",
    "state",
    "address",
    "age",
    "price_per_hour",
    "cost_so_far",
]
PROVIDER_COLUMNS = ["provider", "allocations", "instances", "gpus", "burn_rate", "cost_so_far"]
HEADERS = {
    "instance_type": "type",
    "price_per_hour": "$/node-h",
    "burn_rate": "burn $/h",
    "cost_so_far": "cost so far",
    "allocation_id": "alloc",
}
NOTHING = (
    "Nothing is live: no allocation is planned, provisioning or running. "
    "`gpubroker jobs` lists jobs; `gpubroker submit SPEC --wait` runs one."
)


def status(fmt: Format = typer.Option(Format.table, "--format", help=FORMAT_HELP)) -> None:
    """Live allocations and instances per provider: age, $/h, cost so far, total burn rate."""
    from broker.sdk import Broker

    with Broker() as broker:
        live = broker.status()
    if fmt is Format.json:
        print_json(live.to_dict())
        return
    rows = [{**asdict(a), "age": duration(a.age_seconds)} for a in live.allocations]
    if fmt is Format.csv:
        render(rows, ALLOCATION_CSV, fmt)
        return
    if not rows:
        typer.echo(NOTHING)
        return
    render(rows, ALLOCATION_COLUMNS, fmt, title="Live allocations", headers=HEADERS)
    instances = [{**asdict(i), "age": duration(i.age_seconds)} for i in live.instances]
    if instances:
        typer.echo("")
        render(instances, INSTANCE_COLUMNS, fmt, title="Instances", headers=HEADERS)
    typer.echo("")
    render(
        [asdict(p) for p in live.providers],
        PROVIDER_COLUMNS,
        fmt,
        title="By provider",
        headers=HEADERS,
    )
    typer.echo(
        f"\nburn rate {money(live.burn_rate)}/h; cost so far {money(live.cost_so_far)} "
        f"(`gpubroker down JOB` or `gpubroker down --all` stops it)"
    )
    for note in live.notes:
        typer.echo(f"note: {note}")


def down(
    jobs: list[int] = typer.Argument(None, metavar="JOB", help="Job ids to stop."),
    all_jobs: bool = typer.Option(False, "--all", help="Every job that has not ended."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    fmt: Format = typer.Option(Format.table, "--format", help=FORMAT_HELP),
) -> None:
    """Cancel jobs and terminate everything they hold (asks first unless --yes)."""
    from broker.domain import JobState
    from broker.errors import UserError
    from broker.sdk import Broker

    if bool(jobs) == all_jobs:
        raise UserError("down: give job ids or --all (not both)")
    with Broker() as broker:
        if all_jobs:
            open_states = [s.value for s in JobState if not s.terminal]
            targets = [v.id for v in broker.jobs(open_states)]
        else:
            targets = list(dict.fromkeys(jobs))
            for job_id in targets:
                broker.job(job_id)  # NotFound names an unknown id before anything stops
        if not targets:
            typer.echo(
                "Nothing to stop: every job has ended. `gpubroker status` shows what is live."
            )
            return
        live = broker.status()
        held = [i for i in live.instances if i.job_id in targets]
        if not yes:
            if not sys.stdin.isatty():
                raise UserError("down: needs confirmation; pass --yes to stop without asking")
            typer.confirm(
                f"Cancel job(s) {', '.join(map(str, targets))} and terminate "
                f"{len(held)} instance(s)?",
                abort=True,
            )
        rows = [_stop(broker, job_id, held) for job_id in targets]
    render(rows, ["job", "before", "state", "instances", "detail"], fmt, title="Stopped")


def _stop(broker: Any, job_id: int, held: list[Any]) -> dict[str, Any]:
    from broker.errors import ConflictError

    before = broker.job(job_id).view().state.value
    instances = sum(1 for i in held if i.job_id == job_id)
    try:
        view = broker.cancel(job_id)
        return {
            "job": job_id,
            "before": before,
            "state": view.state.value,
            "instances": instances,
            "detail": "cancelled; its nodes are terminated",
        }
    except ConflictError as exc:  # it ended between the listing and now
        return {
            "job": job_id,
            "before": before,
            "state": before,
            "instances": 0,
            "detail": str(exc),
        }


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("down")(down)
