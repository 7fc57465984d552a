"""``gpubroker endpoints``: where serving jobs answer, with their replicas and traffic."""

from __future__ import annotations

import typer

from broker.cli.output import FORMAT_HELP, Format, render

COLUMNS = ["job_id", "area", "url", "replicas", "state"]
TABLE_COLUMNS = [*COLUMNS, "requests", "tokens", "request_rate"]
JSON_COLUMNS = [
    *COLUMNS,
    "min_replicas",
    "max_replicas",
    "requests",
    "tokens",
    "errors",
    "request_rate",
    "allocation_id",
]
HEADERS = {"job_id": "job", "request_rate": "peak req/s"}


def endpoints(
    job: int = typer.Option(None, "--job", help="Only this job's endpoints.", metavar="ID"),
    all_: bool = typer.Option(False, "--all", help="Also endpoints that were stopped or lost."),
    fmt: Format = typer.Option(Format.table, "--format", help=FORMAT_HELP),
) -> None:
    """List serving endpoints: one per allocation of a serving job, with its user area,
    URL (POST /generate for the bundled GPT), replicas and state (STARTING, READY,
    DEGRADED, STOPPED, LOST). JSON keys: job_id, area, url, replicas, state, min_replicas,
    max_replicas, requests, tokens, errors, request_rate, allocation_id."""
    from broker.sdk import Broker

    with Broker() as broker:
        views = broker.endpoints(job, live=not all_)
    rows = [view.to_dict() for view in views]
    hint = (
        "No live endpoints. Submit a serving job (`gpubroker submit examples/gpt-tiny-serve.yaml`)"
        "; `--all` also lists stopped ones."
    )
    columns = TABLE_COLUMNS if fmt is Format.table else JSON_COLUMNS
    render(rows, columns, fmt, title="Endpoints", headers=HEADERS, empty=hint)


def register(app: typer.Typer) -> None:
    app.command("endpoints")(endpoints)
