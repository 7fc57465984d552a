"""Seed a realistic usage ledger (jobs, plans, allocations, instances, usage) for tests.

Everything is derived from a seed, so a test can rebuild the same ledger and compute its
expected figures independently of the report code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from broker.db.models import (
    AllocationRow,
    BudgetRow,
    InstanceRow,
    JobRow,
    OfferRow,
    PlanRow,
    UsageRow,
)
from broker.domain import AllocationState, InstanceState, JobState

# provider, region, zone, instance type, gpu, gpus, on-demand $/h, spot $/h
SHAPES = (
    ("aws", "us-east-1", "us-east-1a", "p5.48xlarge", "H100-80GB", 8, "98.32", "39.33"),
    ("aws", "us-west-2", "us-west-2b", "p4d.24xlarge", "A100-40GB", 8, "32.7726", "12.58"),
    ("gcp", "us-central1", "us-central1-a", "a2-highgpu-1g", "A100-40GB", 1, "3.6731", "1.47"),
    ("gcp", "europe-west4", "europe-west4-a", "g2-standard-4", "L4", 1, "0.7066", "0.28"),
    ("local", "local", "", "cpu-node", None, 0, "0", "0"),
)
TEAMS = ("research", "product", "infra")


@dataclass(frozen=True)
class SeededRun:
    usage_id: int
    job_id: int
    team: str
    provider: str
    start: datetime
    end: datetime
    cost: Decimal
    gpus: int


def add_offers(session) -> None:  # type: ignore[no-untyped-def]
    """On-demand offers for every shape, so spot runs can find their list price."""
    for provider, region, zone, itype, gpu, gpus, od, _spot in SHAPES:
        session.add(
            OfferRow(
                provider=provider,
                region=region,
                zone=zone,
                instance_type=itype,
                gpu=gpu,
                gpus_per_node=gpus,
                pricing="on_demand",
                price_per_hour=Decimal(od),
                source="test",
            )
        )


def seed(  # type: ignore[no-untyped-def]
    db,
    *,
    now: datetime,
    jobs: int = 12,
    seed_value: int = 7,
    days: int = 10,
    budgets: bool = True,
    with_baseline: bool = True,
) -> list[SeededRun]:
    """``jobs`` finished jobs over the ``days`` before ``now``; returns their usage rows."""
    rng = random.Random(seed_value)
    runs: list[SeededRun] = []
    with db.session() as s:
        add_offers(s)
        if budgets:
            s.add(BudgetRow(team="research", amount=Decimal("50000"), period="month"))
            s.add(BudgetRow(team="product", amount=Decimal("8000"), period="week"))
        for n in range(jobs):
            shape = SHAPES[n % len(SHAPES)]
            provider, region, zone, itype, gpu, gpus, od, spot = shape
            pricing = "spot" if n % 3 == 1 and provider != "local" else "on_demand"
            price = Decimal(spot if pricing == "spot" else od)
            team = TEAMS[n % len(TEAMS)]
            job = JobRow(
                name=f"job-{n}",
                kind="training",
                spec={"name": f"job-{n}"},
                team=team,
                state=JobState.SUCCEEDED.value,
            )
            s.add(job)
            nodes = 1 + n % 2
            est_hours = 1 + rng.randint(0, 20)
            est_cost = price * nodes * est_hours
            detail = {}
            if with_baseline and n % 4 != 3:
                detail = {"per_job_cheapest": {}}
            plan = PlanRow(solver="highs", status="optimal", detail=detail)
            s.add(plan)
            s.flush()
            if "per_job_cheapest" in plan.detail:
                baseline = est_cost * Decimal("1.25")
                plan.detail = {"per_job_cheapest": {str(job.id): str(baseline)}}
            alloc = AllocationRow(
                plan_id=plan.id,
                job_id=job.id,
                provider=provider,
                region=region,
                zone=zone,
                instance_type=itype,
                pricing=pricing,
                gpu=gpu,
                gpus_per_node=gpus,
                nodes=nodes,
                price_at_plan=price,
                est_hours=float(est_hours),
                est_cost=est_cost,
                state=AllocationState.RELEASED.value,
            )
            s.add(alloc)
            s.flush()
            start = now - timedelta(days=days) + timedelta(minutes=rng.randint(0, days * 1300))
            hours = Decimal(rng.randint(30, 1500)) / 60
            end = start + timedelta(seconds=float(hours * 3600))
            for node in range(nodes):
                inst = InstanceRow(
                    allocation_id=alloc.id,
                    provider=provider,
                    region=region,
                    zone=zone,
                    instance_type=itype,
                    pricing=pricing,
                    request_id=f"req-{job.id}",
                    node_index=node,
                    provider_instance_id=f"i-{job.id}-{node}",
                    state=InstanceState.TERMINATED.value,
                    price_per_hour=price,
                    launched_at=start,
                    terminated_at=end,
                )
                s.add(inst)
                s.flush()
                cost = (price * hours).quantize(Decimal("0.000001"))
                usage = UsageRow(
                    instance_id=inst.id,
                    job_id=job.id,
                    team=team,
                    provider=provider,
                    region=region,
                    zone=zone,
                    instance_type=itype,
                    pricing=pricing,
                    gpu=gpu,
                    gpus=gpus,
                    start=start,
                    end=end,
                    price_per_hour=price,
                    # spot runs leave the list price to the offers table on purpose
                    on_demand_price_per_hour=Decimal(od) if pricing == "on_demand" else None,
                    busy_seconds=None if n % 5 == 4 else float(hours * 3600) * 0.8,
                    cost=cost,
                )
                s.add(usage)
                s.flush()
                runs.append(SeededRun(usage.id, job.id, team, provider, start, end, cost, gpus))
    return runs
