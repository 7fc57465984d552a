"""``gpubroker submit / jobs / logs / cancel / reconcile``: run jobs and watch them."""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from broker.cli.output import Format, dump_json, jsonable, render
from broker.domain import JobState

COLUMNS = ["id", "name", "kind", "team", "state", "attempts", "message", "created_at"]
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
        TextColumn("${task.fields[cost]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=False,
    )
    task = bar.add_task("PENDING", total=None, loss="-", tps="-", cost="0.00")

    def update(p: Any) -> None:
        fields: dict[str, Any] = {"description": p.state, "cost": f"{p.cost:.4f}"}
        if p.steps:
            fields["total"] = p.steps
        if p.step is not None:
            fields["completed"] = p.step
        if p.loss is not None:
            fields["loss"] = f"{p.loss:.3f}"
        if p.tokens_per_s is not None:
            fields["tps"] = f"{p.tokens_per_s:,.0f}"
        if p.message:
            bar.console.log(f"job {p.job_id}: {p.state.lower()}: {p.message}")
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
            f"  cost       {result.cost:.4f} USD",
            f"  output     gpubroker logs {result.job_id}",
        ]
        typer.echo("\n".join(lines))
    else:
        render([row], list(row), fmt)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def list_jobs(
    state: list[str] = typer.Option(None, "--state", help="Only jobs in this state (repeatable)."),
    fmt: Format = typer.Option(Format.table, "--format", help="Output format."),
) -> None:
    """List jobs."""
    from broker.errors import UserError
    from broker.sdk import Broker

    allowed = [s.value for s in JobState]
    states = [s.upper() for s in state or []]
    for value in states:
        if value not in allowed:
            raise UserError(f"--state: {value!r} is not a job state; allowed: {', '.join(allowed)}")
    with Broker() as broker:
        views = broker.jobs(states or None)
    render([v.as_row() for v in views], COLUMNS, fmt, title="Jobs")


def logs(
    job_id: int = typer.Argument(..., help="Job id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until it ends."),
    events: bool = typer.Option(
        False, "--events", help="The job's events (state changes, progress) instead."
    ),
    fmt: Format = typer.Option(Format.table, "--format", help="Events: table or json lines."),
) -> None:
    """Print a job's output (every node's stdout and stderr), or its events."""
    from broker.sdk import Broker

    with Broker() as broker:
        cursor = 0
        while True:
            final = broker.job(job_id).state.value in FINAL
            cursor = _print_since(broker, job_id, cursor, events, fmt)
            if not follow or final:
                return
            time.sleep(1.0)


def _print_since(broker: Any, job_id: int, cursor: int, events: bool, fmt: Format) -> int:
    """Print what came after ``cursor`` (an event id, or a byte offset of the output)."""
    if events:
        for event in broker.job_events(job_id, cursor):
            cursor = event.id
            _print_event(event, fmt)
        return cursor
    lines, cursor = broker.job_output(job_id, cursor)
    for line in lines:
        typer.echo(line)
    return cursor


def _print_event(event: Any, fmt: Format) -> None:
    if fmt is Format.table:
        items = event.payload.items()
        payload = " ".join(f"{k}={_short(v)}" for k, v in items if k != "time")
        typer.echo(f"{event.ts:%Y-%m-%d %H:%M:%S} {event.kind:<9} {payload}")
    else:
        record = {"id": event.id, "ts": event.ts, "kind": event.kind, "payload": event.payload}
        typer.echo(json.dumps(jsonable(record)))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def cancel(job_id: int = typer.Argument(..., help="Job id.")) -> None:
    """Cancel a job; whatever it holds is terminated."""
    from broker.sdk import Broker

    with Broker() as broker:
        view = broker.cancel(job_id)
    typer.echo(f"job {view.id}: {view.state.value}")


def reconcile(
    provider: list[str] = typer.Option(None, "--provider", help="Only this provider."),
    fmt: Format = typer.Option(Format.table, "--format", help="Output format."),
) -> None:
    """Terminate instances nothing owns and re-plan jobs whose executor is gone."""
    from broker.sdk import Broker

    with Broker() as broker:
        report = broker.reconcile(provider or None)
    data = report.as_dict()
    if fmt is Format.json:
        typer.echo(dump_json(data))
        return
    rows = [
        {"what": key, "count": len(v), "items": ", ".join(map(str, v))} for key, v in data.items()
    ]
    render(rows, ["what", "count", "items"], fmt, title="Reconcile")


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.command("jobs")(list_jobs)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
    app.command("reconcile")(reconcile)
