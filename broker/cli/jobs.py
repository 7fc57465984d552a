"""``gpubroker submit / jobs / logs / cancel / reconcile``: run jobs and watch them."""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from broker.cli.output import FORMAT_HELP, Format, dump_json, jsonable, money, render
from broker.domain import JobState

COLUMNS = ["id", "name", "kind", "team", "state", "attempts", "message", "created_at"]
LIST_COLUMNS = [
    "id",
    "name",
    "kind",
    "team",
    "state",
    "gpu",
    "nodes",
    "provider",
    "region",
    "cost_so_far",
    "estimate",
    "attempts",
    "created_at",
    "message",
]
LIST_JSON = [
    "id",
    "name",
    "kind",
    "team",
    "state",
    "priority",
    "attempts",
    "message",
    "created_at",
    "updated_at",
    "gpu",
    "nodes",
    "provider",
    "region",
    "cost_so_far",
    "estimate",
]
LIST_HEADERS = {"cost_so_far": "cost so far", "created_at": "created"}
FINAL = {JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value}


def _bar_and_callback() -> tuple[Any, Any]:
    """A rich progress bar and the callback the executor feeds it with."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TextColumn("{task.fields[cost]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=False,
    )
    task = bar.add_task("PENDING", total=None, loss="-", tps="-", cost="$0.00")

    def update(p: Any) -> None:
        fields: dict[str, Any] = {"description": p.state, "cost": money(p.cost)}
        if p.steps:
            fields["total"] = p.steps
        if p.step is not None:
            fields["completed"] = p.step
        if p.loss is not None:
            fields["loss"] = f"{p.loss:.3f}"
        if p.tokens_per_s is not None:
            fields["tps"] = f"{p.tokens_per_s:,.0f}"
        if p.message:  # print, not log: no source location at the end of the line
            bar.console.print(f"job {p.job_id}: {p.state.lower()}: {p.message}")
        bar.update(task, **fields)

    return bar, update


def submit(
    spec: str = typer.Argument(..., help="Job spec YAML file."),
    wait: bool = typer.Option(False, "--wait", help="Plan, launch and train now; show progress."),
    fmt: Format = typer.Option(Format.table, "--format", help="Output format of the summary."),
) -> None:
    """Submit a job; with --wait, plan it, launch its nodes and train it to the end."""
    from broker.sdk import Broker

    with Broker() as broker:
        handle = broker.submit(spec)
        if not wait:
            view = handle.view()
            render([view.as_row()], COLUMNS, fmt, title="Submitted")
            return
        bar, update = _bar_and_callback()
        with bar:
            handle.wait(update)
        result = broker.job_summary(handle.id)
    _print_summary(result, fmt)
    if result.state != JobState.SUCCEEDED.value:
        raise typer.Exit(1)


def _print_summary(result: Any, fmt: Format) -> None:
    from dataclasses import asdict

    row = asdict(result)
    if fmt is Format.table:
        lines = [
            f"job {result.job_id}: {result.state}"
            + (f" ({result.message})" if result.message else "")
        ]
        if result.steps is not None:  # a training loop that reports its steps and loss
            lines += [
                f"  steps      {result.step}/{result.steps}",
                f"  loss       {_num(result.first_loss)} -> {_num(result.last_loss)}",
            ]
        lines += [
            f"  checkpoint {result.checkpoint or '-'}",
            f"  usage      {result.usage_rows} node runs, {result.node_hours:.4f} node-hours",
            f"  cost       {money(result.cost)}",
            f"  output     gpubroker logs {result.job_id}",
        ]
        typer.echo("\n".join(lines))
    else:
        render([row], list(row), fmt)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def list_jobs(
    state: list[str] = typer.Option(None, "--state", help="Only jobs in this state (repeatable)."),
    fmt: Format = typer.Option(Format.table, "--format", help=FORMAT_HELP),
) -> None:
    """List jobs with where they run (GPU, nodes, provider, region), their cost so far
    (metered plus instances still up) and their estimate. JSON keys: id, name, kind, team,
    state, priority, attempts, message, created_at, updated_at, gpu, nodes, provider,
    region, cost_so_far, estimate."""
    from broker.errors import UserError
    from broker.sdk import Broker

    allowed = [s.value for s in JobState]
    states = [s.upper() for s in state or []]
    for value in states:
        if value not in allowed:
            raise UserError(f"--state: {value!r} is not a job state; allowed: {', '.join(allowed)}")
    with Broker() as broker:
        views = broker.jobs(states or None)
        where = broker.job_resources([v.id for v in views])
    rows = [{**v.as_row(), **where[v.id].__dict__} for v in views]
    columns = LIST_COLUMNS if fmt is Format.table else LIST_JSON
    hint = (
        f"No jobs in state {', '.join(states)}; `gpubroker jobs` lists every job."
        if states
        else "No jobs yet. Submit one: `gpubroker submit examples/hello-ranks.yaml`."
    )
    render(rows, columns, fmt, title="Jobs", headers=LIST_HEADERS, empty=hint)


def logs(
    job_id: int = typer.Argument(..., help="Job id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until it ends."),
    events: bool = typer.Option(
        False, "--events", help="The job's events (state changes, progress) instead."
    ),
    fmt: Format = typer.Option(
        Format.table, "--format", help="Events: table, json (one array) or csv."
    ),
) -> None:
    """Print a job's output (every node's stdout and stderr), or its events."""
    from broker.sdk import Broker

    printer = _EventPrinter(fmt if events else Format.table)  # output lines are plain text
    with Broker() as broker:
        cursor = 0
        warned = False
        try:
            while True:
                state = broker.job(job_id).state.value
                final = state in FINAL
                cursor = _print_since(broker, job_id, cursor, events, printer)
                if not follow or final:
                    return
                if not warned and state in (JobState.PENDING.value, JobState.PLANNED.value):
                    typer.echo(
                        f"job {job_id} is {state}: it runs only under `gpubroker daemon` (or "
                        "`gpubroker submit --wait`); waiting for it to start (Ctrl-C stops)",
                        err=True,
                    )
                    warned = True
                time.sleep(1.0)
        finally:
            printer.close()


class _EventPrinter:
    """Events as lines (table), as one JSON array written as they come, or as CSV rows."""

    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt
        self.count = 0

    def add(self, event: Any) -> None:
        record = {"id": event.id, "ts": event.ts, "kind": event.kind, "payload": event.payload}
        if self.fmt is Format.table:
            items = event.payload.items()
            payload = " ".join(f"{k}={_short(v)}" for k, v in items if k != "time")
            typer.echo(f"{event.ts:%Y-%m-%d %H:%M:%S} {event.kind:<9} {payload}")
        elif self.fmt is Format.json:
            text = json.dumps(jsonable(record), indent=2).replace("\n", "\n  ")
            typer.echo(("[\n  " if self.count == 0 else ",\n  ") + text, nl=False)
        else:
            import csv
            import io

            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            if self.count == 0:
                writer.writerow(["id", "ts", "kind", "payload"])
            writer.writerow(
                [event.id, event.ts.isoformat(), event.kind, json.dumps(jsonable(event.payload))]
            )
            typer.echo(buffer.getvalue(), nl=False)
        self.count += 1

    def close(self) -> None:
        if self.fmt is Format.json:
            typer.echo("[]" if self.count == 0 else "\n]")
        elif self.fmt is Format.csv and self.count == 0:
            typer.echo("id,ts,kind,payload")


def _print_since(
    broker: Any, job_id: int, cursor: int, events: bool, printer: _EventPrinter
) -> int:
    """Print what came after ``cursor`` (an event id, or a byte offset of the output)."""
    if events:
        for event in broker.job_events(job_id, cursor):
            cursor = event.id
            printer.add(event)
        return cursor
    lines, cursor = broker.job_output(job_id, cursor)
    for line in lines:
        typer.echo(line)
    return cursor


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def cancel(
    job_ids: list[int] = typer.Argument(..., metavar="JOB", help="Job ids."),
) -> None:
    """Cancel jobs; whatever they hold is terminated."""
    from broker.sdk import Broker

    with Broker() as broker:
        for job_id in dict.fromkeys(job_ids):
            broker.job(job_id)  # an unknown id stops before anything is cancelled
        for job_id in dict.fromkeys(job_ids):
            view = broker.cancel(job_id)
            typer.echo(f"job {view.id}: {view.state.value}")


def reconcile(
    provider: list[str] = typer.Option(None, "--provider", help="Only this provider (repeatable)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would be terminated and re-planned; change nothing."
    ),
    fmt: Format = typer.Option(Format.table, "--format", help=FORMAT_HELP),
) -> None:
    """Terminate instances nothing owns and re-plan jobs whose executor is gone."""
    from broker.sdk import Broker

    with Broker() as broker:
        report = broker.reconcile(provider or None, dry_run=dry_run)
    data = report.as_dict()
    if dry_run and fmt is Format.table:
        typer.echo("dry run: nothing was changed; without --dry-run reconcile would do this")
    if fmt is Format.json:
        typer.echo(dump_json(data))
        _fail_on_errors(report)
        return
    rows = [
        {"what": key, "count": len(v), "items": ", ".join(map(str, v))} for key, v in data.items()
    ]
    title = "Reconcile (dry run)" if dry_run else "Reconcile"
    render(rows, ["what", "count", "items"], fmt, title=title)
    _fail_on_errors(report)


def _fail_on_errors(report: Any) -> None:
    """A pass that could not reach a provider (or end an allocation) exits 1, naming it."""
    if report.errors:
        from broker.errors import ProviderError

        failed = ", ".join(report.failed_providers) or "none"
        raise ProviderError(
            "reconcile",
            f"{len(report.errors)} error(s) (failed providers: {failed}); first: "
            f"{report.errors[0]}",
        )


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.command("jobs")(list_jobs)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
    app.command("reconcile")(reconcile)
