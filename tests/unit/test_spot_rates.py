"""The planner's spot reclaim rate is the one the ledger measured, not a constant."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow, JobRow, PlanRow, UsageRow
from broker.domain import AllocationState, JobState
from broker.services.planning.spot_rates import PRIOR_NODE_HOURS, WINDOW_DAYS, preemption_rate

NOW = datetime(2026, 3, 1, tzinfo=UTC)
PRIOR = 0.05


def _ran(
    db: Database,
    *,
    nodes: int,
    hours: float,
    alloc_state: AllocationState,
    job_state: JobState = JobState.PENDING,
    pricing: str = "spot",
    ended: datetime = NOW,
    busy: bool = True,
) -> None:
    """One allocation of ``nodes`` nodes that ran ``hours`` and ended as ``alloc_state``."""
    start = ended - timedelta(hours=hours)
    with db.session() as session:
        job = JobRow(name="j", kind="training", spec={}, team="t", state=job_state.value)
        plan = PlanRow(solver="test", status="optimal", validated=True, detail={})
        session.add_all([job, plan])
        session.flush()
        alloc = AllocationRow(
            plan_id=plan.id,
            job_id=job.id,
            provider="aws",
            region="us-east-1",
            zone="us-east-1a",
            instance_type="g5.xlarge",
            pricing=pricing,
            gpu="A10G",
            gpus_per_node=1,
            nodes=nodes,
            est_hours=hours,
            est_cost=Decimal("1"),
            state=alloc_state.value,
        )
        session.add(alloc)
        session.flush()
        for index in range(nodes):
            node = InstanceRow(
                allocation_id=alloc.id,
                provider="aws",
                region="us-east-1",
                zone="us-east-1a",
                instance_type="g5.xlarge",
                pricing=pricing,
                request_id=f"r{alloc.id}",
                node_index=index,
                provider_instance_id=f"i-{alloc.id}-{index}",
                state="TERMINATED",
                launched_at=start,
                terminated_at=ended,
            )
            session.add(node)
            session.flush()
            session.add(
                UsageRow(
                    instance_id=node.id,
                    job_id=job.id,
                    team="t",
                    provider="aws",
                    region="us-east-1",
                    zone="us-east-1a",
                    instance_type="g5.xlarge",
                    pricing=pricing,
                    gpu="A10G",
                    gpus=1,
                    start=start,
                    end=ended,
                    price_per_hour=Decimal("1"),
                    busy_seconds=hours * 3600.0 if busy else None,
                    cost=Decimal(str(hours)),
                )
            )


def _rate(db: Database) -> float:
    with db.session() as session:
        return preemption_rate(session, NOW, PRIOR)


def test_rate_is_the_prior_until_the_ledger_says_otherwise(database: Database) -> None:
    assert _rate(database) == pytest.approx(PRIOR)
    # a gang of 2 nodes ran 10 h and was reclaimed (one stop, however many nodes it had),
    # three single nodes ran an hour each and were reclaimed; 4 more node-hours finished;
    # neither a run that never ran (no busy time), nor a job that failed on its own code,
    # nor on-demand node-hours, nor runs before the window count as stops
    _ran(database, nodes=2, hours=10, alloc_state=AllocationState.FAILED)
    for _ in range(3):  # and three single nodes, one hour each
        _ran(database, nodes=1, hours=1, alloc_state=AllocationState.FAILED)
    _ran(database, nodes=1, hours=4, alloc_state=AllocationState.RELEASED)
    _ran(database, nodes=1, hours=0.1, alloc_state=AllocationState.FAILED, busy=False)
    _ran(
        database,
        nodes=1,
        hours=3,
        alloc_state=AllocationState.FAILED,
        job_state=JobState.FAILED,
    )
    _ran(database, nodes=3, hours=5, alloc_state=AllocationState.FAILED, pricing="on_demand")
    _ran(
        database,
        nodes=4,
        hours=6,
        alloc_state=AllocationState.FAILED,
        ended=NOW - timedelta(days=WINDOW_DAYS, hours=1),
    )
    hours = 2 * 10 + 3 + 4 + 0.1 + 3
    expected = (PRIOR * PRIOR_NODE_HOURS + 4) / (PRIOR_NODE_HOURS + hours)
    assert _rate(database) == pytest.approx(expected)
    assert _rate(database) > PRIOR  # 4 stops in 30 node-hours: more than the prior


def test_planner_leaves_spot_that_reclaims_would_make_late(home: Path) -> None:
    """A job due 5 % after its spot estimate goes on spot while reclaims are rare (0.05 per
    node-hour: under 1 % more time), and on demand once the ledger has seen one an hour
    (about 16 % more)."""
    from broker.config import load_settings
    from broker.domain import use_clock
    from broker.services.jobs import store as jobs
    from broker.services.offers.upsert import upsert_offers
    from broker.services.planning.plan import plan
    from providers.fake import FakeProvider
    from workloads.spec import parse_spec

    fake = FakeProvider()
    settings = dataclasses.replace(
        load_settings({"GPUBROKER_HOME": str(home)}), extra={"fake_provider": fake}
    )
    db = Database(settings.database_url)
    db.ensure_schema()
    upsert_offers(db, fake.list_offers(), provider="fake", full=True)
    spec = {
        "kind": "training",
        "name": "due",
        "model": {"preset": "gpt-125m"},
        "tokens": 2_000_000_000,
        "global_batch": 256,
        "checkpoint_every": 20,
        "constraints": {"providers": ["fake"], "gpus": ["L4"], "spot": True, "max_nodes": 1},
    }

    def chosen(job_id: int) -> dict[str, object]:
        report = plan(db, settings, job_ids=[job_id])
        (alloc,) = [a for a in report.allocations if a["job"] == job_id]
        return alloc

    with use_clock(lambda: NOW):
        probe = chosen(jobs.submit(db, parse_spec(spec)).id)
        assert probe["pricing"] == "spot"
        due = NOW + timedelta(hours=1.05 * float(str(probe["est_hours"])))
        job_id = jobs.submit(db, parse_spec({**spec, "deadline": due.isoformat()})).id
        assert chosen(job_id)["pricing"] == "spot"
        _ran(db, nodes=1, hours=30, alloc_state=AllocationState.RELEASED)
        for _ in range(30):
            _ran(db, nodes=1, hours=1, alloc_state=AllocationState.FAILED)
        assert chosen(job_id)["pricing"] == "on_demand"
    db.dispose()
