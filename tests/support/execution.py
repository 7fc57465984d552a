"""Helpers for execution tests: a tiny training spec and a hand-made planned allocation."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from broker.db.engine import Database
from broker.db.models import AllocationRow, PlanRow
from broker.domain import AllocationState, JobState
from broker.services.jobs import store as jobs


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A GPT small enough to train 20 steps in about a second on one core."""
    spec: dict[str, Any] = {
        "kind": "training",
        "name": "tiny",
        "model": {"layers": 1, "d_model": 32, "heads": 2, "seq_len": 16, "vocab": 256},
        "steps": 20,
        "global_batch": 4,
        "checkpoint_every": 5,
        "precision": "fp32",
        "parallelism": "ddp",
        "learning_rate": 3e-3,
        "max_failures": 1,
        "constraints": {"providers": ["local"]},
    }
    spec.update(overrides)
    return spec


def submit(db: Database, **overrides: Any) -> int:
    from workloads.spec import parse_spec

    return jobs.submit(db, parse_spec(tiny_spec(**overrides))).id


def plan_allocation(
    db: Database,
    job_id: int,
    *,
    provider: str = "local",
    region: str = "local",
    zone: str = "local",
    instance_type: str = "local-node",
    nodes: int = 2,
    price: Decimal = Decimal("0"),
    pricing: str = "on_demand",
    offer_id: int | None = None,
) -> int:
    """What the scheduler commits for one job: PENDING -> PLANNED plus a PLANNED allocation."""
    with db.session() as session:
        job = jobs.load_row(session, job_id)
        jobs.transition(session, job, JobState.PLANNED)
        plan = PlanRow(solver="test", status="optimal", validated=True, detail={})
        session.add(plan)
        session.flush()
        alloc = AllocationRow(
            plan_id=plan.id,
            job_id=job_id,
            offer_id=offer_id,
            provider=provider,
            region=region,
            zone=zone,
            instance_type=instance_type,
            pricing=pricing,
            gpu=None,
            gpus_per_node=0,
            nodes=nodes,
            price_at_plan=price,
            est_hours=0.01,
            est_cost=price * nodes * Decimal("0.01"),
            state=AllocationState.PLANNED.value,
        )
        session.add(alloc)
        session.flush()
        return alloc.id
