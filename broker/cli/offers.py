"""``gpubroker offers``: list, summarise, import and refresh GPU offers."""

from __future__ import annotations

import enum
import sys
from typing import Any

import typer

from broker.cli.output import FORMAT_HELP, Format, dump_json, render
from broker.errors import UserError

app = typer.Typer(
    help="GPU offers: list and filter them, summarise per GPU, import catalogs, refresh prices.",
    invoke_without_command=True,
)

TABLE_COLUMNS = (
    "id",
    "provider",
    "region",
    "zone",
    "instance_type",
    "gpus",
    "pricing",
    "price_per_hour",
    "price_per_gpu_hour",
    "interconnect_gbps",
    "rdma",
    "as_of",
)
HEADERS = {
    "instance_type": "type",
    "price_per_hour": "$/h",
    "price_per_gpu_hour": "$/gpu-h",
    "interconnect_gbps": "Gbps",
    "rdma": "fabric",
    "price_per_tflop_hour": "$/TFLOP-h",
    "gpu_memory_gib": "GiB/gpu",
}
# The column each sort orders by, shown next to the price when it is not already there.
SORT_COLUMNS = {"price-per-tflop": "price_per_tflop_hour", "gpu-memory": "gpu_memory_gib"}


def _per_tflop(offer: Any) -> Any:
    from workloads.gpus import GPUS

    spec = GPUS.get(offer.gpu or "")
    if spec is None or offer.price_per_hour is None or not offer.gpus_per_node:
        return None
    from decimal import Decimal

    return (offer.price_per_hour / (offer.gpus_per_node * Decimal(str(spec.bf16_tflops)))).quantize(
        Decimal("0.000001")
    )


def _table_row(offer: Any) -> dict[str, Any]:
    row = offer.to_dict()
    row["gpus"] = f"{offer.gpus_per_node}x {offer.gpu}" if offer.gpu else "-"
    row["pricing"] = offer.pricing + (" (stale)" if offer.stale else "")
    row["as_of"] = offer.as_of.date().isoformat() if offer.as_of else None
    row["id"] = offer.id
    row["price_per_tflop_hour"] = _per_tflop(offer)
    return row


def _age_days(offer: Any, now: Any) -> float:
    """Days since the offer's price was current (its source's as-of date, else fetched)."""
    from broker.domain import as_utc

    return round((now - as_utc(offer.as_of or offer.fetched_at)).total_seconds() / 86400, 1)


def _empty_hint(filters: dict[str, Any], fresh: bool, max_age: float) -> str:
    given = [f"{k} {v}" for k, v in filters.items() if v not in (None, False, "")]
    why = f"No offer matches {', '.join(given)}." if given else "No offers are stored."
    tips = ["`gpubroker offers summary` lists every GPU with offers"]
    if given:
        tips.append("drop or widen a filter")
    if fresh:
        tips.append(f"--fresh leaves out prices older than {max_age:g} days; try without it")
    tips.append("`gpubroker offers refresh` or `offers import` adds offers")
    return f"{why} Try: {'; '.join(tips)}."


class Sort(enum.StrEnum):
    price = "price"
    price_per_gpu = "price-per-gpu"
    price_per_tflop = "price-per-tflop"
    gpu_memory = "gpu-memory"


class ImportFormat(enum.StrEnum):
    skypilot = "skypilot"
    gpuhunt = "gpuhunt"


def _broker() -> Any:
    from broker.sdk import Broker

    return Broker()


@app.callback()
def offers(
    ctx: typer.Context,
    gpu: list[str] = typer.Option(
        [], "--gpu", help="GPU name or alias (repeatable): H100, A100-80GB, nvidia-l4 ..."
    ),
    min_gpus: int | None = typer.Option(
        None, "--min-gpus", min=0, help="At least this many GPUs per node."
    ),
    max_gpus: int | None = typer.Option(
        None, "--max-gpus", min=0, help="At most this many GPUs per node."
    ),
    min_gpu_memory: float | None = typer.Option(
        None, "--min-gpu-memory", min=0, max=1e6, help="GiB per GPU, at least."
    ),
    provider: list[str] = typer.Option(
        [], "--provider", help="Provider (repeatable): aws, gcp, local ..."
    ),
    region: list[str] = typer.Option([], "--region", help="Region glob (repeatable), e.g. 'us-*'."),
    spot: bool = typer.Option(False, "--spot", help="Spot offers only."),
    on_demand: bool = typer.Option(False, "--on-demand", help="On-demand offers only."),
    max_price: float | None = typer.Option(
        None, "--max-price", min=0, max=1e6, help="USD per node-hour, at most."
    ),
    min_interconnect: float | None = typer.Option(
        None, "--min-interconnect", min=0, max=1e6, help="Inter-node Gbps, at least."
    ),
    rdma: bool = typer.Option(
        False, "--rdma", help="Only offers with an RDMA fabric (EFA, TCPX/TCPXO, RoCE, InfiniBand)."
    ),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="Leave out stale offers and prices older than offer_max_age_days (default 30).",
    ),
    sort: Sort = typer.Option(Sort.price, "--sort", help="Sort order (its column is shown)."),
    limit: int = typer.Option(
        30, "--limit", min=0, max=1_000_000, help="Rows to show; 0 shows all."
    ),
    fmt: Format = typer.Option(Format.table, "--format", help=FORMAT_HELP),
) -> None:
    """List offers, cheapest first. JSON keys: id (for `estimate --offer`), provider, region,
    zone, instance_type, gpu, gpus_per_node, gpu_memory_gib, vcpus, memory_gib, pricing,
    price_per_hour, price_per_gpu_hour, interconnect_gbps, rdma (fabric), source,
    fetched_at, stale, as_of, age_days (since the price's as-of date)."""
    if ctx.invoked_subcommand is not None:
        return
    if spot and on_demand:
        raise UserError("--spot and --on-demand exclude each other; give one of them")
    from decimal import Decimal

    from broker.domain import utcnow

    now = utcnow()
    with _broker() as broker:
        max_age = broker.settings.offer_max_age_days
        rows = broker.offers(
            gpus=tuple(gpu),
            min_gpus=min_gpus,
            max_gpus=max_gpus,
            min_gpu_memory=min_gpu_memory,
            providers=tuple(provider),
            regions=tuple(region),
            pricing="spot" if spot else "on_demand" if on_demand else None,
            max_price=None if max_price is None else Decimal(str(max_price)),
            min_interconnect=min_interconnect,
            rdma=rdma,
            include_stale=not fresh,
            sort=sort.value,
            limit=None if fresh else limit or None,
        )
    if fresh:  # by age here: the query's limit would count the old ones too
        rows = [r for r in rows if _age_days(r, now) <= max_age][: limit or None]
    filters = {
        "--gpu": ", ".join(gpu),
        "--min-gpus": min_gpus,
        "--max-gpus": max_gpus,
        "--min-gpu-memory": min_gpu_memory,
        "--provider": ", ".join(provider),
        "--region": ", ".join(region),
        "--spot": spot,
        "--on-demand": on_demand,
        "--max-price": max_price,
        "--min-interconnect": min_interconnect,
        "--rdma": rdma,
        "--fresh": fresh,
    }
    if fmt is Format.table:
        columns = list(TABLE_COLUMNS)
        if sort.value in SORT_COLUMNS:
            columns.insert(columns.index("price_per_gpu_hour") + 1, SORT_COLUMNS[sort.value])
        title = f"{len(rows)} offer{'' if len(rows) == 1 else 's'}, by {sort.value}"
        render(
            [_table_row(r) for r in rows],
            columns,
            fmt,
            headers=HEADERS,
            title=title,
            empty=_empty_hint(filters, fresh, max_age),
        )
        _warn_age(rows, now, max_age)
    else:
        from broker.services.offers.values import OFFER_KEYS

        keys = ["id", *OFFER_KEYS, "price_per_tflop_hour", "age_days"]
        extra = [
            {"id": r.id, "price_per_tflop_hour": _per_tflop(r), "age_days": _age_days(r, now)}
            for r in rows
        ]
        render([{**r.to_dict(), **x} for r, x in zip(rows, extra, strict=True)], keys, fmt)


def _warn_age(rows: list[Any], now: Any, max_age: float) -> None:
    """Say how old the shown prices are; past ``max_age`` days, say what to do."""
    if not rows:
        return
    oldest = max(rows, key=lambda r: _age_days(r, now))
    days = _age_days(oldest, now)
    when = (oldest.as_of or oldest.fetched_at).date().isoformat()
    if days > max_age:
        typer.echo(
            f"warning: some prices are {days:.0f} days old (as of {when}, source "
            f"{oldest.source}); `gpubroker offers refresh` or `offers import` updates them, "
            "--fresh leaves them out",
            err=True,
        )


@app.command("summary")
def summary(
    fmt: Format = typer.Option(Format.table, "--format", help=FORMAT_HELP),
) -> None:
    """One row per GPU: the cheapest on-demand and spot price per GPU-hour, and where."""
    with _broker() as broker:
        rows = broker.offers_summary()
    if fmt is Format.json:
        sys.stdout.write(dump_json([r.to_dict() for r in rows]) + "\n")
        return
    flat = [
        {
            "gpu": r.gpu,
            "gpu_memory_gib": r.gpu_memory_gib,
            "offers": r.offers,
            "on_demand": r.on_demand.price_per_gpu_hour if r.on_demand else None,
            "on_demand_where": r.on_demand.where if r.on_demand else None,
            "spot": r.spot.price_per_gpu_hour if r.spot else None,
            "spot_where": r.spot.where if r.spot else None,
        }
        for r in rows
    ]
    columns = (
        "gpu",
        "gpu_memory_gib",
        "offers",
        "on_demand",
        "on_demand_where",
        "spot",
        "spot_where",
    )
    headers = {
        "gpu_memory_gib": "GiB",
        "on_demand": "on-demand $/gpu-h",
        "on_demand_where": "where",
        "spot": "spot $/gpu-h",
        "spot_where": "where (spot)",
    }
    render(flat, columns, fmt, headers=headers, title="Cheapest per GPU-hour")


@app.command("import")
def import_(
    path: str = typer.Argument(..., help="Catalog CSV file."),
    fmt: ImportFormat = typer.Option(..., "--format", help="Input format."),
    provider: str | None = typer.Option(
        None, "--provider", help="Provider of the file's offers (default: from the file name)."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Abort, writing nothing, if any line is malformed."
    ),
    show: int = typer.Option(20, "--show-issues", min=0, help="Malformed lines to print."),
) -> None:
    """Import a SkyPilot vms.csv or a gpuhunt catalog CSV (a full re-import of its provider:
    its offers missing from the file are marked stale)."""
    with _broker() as broker:
        report = broker.import_offers(path, fmt.value, provider=provider, strict=strict)
    for issue in report.issues[:show]:
        typer.echo(f"{path}:{issue.line}: {issue.message}", err=True)
    if len(report.issues) > show:
        typer.echo(f"{path}: ... and {len(report.issues) - show} more malformed lines", err=True)
    for name, done in report.providers.items():
        typer.echo(
            f"{name}: {done.new} new, {done.updated} updated, {done.stale} stale, "
            f"{done.unchanged} unchanged"
        )
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items())) or "none"
    typer.echo(
        f"imported {report.offers} offers from {report.rows} lines in {report.seconds:.2f} s; "
        f"{len(report.issues)} malformed lines reported; skipped: {skipped}"
    )


@app.command("refresh")
def refresh(
    provider: str = typer.Option(
        "all", "--provider", help="aws, gcp or all (or another registered provider)."
    ),
    regions: list[str] = typer.Option(
        [],
        "--region",
        "--regions",
        metavar="REGION",
        help="Region (repeatable, like --gpu; a comma list works too). Default: configured "
        "or known ones.",
    ),
    fmt: Format = typer.Option(Format.table, "--format", help="Output format of the summary."),
) -> None:
    """Refresh offers and prices from live providers, region by region. A failing region is
    reported and its old offers are kept, marked stale; the others still refresh."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    wanted = [r.strip() for chunk in regions for r in chunk.split(",") if r.strip()]
    console = Console(stderr=True)
    tasks: dict[str, Any] = {}
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    )

    def on_progress(event: Any) -> None:
        if not tasks:
            bar.start()  # only once a provider answers, so bad input prints one line
        task = tasks.get(event.provider)
        if task is None:
            task = tasks[event.provider] = bar.add_task(event.provider, total=event.total)
        where = event.region or "all regions"
        state = "" if event.result is None else (" ok" if event.result.ok else " failed")
        bar.update(
            task,
            completed=event.done,
            total=event.total,
            description=f"{event.provider} {where}{state}",
        )

    try:
        with _broker() as broker:
            report = broker.refresh([provider], wanted or None, on_progress)
    finally:
        if tasks:
            bar.stop()
    if fmt is Format.json:
        sys.stdout.write(dump_json(report.to_dict()) + "\n")
    else:
        rows = [
            {
                **r.__dict__,
                "status": (
                    f"skipped: {r.skipped}" if r.skipped else "ok" if r.ok else f"error: {r.error}"
                ),
                "region": r.region or "(all)",
            }
            for r in report.results
        ]
        render(rows, ("provider", "region", "status", "offers", "new", "updated", "stale"), fmt)
        if report.flags and fmt is Format.table:
            render(
                [f.__dict__ for f in report.flags],
                (
                    "provider",
                    "region",
                    "zone",
                    "instance_type",
                    "pricing",
                    "gpu",
                    "price_per_gpu_hour",
                    "median_per_gpu_hour",
                    "ratio",
                ),
                fmt,
                title="Prices more than 2x off the median per GPU-hour (check them)",
            )
        if fmt is Format.table:
            typer.echo(
                f"new {report.new}, updated {report.updated}, stale {report.stale}, "
                f"errors {report.errors}, price flags {len(report.flags)}"
            )
    if report.errors:
        from broker.errors import ProviderError

        failed = report.failed_providers
        first = next(r.error for r in report.results if not r.ok)
        raise ProviderError(
            ", ".join(failed), f"refresh failed ({report.errors} error(s)): {first}"
        )


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="offers")
