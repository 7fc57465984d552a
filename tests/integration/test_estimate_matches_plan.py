"""One candidate model: for every example job spec, ``estimate``'s cheapest feasible option
is what ``plan`` picks for that job alone on an empty fleet (the bundled catalog and this
machine's offer), with the same offer, pricing, node count and cost to the cent."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from broker.config import load_settings
from broker.services.jobs.store import submit
from broker.services.planning import estimates
from broker.services.planning.plan import PlanReport, plan
from scheduler.candidate_rules import SERVING_HORIZON_HOURS
from workloads.spec import load_spec

EXAMPLES = sorted(
    p
    for p in (Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")
    if p.name != "month.yaml"  # a simulation scenario, not a job
)


@pytest.fixture
def settings(tmp_path: Path, database: Any) -> Any:
    return load_settings(
        {
            "GPUBROKER_HOME": str(tmp_path),
            "GPUBROKER_DATABASE_URL": database.url,
            "GPUBROKER_SOLVER_TIME_LIMIT": "20",
        }
    )


def _plan_alone(database: Any, settings: Any, spec: Any) -> PlanReport:
    return plan(database, settings, job_ids=[submit(database, spec).id])


def _tied(database: Any, settings: Any, spec: Any, offer_id: int, nodes: int) -> Decimal | None:
    """What estimate says for ``nodes`` nodes of one offer (for a plan that took an offer
    priced the same as estimate's choice)."""
    report = estimates.estimate_spec(database, settings, spec, offer_id=offer_id, nodes=nodes)
    return report.options[0].cost if report.options else None


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_estimate_cheapest_is_what_plan_picks_alone(
    path: Path, database: Any, settings: Any
) -> None:
    spec = load_spec(path)
    report = estimates.estimate_spec(database, settings, spec)
    result = _plan_alone(database, settings, spec)
    assert result.validated
    if not report.options:
        assert result.allocations == [] and len(result.unplaced) == 1, result.allocations
        return
    assert result.unplaced == [], (result.unplaced, report.options[0])
    if spec.kind == "training":
        best = report.options[0]
        [alloc] = result.allocations
        assert (alloc["pricing"], alloc["nodes"]) == (best.pricing, best.nodes)
        assert alloc["est_cost"] == best.cost, (alloc, best)
        # the plan's hours are the estimate's, before the spot recovery estimate adds
        assert best.hours is not None
        wall = alloc["est_hours"] * (1 + best.spot_overhead)
        assert wall == pytest.approx(best.hours, rel=1e-3)
        if alloc["offer_id"] != best.offer_id:  # another offer at the same price
            assert _tied(database, settings, spec, alloc["offer_id"], alloc["nodes"]) == best.cost
        return
    # serving: the plan may mix offers within an area, so per user area it costs at most
    # the cheapest single offer estimate names, and serves every area estimate serves
    areas = {o.area for o in report.options}
    planned: dict[str | None, Decimal] = {}
    for alloc in result.allocations:
        area = None if alloc["area"] == "anywhere" else alloc["area"]
        planned[area] = planned.get(area, Decimal(0)) + alloc["est_cost"]
    assert areas <= set(planned)
    for area in areas:
        cost = planned[area]
        best = min(o.cost for o in report.options if o.area == area and o.cost is not None)
        assert cost / Decimal(SERVING_HORIZON_HOURS) <= best + Decimal("0.01"), (area, cost, best)


def test_b200_jobs_plan_on_gcp_a4_hosts_priced_by_their_gpu_row(
    database: Any, settings: Any
) -> None:
    """The shared GCP catalog prices a4-highgpu-8g hosts at 0.0 beside a priced B200 row:
    imported, those offers carry the B200 row's price, so B200 jobs are planned there."""
    import csv

    from broker.services.offers.imports import import_file
    from tests.conftest import shared_dataset
    from workloads.spec import parse_spec

    path = shared_dataset("cloud-catalogs", "gcp_vms.csv")
    with path.open(newline="") as handle:
        b200 = {
            r["AvailabilityZone"]: Decimal(r["Price"])
            for r in csv.DictReader(handle)
            if not r["InstanceType"] and r["AcceleratorName"] == "B200"
        }
    import_file(database, path, "skypilot")
    spec = parse_spec(
        {
            "kind": "training",
            "name": "b200",
            "model": {"preset": "gpt-1.3b"},
            "tokens": 2 * 10**9,
            "global_batch": 256,
            "constraints": {"gpus": ["B200"], "providers": ["gcp"]},
        }
    )
    [best] = estimates.estimate_spec(database, settings, spec).options
    assert best.instance_type == "a4-highgpu-8g" and best.price_per_hour == b200[best.zone]
    result = _plan_alone(database, settings, spec)
    [alloc] = result.allocations
    assert (alloc["instance_type"], alloc["est_cost"]) == ("a4-highgpu-8g", best.cost)
    assert alloc["price_per_hour"] == min(b200.values())
