"""``gpubroker check``: which providers are usable, with which credentials and endpoint."""

from __future__ import annotations

import typer

from broker.cli.output import FORMAT_HELP, Format, render


def check(
    fmt: Format = typer.Option(Format.table, "--format", help=FORMAT_HELP),
    probe: bool = typer.Option(
        False, "--probe", help="Make one cheap API call per provider to prove its credentials."
    ),
) -> None:
    """Show which providers are usable, where their credentials come from and which
    endpoint they talk to. Never prints a secret."""
    from broker.sdk import Broker

    with Broker() as broker:
        rows = [c.to_dict() for c in broker.check(probe=probe)]
    for row in rows:
        row["usable"] = bool(row["usable"])
    render(
        rows, ("provider", "usable", "credentials", "endpoint", "detail"), fmt, title="Providers"
    )


def register(app: typer.Typer) -> None:
    app.command("check")(check)
