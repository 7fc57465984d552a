"""A serving fleet with mixed request sizes: the planned GPU mix against the best single GPU
type at the same latency targets (planner only, no replay).

    python -m bench.simulate.serving

One Llama-7B endpoint whose requests come in three size classes (chat, long-document
summaries, short code completions), given as the spec's ``mix`` and planned with
``planning.plan`` over the shared AWS and GCP catalogs: once with every GPU type allowed
(each class may go to its own type), then once per GPU type with only that type allowed.
The planner prices serving one day at a time. Per class, the GPU types each plan chose.

Then, to tell the physics from whole-node packing: per class and GPU type, a day at the
class's rate if replicas could be bought one GPU at a time at the type's cheapest US
on-demand price per GPU (``estimate_inference`` for the class, no node rounding).
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from bench.simulate.catalogs import CATALOGS, catalog_database

GPUS = ("H100", "H200", "A100-80GB", "A100-40GB", "L40S", "L4", "A10G")
SLO = {"ttft_ms": 800, "tpot_ms": 40}
CLASSES = (  # name, requests/s, prompt tokens, output tokens
    ("chat", 40, 1024, 256),
    ("summaries", 8, 6000, 400),
    ("completions", 120, 300, 48),
)


@dataclass(frozen=True)
class Row:
    label: str
    cost: float | None  # USD for a day of serving; None when something is unplaced
    unplaced: int
    seconds: float
    gpus_by_class: dict[str, str]  # class -> "2x H100-80GB, ..." (nodes x GPU type)


def spec(gpus: list[str]) -> dict[str, Any]:
    """The endpoint, limited to ``gpus``."""
    total = sum(rate for _, rate, _, _ in CLASSES)
    return {
        "kind": "inference",
        "name": "assistant",
        "team": "product",
        "model": {"preset": "llama-7b"},
        "slo": SLO,
        "regions": {"us": 1.0},
        "min_replicas": 1,
        "constraints": {"gpus": gpus, "regions": ["us-*"]},
        "request_rate": total,
        "mix": [
            {"name": name, "share": rate / total, "input_tokens": i, "output_tokens": o}
            for name, rate, i, o in CLASSES
        ],
    }


def _plan(db: Any, settings: Any, label: str, gpus: list[str]) -> Row:
    from broker.services.jobs.store import submit
    from broker.services.planning.plan import plan
    from workloads.spec import parse_spec

    job_id = submit(db, parse_spec(spec(gpus))).id
    began = time.perf_counter()
    report = plan(db, settings, job_ids=[job_id])
    seconds = time.perf_counter() - began  # the job stays pending: each plan names its own
    nodes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for alloc in report.allocations:
        name = str(alloc["area"]).rpartition("/")[2]
        shape = f"{alloc['gpus'] // max(alloc['nodes'], 1)}x {alloc['gpu']}"
        nodes[name][shape] += alloc["nodes"]
    used = {
        name: ", ".join(f"{count} x {shape}" for shape, count in sorted(shapes.items()))
        for name, shapes in nodes.items()
    }
    cost = None if report.unplaced or report.objective is None else float(report.objective)
    return Row(label, cost, len(report.unplaced), seconds, used)


def _per_gpu_prices(db: Any) -> dict[str, float]:
    """Cheapest US on-demand price per GPU-hour of each GPU type."""
    from sqlalchemy import select

    from broker.db.models import OfferRow

    prices: dict[str, float] = {}
    with db.session() as session:
        rows = session.execute(
            select(OfferRow.gpu, OfferRow.gpus_per_node, OfferRow.price_per_hour).where(
                OfferRow.region.like("us-%"), OfferRow.pricing == "on_demand"
            )
        )
        for gpu, count, price in rows:
            if gpu and count and price is not None and price > 0:
                per_gpu = float(price) / count
                prices[gpu] = min(prices.get(gpu, per_gpu), per_gpu)
    return prices


def fluid_costs(prices: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """class -> GPU type -> USD/day with replicas bought one GPU at a time."""
    from workloads.estimate import estimate_inference
    from workloads.gpus import resolve
    from workloads.spec import InferenceJob, parse_spec

    job = parse_spec(spec(list(GPUS)))
    assert isinstance(job, InferenceJob)
    out: dict[str, dict[str, float | None]] = {}
    for request in job.request_classes():
        rate = job.request_rate * request.share
        out[request.name] = {}
        for gpu in GPUS:
            name = resolve(gpu).name
            est = estimate_inference(job, name, request=request)
            price = prices.get(name)
            fits = est.fits and est.requests_per_second > 0 and price is not None
            out[request.name][name] = (
                price * est.gpus_per_replica * rate / est.requests_per_second * 24
                if fits and price is not None
                else None
            )
    return out


def _print_fluid(costs: dict[str, dict[str, float | None]]) -> None:
    gpus = list(next(iter(costs.values())))
    print("\nUSD/day per class with GPUs bought one at a time (no node rounding)")
    print(f"{'class':<14}" + "".join(f"{gpu:>12}" for gpu in gpus))
    totals = dict.fromkeys(gpus, 0.0)
    best = 0.0
    for name, by_gpu in costs.items():
        cells = [by_gpu[gpu] for gpu in gpus]
        print(f"{name:<14}" + "".join(f"{c:>12,.0f}" if c else f"{'-':>12}" for c in cells))
        best += min(c for c in cells if c)
        for gpu, c in zip(gpus, cells, strict=True):
            totals[gpu] += c if c else float("inf")
    print(f"{'all classes':<14}" + "".join(f"{totals[gpu]:>12,.0f}" for gpu in gpus))
    single = min(totals.values())
    print(
        f"each class on its cheapest type: {best:,.0f}, {1 - best / single:.1%} below the "
        "best single type"
    )


def main() -> int:
    if not CATALOGS.is_dir():
        print(f"missing dataset: {CATALOGS}", file=sys.stderr)
        return 1
    _, settings, db = catalog_database(("aws", "gcp"), "bench-serving-mix-")
    rows = [_plan(db, settings, "mix of " + "/".join(GPUS), list(GPUS))]
    rows += [_plan(db, settings, gpu, [gpu]) for gpu in GPUS]
    costs = fluid_costs(_per_gpu_prices(db))
    db.dispose()
    print(f"{'allowed GPUs':<52}{'USD/day':>10}{'unplaced':>10}{'plan s':>8}")
    for row in rows:
        shown = f"{row.cost:,.2f}" if row.cost is not None else "-"
        print(f"{row.label:<52}{shown:>10}{row.unplaced:>10}{row.seconds:>8.2f}")
    print("\nnodes per class (nodes x GPUs per node and type)")
    for row in rows:
        if row.cost is not None:
            used = "; ".join(f"{name}: {shapes}" for name, shapes in row.gpus_by_class.items())
            print(f"  {row.label}: {used}")
    singles = [row.cost for row in rows[1:] if row.cost is not None]
    mix = rows[0].cost
    if mix is not None and singles:
        print(f"\nmix vs best single GPU type: {1 - mix / min(singles):.1%} cheaper")
    _print_fluid(costs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
