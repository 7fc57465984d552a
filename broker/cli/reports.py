"""``gpubroker report`` and ``gpubroker report schedule``: cost reports, now or on a cron.

``gpubroker reports schedule`` is the former spelling, hidden and kept for one release.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Any

import typer

from broker.cli.output import FORMAT_HELP, Format, money, number, percent, render
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
    ("spend", "spend", money),
    ("gpu_hours", "GPU-hours", number),
    ("on_demand_cost", "on-demand list cost", money),
    ("savings_vs_on_demand", "saved vs on-demand", money),
    ("cheapest_cost", "per-job-cheapest cost", money),
    ("savings_vs_cheapest", "saved vs per-job cheapest", money),
    ("utilisation", "utilisation (busy / billed GPU-hours)", percent),
    ("idle_cost", "idle (paid, not busy)", money),
    ("jobs", "jobs", str),
    ("runs", "instance runs", str),
)


BUDGET_COLUMNS = [
    "team",
    "period",
    "amount",
    "spent",
    "committed",
    "remaining",
    "burn",
    "elapsed",
    "forecast",
]
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

    from broker.services.reports.render import METRIC_COLUMNS, group_rows

    window = f"{report.period_from:%Y-%m-%d %H:%M} to {report.period_to:%Y-%m-%d %H:%M} UTC"
    totals = asdict(report.totals)
    if not report.totals.runs:
        typer.echo(
            f"No metered usage from {window}: no node ran in this window. Try a longer "
            "window (--since 30d, --since ytd) or `gpubroker jobs` to see what has run."
        )
        _print_budgets(report)
        return
    figures = [
        {"figure": label, "value": "-" if totals[key] is None else show(totals[key])}
        for key, label, show in TOTAL_LABELS
    ]
    if report.previous is not None:
        before = report.previous.spend
        change = (
            f"{(report.totals.spend - before) / before:+.1%} (was {money(before)})"
            if before
            else f"none before (was {money(before)})"
        )
        figures.insert(1, {"figure": "change vs previous period", "value": change})
    render(
        figures,
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
    _print_budgets(report)
    if report.overruns:
        render(
            [
                {**asdict(j), "ratio": f"{j.actual_total / j.estimated_total:.2f}x"}
                for j in report.overruns
                if j.estimated_total
            ],
            ["job_id", "name", "team", "state", "actual_total", "estimated_total", "ratio"],
            Format.table,
            title="Estimate overruns (lifetime cost past 1.25x the estimate)",
            headers=SHORT_HEADERS,
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
    if report.serving:
        render(
            report.serving,
            [
                "job_id",
                "name",
                "cost",
                "requests",
                "tokens",
                "cost_per_1k_requests",
                "cost_per_1m_tokens",
            ],
            Format.table,
            title="Serving",
            headers={"cost_per_1k_requests": "per 1k req", "cost_per_1m_tokens": "per 1M tok"},
        )
    for note in report.notes:
        typer.echo(f"note: {note}")


app = typer.Typer(
    help="Cost reports: spend, GPU-hours, savings, utilisation, budget burn; and schedules.",
    invoke_without_command=True,
)


def _print_budgets(report: Any) -> None:
    from dataclasses import asdict

    if report.budgets:
        render(
            [asdict(b) for b in report.budgets],
            BUDGET_COLUMNS,
            Format.table,
            title="Budget burn",
        )


@app.callback()
def report(
    ctx: typer.Context,
    since: str | None = typer.Option(
        None,
        "--since",
        metavar="WHEN",
        help="Window start, back from --to: 12h, 7d, 4w, 1mo, ytd or YYYY-MM-DD. Default 7d.",
    ),
    start: str | None = typer.Option(
        None, "--from", metavar="DATE", help="Window start: YYYY-MM-DD[THH:MM]."
    ),
    end: str | None = typer.Option(
        None,
        "--to",
        metavar="WHEN",
        help="Window end: a date (that day included) or 7d, 1mo ago. Default: now.",
    ),
    group_by: str = typer.Option(
        "team,provider", "--group-by", help="Comma-separated: team, provider, region, gpu, job."
    ),
    fmt: ReportFormat = typer.Option(
        ReportFormat.table, "--format", help="table, json, csv or html (one self-contained page)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write to this file instead of stdout."),
    top: int = typer.Option(10, "--top", min=1, max=100_000, help="How many top jobs to list."),
) -> None:
    """Spend, GPU-hours, savings, utilisation and budget burn from the usage ledger."""
    if ctx.invoked_subcommand is not None:
        return
    from broker.sdk import Broker
    from broker.services.reports.render import render_text, write_atomic

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
app.add_typer(schedule_app, name="schedule")
reports_app = typer.Typer(help="Former name of `report schedule`.", no_args_is_help=True)
reports_app.add_typer(schedule_app, name="schedule")

SCHEDULE_COLUMNS = [
    "id",
    "cron",
    "period",
    "format",
    "out_dir",
    "webhook",
    "email",
    "group_by",
    "last_run_at",
    "next_due",
]


@schedule_app.command("add")
def schedule_add(
    cron: str = typer.Argument(..., help="Five-field cron expression in UTC, e.g. '0 8 * * 1'."),
    period: str = typer.Option(
        "7d", "--period", help="Window each report covers: 24h, 7d, 4w or 1mo (calendar month)."
    ),
    fmt: FileFormat = typer.Option(FileFormat.html, "--format", help="File format."),
    out: Path = typer.Option(..., "--out", help="Folder the reports are written to."),
    webhook: str | None = typer.Option(
        None, "--webhook", help="URL that receives a JSON POST for each report."
    ),
    email: list[str] = typer.Option(
        [],
        "--email",
        metavar="ADDRESS",
        help="Also email each report here (repeatable); SMTP from the smtp_* settings.",
    ),
    group_by: str = typer.Option("team,provider", "--group-by", help="Grouping of the report."),
) -> None:
    """Add a report schedule."""
    from dataclasses import asdict

    from broker.sdk import Broker

    with Broker() as broker:
        view = broker.schedules.add(
            cron,
            out_dir=out,
            period=period,
            format=fmt.value,
            webhook=webhook,
            email=email or None,
            group_by=group_by,
        )
    render([asdict(view)], SCHEDULE_COLUMNS, Format.table, title="Added report schedule")


@schedule_app.command("list")
def schedule_list(
    fmt: Format = typer.Option(Format.table, "--format", help=FORMAT_HELP),
) -> None:
    """List report schedules with their next due time."""
    from dataclasses import asdict

    from broker.sdk import Broker

    with Broker() as broker:
        views = broker.schedules.list()
    render(
        [asdict(v) for v in views],
        SCHEDULE_COLUMNS,
        fmt,
        title="Report schedules",
        empty="No report schedules. Add one: "
        "`gpubroker report schedule add '0 8 * * 1' --out reports/`.",
    )


@schedule_app.command("remove")
def schedule_remove(schedule_id: int = typer.Argument(..., help="Schedule id.")) -> None:
    """Remove a report schedule (reports it made are kept)."""
    from broker.sdk import Broker

    with Broker() as broker:
        broker.schedules.remove(schedule_id)
    typer.echo(f"removed report schedule {schedule_id}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="report")
    root.add_typer(reports_app, name="reports", hidden=True)
