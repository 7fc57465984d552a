"""Budget arithmetic over the ledger and live allocations, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from broker.db.models import AllocationRow, BudgetRow, InstanceRow, JobRow, PlanRow, UsageRow
from broker.domain import AllocationState, InstanceState, JobState
from broker.services.budgets import period_start, remaining

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)


def test_period_start() -> None:
    assert period_start("month", NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    assert period_start("week", NOW) == datetime(2026, 11, 16, tzinfo=UTC)  # a Monday


def _job(session, team: str) -> JobRow:  # type: ignore[no-untyped-def]
    job = JobRow(name="j", kind="training", spec={}, team=team, state=JobState.RUNNING.value)
    session.add(job)
    session.flush()
    return job


def test_remaining_counts_usage_in_period_and_live_allocations(database) -> None:  # type: ignore[no-untyped-def]
    assert remaining(database, "research", NOW) is None
    with database.session() as s:
        s.add(BudgetRow(team="research", amount=Decimal("1000"), period="month"))
        job = _job(s, "research")
        other = _job(s, "other")
        plan = PlanRow(solver="highs", status="optimal")
        s.add(plan)
        s.flush()
        live = AllocationRow(
            plan_id=plan.id,
            job_id=job.id,
            provider="aws",
            region="us-east-1",
            instance_type="p5.48xlarge",
            pricing="on_demand",
            nodes=1,
            est_hours=1.0,
            est_cost=Decimal("98.32"),
            state=AllocationState.ACTIVE.value,
        )
        done = AllocationRow(
            plan_id=plan.id,
            job_id=job.id,
            provider="aws",
            region="us-east-1",
            instance_type="p5.48xlarge",
            pricing="on_demand",
            nodes=1,
            est_hours=1.0,
            est_cost=Decimal("500"),
            state=AllocationState.RELEASED.value,
        )
        s.add_all([live, done])
        s.flush()
        for when, cost, team_job in (
            (NOW - timedelta(days=3), "120.50", job),  # in November: counts
            (datetime(2026, 10, 30, tzinfo=UTC), "400", job),  # October: does not
            (NOW - timedelta(days=1), "999", other),  # another team
        ):
            inst = InstanceRow(
                allocation_id=done.id,
                provider="aws",
                region="us-east-1",
                instance_type="p5.48xlarge",
                pricing="on_demand",
                request_id=f"r-{cost}",
                state=InstanceState.TERMINATED.value,
            )
            s.add(inst)
            s.flush()
            s.add(
                UsageRow(
                    instance_id=inst.id,
                    job_id=team_job.id,
                    team=team_job.team,
                    provider="aws",
                    region="us-east-1",
                    instance_type="p5.48xlarge",
                    pricing="on_demand",
                    gpu="H100-80GB",
                    gpus=8,
                    start=when,
                    end=when + timedelta(hours=1),
                    price_per_hour=Decimal(cost),
                    cost=Decimal(cost),
                )
            )
    assert remaining(database, "research", NOW) == Decimal("1000") - Decimal("120.50") - Decimal(
        "98.32"
    )
