"""Several daemons on one database: no double launch, no duplicate report, leader failover.

The daemons run as threads, each with its own engine (as separate processes would), with
a test planner and executor injected as their steps: the planner turns PENDING jobs into
PLANNED allocations with plain SQL (no optimistic lock, so only the leader lease keeps two
planners apart) and the executor records every launch as an instance row.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import insert, select, update

from broker.config import load_settings
from broker.db import leases
from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow, JobRow, LeaseRow, PlanRow, ReportRow
from broker.domain import AllocationState, InstanceState, JobState, utcnow
from broker.services.daemon import LEADER, Daemon, Steps
from broker.services.reports import schedules

JOBS = 120
DAEMONS = 3


class World:
    """Shared record of what the daemons did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.launches: list[tuple[int, str]] = []
        self.planning = 0
        self.max_planning = 0
        self.refreshes = 0


def _steps(db: Database, world: World, holder: str) -> Steps:
    def schedule() -> None:
        with world.lock:
            world.planning += 1
            world.max_planning = max(world.max_planning, world.planning)
        try:
            with db.session() as s:
                pending = s.scalars(
                    select(JobRow.id).where(JobRow.state == JobState.PENDING.value)
                ).all()
                if not pending:
                    return
                plan_id = s.execute(
                    insert(PlanRow).values(solver="test", status="optimal", detail={})
                ).inserted_primary_key[0]
                time.sleep(0.002)  # widen the window a second planner would need
                for job_id in pending:
                    s.execute(
                        insert(AllocationRow).values(
                            plan_id=plan_id,
                            job_id=job_id,
                            provider="fake",
                            region="fake-1",
                            zone="fake-1a",
                            instance_type="fake.gpu",
                            pricing="on_demand",
                            nodes=1,
                            est_hours=1.0,
                            est_cost=Decimal("1"),
                            state=AllocationState.PLANNED.value,
                            version=1,
                        )
                    )
                    s.execute(
                        update(JobRow)
                        .where(JobRow.id == job_id)
                        .values(state=JobState.PLANNED.value)
                    )
        finally:
            with world.lock:
                world.planning -= 1

    def run_allocation(allocation_id: int) -> None:
        with world.lock:
            world.launches.append((allocation_id, holder))
        with db.session() as s:
            s.execute(
                insert(InstanceRow).values(
                    allocation_id=allocation_id,
                    provider="fake",
                    region="fake-1",
                    instance_type="fake.gpu",
                    pricing="on_demand",
                    request_id=f"alloc-{allocation_id}-{holder}",
                    state=InstanceState.RUNNING.value,
                )
            )
        time.sleep(0.001)
        with db.session() as s:
            s.execute(
                update(AllocationRow)
                .where(AllocationRow.id == allocation_id)
                .values(state=AllocationState.RELEASED.value)
            )

    def refresh() -> None:
        with world.lock:
            world.refreshes += 1

    return Steps(
        refresh=refresh,
        schedule=schedule,
        run_allocation=run_allocation,
        reconcile=lambda: None,
        reports=lambda now: schedules.run_due(db, now=now),
    )


def test_daemons_share_the_work_without_doubles(database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings({"GPUBROKER_HOME": str(tmp_path)})
    schedules.add_schedule(
        database,
        "* * * * *",
        period="1h",
        fmt="json",
        out_dir=tmp_path / "reports",
        now=utcnow() - timedelta(minutes=10),
    )
    world = World()
    engines = [Database(database.url) for _ in range(DAEMONS)]
    daemons = [
        Daemon(
            db,
            settings,
            steps=_steps(db, world, f"d{i}"),
            holder=f"d{i}",
            interval=0.01,
            refresh_interval=3600,
            lease_ttl=30,
        )
        for i, db in enumerate(engines)
    ]
    threads = [threading.Thread(target=d.run, daemon=True) for d in daemons]
    for t in threads:
        t.start()
    leader_stopped = None
    try:
        for batch in range(6):  # jobs arrive while the daemons run
            with database.session() as s:
                s.execute(
                    insert(JobRow),
                    [
                        {
                            "name": f"job-{batch}-{n}",
                            "kind": "training",
                            "spec": {},
                            "team": "t",
                            "state": JobState.PENDING.value,
                            "version": 1,
                        }
                        for n in range(JOBS // 6)
                    ],
                )
            if batch == 2:  # the leader goes away; another daemon must take over
                holder = leases.holder_of(database, LEADER)
                assert holder is not None
                leader_stopped = holder
                daemons[int(holder[1:])].stop()
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with database.session() as s:
                open_jobs = s.scalar(
                    select(JobRow.id).where(JobRow.state == JobState.PENDING.value).limit(1)
                )
                planned = s.scalar(
                    select(AllocationRow.id)
                    .where(AllocationRow.state == AllocationState.PLANNED.value)
                    .limit(1)
                )
            if open_jobs is None and planned is None:
                break
            time.sleep(0.05)
    finally:
        for d in daemons:
            d.stop()
        for t in threads:
            t.join(timeout=10)
    with database.session() as s:
        per_job = Counter(s.scalars(select(AllocationRow.job_id)).all())
        instances = Counter(s.scalars(select(InstanceRow.allocation_id)).all())
        states = Counter(s.scalars(select(AllocationRow.state)).all())
        reports = s.execute(select(ReportRow.schedule_id, ReportRow.due_at)).all()
        lease_rows = s.scalars(select(LeaseRow.name)).all()
    assert len(per_job) == JOBS and set(per_job.values()) == {1}  # each job planned once
    assert states == {AllocationState.RELEASED.value: JOBS}
    launched = Counter(a for a, _ in world.launches)
    assert len(launched) == JOBS and set(launched.values()) == {1}  # zero double launches
    assert len(instances) == JOBS and set(instances.values()) == {1}
    assert world.max_planning == 1  # never two planners at once
    assert world.refreshes == 1  # the refresh timer is shared by the group
    # the new leader kept planning after the first one stopped
    assert leader_stopped is not None
    assert reports and len(reports) == len(set(reports))  # no duplicate report
    assert len(list((tmp_path / "reports").iterdir())) == len(reports)
    assert "catalog-refresh" in lease_rows and LEADER not in lease_rows  # leases given back
    for db in engines:
        db.dispose()
