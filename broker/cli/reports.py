"""``gpubroker report`` and ``gpubroker reports schedule``: cost reports, now or on a cron."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Any

import typer

from broker.cli.output import Format, render
from broker.errors import UserError


class ReportFormat(enum.StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    html = "html"


class FileFormat(enum.StrEnum):
    html = "html"
    csv = "csv"
    json = "json"


TOTAL_LABELS = (
    ("spend", "spend (USD)"),
    ("gpu_hours", "GPU-hours"),
    ("on_demand_cost", "on-demand list cost"),
    ("savings_vs_on_demand", "saved vs on-demand"),
    ("cheapest_cost", "per-job-cheapest cost"),
    ("savings_vs_cheapest", "saved vs per-job cheapest"),
    ("utilisation", "utilisation (busy / billed GPU-hours)"),
    ("jobs", "jobs"),
    ("runs", "instance runs"),
)


SHORT_HEADERS = {
    "gpu_hours": "GPU-h",
    "on_demand_cost": "on-demand",
    "savings_vs_on_demand": "saved/OD",
    "cheapest_cost": "cheapest",
    "savings_vs_cheapest": "saved/cheapest",
    "utilisation": "util",
    "actual_total": "lifetime",
    "estimated_total": "estimated",
}


def _print_tables(report: Any) -> None:
    from dataclasses import asdict

    from broker.services.reports import METRIC_COLUMNS, group_rows

    window = f"{report.period_from:%Y-%m-%d %H:%M} to {report.period_to:%Y-%m-%d %H:%M} UTC"
    totals = asdict(report.totals)
    render(
        [{"figure": label, "value": totals[key]} for key, label in TOTAL_LABELS],
        ["figure", "value"],
        Format.table,
        title=f"Spend {window}",
    )
    render(
        group_rows(report),
        [*report.group_by, *METRIC_COLUMNS],
        Format.table,
        title="By " + ", ".join(report.group_by),
        headers=SHORT_HEADERS,
    )
    if report.budgets:
        render(
            [asdict(b) for b in report.budgets],
            ["team", "period", "amount", "spent", "committed", "remaining", "burn", "elapsed"],
            Format.table,
            title="Budget burn",
        )
    if report.top_jobs:
        render(
            [asdict(j) for j in report.top_jobs],
            [
                "job_id",
                "name",
                "team",
                "state",
                "spend",
                "gpu_hours",
                "actual_total",
                "estimated_total",
            ],
            Format.table,
            title="Top jobs",
            headers=SHORT_HEADERS,
        )
    for note in report.notes:
        typer.echo(f"note: {note}")


def report(
    since: str | None = typer.Option(
        None, "--since", help="Window ending now (or at --to): 12h, 7d, 2w. Default 7d."
    ),
    start: str | None = typer.Option(None, "--from", help="Window start: YYYY-MM-DD[THH:MM]."),
    end: str | None = typer.Option(
        None, "--to", help="Window end (a bare date includes that day). Default: now."
    ),
    group_by: str = typer.Option(
        "team,provider", "--group-by", help="Comma-separated: team, provider, region, gpu, job."
    ),
    fmt: ReportFormat = typer.Option(ReportFormat.table, "--format", help="Output format."),
    out: Path | None = typer.Option(None, "--out", help="Write to this file instead of stdout."),
    top: int = typer.Option(10, "--top", min=1, help="How many top jobs to list."),
) -> None:
    """Spend, GPU-hours, savings, utilisation and budget burn from the usage ledger."""
    from broker.sdk import Broker
    from broker.services.reports import render_text, write_atomic

    with Broker() as broker:
        result = broker.report(since=since, start=start, end=end, group_by=group_by, top=top)
    if fmt is ReportFormat.table:
        if out is not None:
            raise UserError(
                "format: table prints to the terminal; use csv, json or html with --out"
            )
        _print_tables(result)
        return
    text = render_text(result, fmt.value)
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomic(out, text)
        typer.echo(f"wrote {out}")


schedule_app = typer.Typer(
    help="Reports the daemon makes at cron times (UTC).", no_args_is_help=True
)
reports_app = typer.Typer(help="Scheduled cost reports.", no_args_is_help=True)
reports_app.add_typer(schedule_app, name="schedule")

SCHEDULE_COLUMNS = [
    "id",
    "cron",
    "period",
    "format",
    "out_dir",
    "webhook",
    "group_by",
    "last_run_at",
    "next_due",
]


@schedule_app.command("add")
def schedule_add(
    cron: str = typer.Argument(..., help="Five-field cron expression in UTC, e.g. '0 8 * * 1'."),
    period: str = typer.Option("7d", "--period", help="Window each report covers: 24h, 7d, 4w."),
    fmt: FileFormat = typer.Option(FileFormat.html, "--format", help="File format."),
    out: Path = typer.Option(..., "--out", help="Folder the reports are written to."),
    webhook: str | None = typer.Option(
        None, "--webhook", help="URL that receives a JSON POST for each report."
    ),
    group_by: str = typer.Option("team,provider", "--group-by", help="Grouping of the report."),
) -> None:
    """Add a report schedule."""
    from dataclasses import asdict

    from broker.sdk import Broker

    with Broker() as broker:
        view = broker.schedules.add(
            cron, out_dir=out, period=period, format=fmt.value, webhook=webhook, group_by=group_by
        )
    render([asdict(view)], SCHEDULE_COLUMNS, Format.table, title="Added report schedule")


@schedule_app.command("list")
def schedule_list(
    fmt: Format = typer.Option(Format.table, "--format", help="Output format."),
) -> None:
    """List report schedules with their next due time."""
    from dataclasses import asdict

    from broker.sdk import Broker

    with Broker() as broker:
        views = broker.schedules.list()
    render([asdict(v) for v in views], SCHEDULE_COLUMNS, fmt, title="Report schedules")


@schedule_app.command("remove")
def schedule_remove(schedule_id: int = typer.Argument(..., help="Schedule id.")) -> None:
    """Remove a report schedule (reports it made are kept)."""
    from broker.sdk import Broker

    with Broker() as broker:
        broker.schedules.remove(schedule_id)
    typer.echo(f"removed report schedule {schedule_id}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.add_typer(reports_app, name="reports")
