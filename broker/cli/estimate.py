"""``gpubroker estimate`` and ``gpubroker calibrate``.

``estimate --format json`` prints one object: ``job``, ``kind``, ``params``, ``tokens``,
``steps``, ``flops_total``, ``min_gpus`` (GPU type -> smallest GPU count that holds the
model, null if none), ``options`` (the cheapest feasible way per GPU type, cheapest first:
``gpu``, ``gpus_per_node``, ``nodes``, ``gpus``, ``provider``, ``region``, ``zone``,
``instance_type``, ``pricing``, ``offer_id``, ``price_per_hour`` per node, ``hours``,
``cost`` (training: total USD; inference: USD per hour), ``step_seconds``,
``assumed_mfu``, ``mfu`` (effective), ``memory_per_gpu_gib``, ``memory_headroom_gib``,
``interconnect_gbps``, ``assumed_interconnect_gbps`` (what multi-node hours assume where
the offer states no fabric), ``rdma``, ``spot_overhead`` (fraction of extra time), ``feasible``,
``reason``, and for inference ``replicas``, ``gpus_per_replica``, ``requests_per_second``
per replica, ``ttft_ms``, ``tpot_ms``), ``infeasible`` (``gpu``, ``reason``) and
``calibrations`` (devices whose measured throughput was used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from broker.cli.output import FORMAT_HELP, Format, dump_json, render

TRAINING_COLUMNS = [
    "offer_id",
    "gpu",
    "gpus_per_node",
    "nodes",
    "provider",
    "region",
    "instance_type",
    "pricing",
    "price_per_hour",
    "hours",
    "cost",
    "mfu",
    "memory_headroom_gib",
]
INFERENCE_COLUMNS = [
    "area",
    "offer_id",
    "gpu",
    "gpus_per_replica",
    "replicas",
    "nodes",
    "provider",
    "region",
    "instance_type",
    "pricing",
    "price_per_hour",
    "cost",
    "requests_per_second",
    "ttft_ms",
    "tpot_ms",
]
HEADERS = {
    "offer_id": "offer",
    "gpus_per_node": "gpus/node",
    "price_per_hour": "$/node-h",
    "cost": "cost $",
    "memory_headroom_gib": "free GiB",
    "instance_type": "instance",
    "gpus_per_replica": "gpus/replica",
    "requests_per_second": "req/s/replica",
}
CALIBRATION_COLUMNS = ["id", "device", "achieved_flops", "peak_flops", "mfu", "measured_at"]


def estimate(
    spec: Path = typer.Argument(..., help="Job spec (YAML).", dir_okay=False),
    gpu: str | None = typer.Option(None, "--gpu", help="Estimate on this GPU type only."),
    nodes: int | None = typer.Option(None, "--nodes", help="Use exactly this many nodes."),
    offer: int | None = typer.Option(None, "--offer", help="Estimate on this offer id."),
    fmt: Format = typer.Option(
        Format.table, "--format", help="table, json (the whole report) or csv (the options)."
    ),
) -> None:
    """GPUs, nodes, hours and cost of a job per GPU type, from the current offers. Exits 3
    when no option is feasible, saying why per GPU type."""
    from broker.sdk import Broker

    with Broker() as broker:
        report = broker.estimate(spec, gpu=gpu, nodes=nodes, offer_id=offer)
    data = report.to_dict()
    if fmt is Format.json:
        typer.echo(dump_json(data))
        _fail_if_nothing_feasible(report)
        return
    if fmt is Format.csv:
        columns = list(dict.fromkeys(k for row in data["options"] for k in row)) or (
            TRAINING_COLUMNS if report.kind == "training" else INFERENCE_COLUMNS
        )
        render(data["options"], columns, fmt)
        _fail_if_nothing_feasible(report)
        return
    flops = f", {report.flops_total:.3g} FLOPs" if report.flops_total else ""
    steps = f", {report.steps} steps" if report.steps else ""
    size = (
        f"{report.params / 1e6:,.1f}M parameters"
        if report.params is not None
        else "your own code, hours as the spec gives them"
    )
    typer.echo(f"{report.job}: {report.kind}, {size}{steps}{flops}")
    columns = TRAINING_COLUMNS if report.kind == "training" else INFERENCE_COLUMNS
    title = "Cheapest feasible option per GPU type"
    if report.kind == "inference":
        title += " (cost per hour)"
    rows = [{**row, "gpu": row["gpu"] or "cpu"} for row in data["options"]]
    if rows:
        render(rows, columns, Format.table, title=title, headers=HEADERS)
    for item in report.infeasible:
        typer.echo(f"  {item.gpu or 'cpu'}: {item.reason}")
    if report.calibrations:
        typer.echo("calibrated: " + ", ".join(report.calibrations))
    _fail_if_nothing_feasible(report)


def _fail_if_nothing_feasible(report: Any) -> None:
    if report.options:
        return
    from broker.errors import Infeasible

    hint = (
        "no offer meets the spec's constraints; loosen them (GPU allow-list, min GPU memory, "
        "providers, regions, max nodes, spot), drop --gpu/--nodes/--offer, or see "
        "`gpubroker offers summary`"
    )
    raise Infeasible([hint])


def calibrate(
    steps: int = typer.Option(20, "--steps", help="Timed training steps (after 3 warm-up)."),
    preset: str | None = typer.Option(None, "--preset", help="Model preset to train."),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads for torch (default: torch's, all cores)."
    ),
    fmt: Format = typer.Option(Format.table, "--format", help=FORMAT_HELP),
) -> None:
    """Train the transformer briefly here; store the achieved FLOP/s for estimates."""
    from dataclasses import asdict

    from broker.sdk import Broker

    with Broker() as broker:
        view = broker.calibrate(steps, preset=preset, threads=threads)
    if fmt is Format.json:
        typer.echo(dump_json(asdict(view)))
        return
    render([asdict(view)], CALIBRATION_COLUMNS, fmt, title="Calibration stored")


def register(root: typer.Typer) -> None:
    root.command("estimate")(estimate)
    root.command("calibrate")(calibrate)
