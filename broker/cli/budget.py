"""``gpubroker budget``: spending caps per team that planning and execution enforce."""

from __future__ import annotations

import enum

import typer

from broker.cli.output import FORMAT_HELP, Format, render

app = typer.Typer(help="Team budgets (hard caps per month or week).", no_args_is_help=True)
COLUMNS = ["team", "amount", "period", "period_start", "period_end", "spent", "remaining"]


class Period(enum.StrEnum):
    month = "month"
    week = "week"


@app.command("set")
def set_budget(
    team: str = typer.Argument(..., help="Team name, as in job specs."),
    amount: str = typer.Argument(..., help="US dollars per period, e.g. 5000."),
    period: Period = typer.Option(Period.month, "--period", help="Calendar month or ISO week."),
) -> None:
    """Set (or replace) a team's budget."""
    from dataclasses import asdict

    from broker.sdk import Broker

    with Broker() as broker:
        view = broker.budgets.set(team, amount, period.value)
    render([asdict(view)], COLUMNS, Format.table, title="Budget set")


@app.command("list")
def list_budgets(
    fmt: Format = typer.Option(Format.table, "--format", help=FORMAT_HELP),
) -> None:
    """List budgets with what is spent (metered plus live allocations) and left."""
    from dataclasses import asdict

    from broker.sdk import Broker

    with Broker() as broker:
        views = broker.budgets.list()
    render(
        [asdict(v) for v in views],
        COLUMNS,
        fmt,
        title="Budgets",
        empty="No budgets: every team may spend without a cap. Set one: "
        "`gpubroker budget set TEAM 5000 --period month`.",
    )


@app.command("remove")
def remove_budget(team: str = typer.Argument(..., help="Team name.")) -> None:
    """Remove a team's budget."""
    from broker.sdk import Broker

    with Broker() as broker:
        broker.budgets.remove(team)
    typer.echo(f"removed the budget of {team}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="budget")
