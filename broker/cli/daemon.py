"""``gpubroker daemon``: refresh, plan, run, reconcile and make due reports in a loop."""

from __future__ import annotations

import typer


def daemon(
    once: bool = typer.Option(False, "--once", help="Run one tick and exit."),
    interval: float = typer.Option(30.0, "--interval", min=0.1, help="Seconds between ticks."),
    refresh_interval: float = typer.Option(
        3600.0, "--refresh-interval", min=1.0, help="Seconds between offer refreshes."
    ),
) -> None:
    """Run the broker daemon; several may share one PostgreSQL database. Stops on SIGTERM."""
    import logging

    from broker.sdk import Broker

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("gpubroker").setLevel(logging.INFO)
    with Broker() as broker:
        loop = broker.daemon(interval=interval, refresh_interval=refresh_interval)
        ticks = loop.run(once=once)
    failed = sum(len(t.errors) for t in ticks)
    typer.echo(f"daemon stopped after {len(ticks)} tick(s), {failed} step error(s)")
    if once and failed:
        from broker.errors import BrokerError

        first = next(e for t in ticks for e in t.errors)
        raise BrokerError(f"daemon --once: {failed} step error(s); first: {first}")


def register(app: typer.Typer) -> None:
    app.command("daemon")(daemon)
