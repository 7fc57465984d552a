"""Execution without Ray: the in-process runner through the whole allocation lifecycle."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from broker.config import Settings, load_settings
from broker.db.engine import Database
from broker.db.models import AllocationRow, BudgetRow, InstanceRow, UsageRow
from broker.domain import AllocationState, InstanceState, JobState
from broker.errors import BudgetExceeded, ConflictError, StaleWrite
from broker.services import execution, jobs
from providers.local import LocalProvider
from tests.support.execution import plan_allocation, submit


def _settings(home: Path, database: Database) -> Settings:
    return load_settings({"GPUBROKER_HOME": str(home), "GPUBROKER_DATABASE_URL": database.url})


def _states(database: Database, job_id: int) -> list[str]:
    return [e.payload["state"] for e in jobs.events(database, job_id) if e.kind == "state"]


def test_allocation_runs_to_success_and_is_metered(database: Database, home: Path) -> None:
    settings = _settings(home, database)
    job_id = submit(database)
    alloc_id = plan_allocation(database, job_id, nodes=2, price=Decimal("1.5"))

    state = execution.run_allocation(
        database, settings, alloc_id, runner=execution.inprocess_runner
    )

    assert state is JobState.SUCCEEDED
    assert _states(database, job_id) == [
        "PENDING",
        "PLANNED",
        "PROVISIONING",
        "RUNNING",
        "SUCCEEDED",
    ]
    with database.session() as session:
        alloc = session.get(AllocationRow, alloc_id)
        assert alloc is not None and alloc.state == AllocationState.RELEASED.value
        rows = session.scalars(select(InstanceRow).where(InstanceRow.allocation_id == alloc_id))
        instances = sorted(rows, key=lambda r: r.node_index)
        usage = list(session.scalars(select(UsageRow).where(UsageRow.job_id == job_id)))
    assert [r.node_index for r in instances] == [0, 1]
    assert {r.request_id for r in instances} == {f"gpubroker-alloc-{alloc_id}"}
    assert all(r.state == InstanceState.TERMINATED.value for r in instances)
    assert [r.address for r in instances] == ["127.0.0.2", "127.0.0.3"]
    assert len(usage) == 2
    for row in usage:
        hours = Decimal(str((row.end - row.start).total_seconds())) / Decimal(3600)
        assert row.price_per_hour == Decimal("1.5")
        assert row.on_demand_price_per_hour == Decimal("1.5")
        assert abs(row.cost - Decimal("1.5") * hours) < Decimal("0.00001")
        assert row.cost > 0
        assert row.busy_seconds is not None
        assert 0 < row.busy_seconds <= (row.end - row.start).total_seconds()
    summary = execution.summary(database, settings, job_id)
    assert summary.step == summary.steps == 20
    assert summary.first_loss is not None and summary.last_loss is not None
    assert summary.last_loss < summary.first_loss - 0.5
    assert summary.checkpoint is not None and Path(summary.checkpoint, "state.pt").exists()
    assert LocalProvider(settings).list_instances(settings.owner_tag) == []

    # Running the same allocation again changes nothing and bills nothing more.
    assert execution.run_allocation(database, settings, alloc_id) is JobState.SUCCEEDED
    with database.session() as session:
        assert len(list(session.scalars(select(UsageRow)))) == 2


def test_transitions_are_checked_and_stale_writes_caught(database: Database) -> None:
    job_id = submit(database)
    with (
        pytest.raises(ConflictError, match="cannot go from PENDING to RUNNING"),
        database.session() as session,
    ):
        jobs.transition(session, jobs.load_row(session, job_id), JobState.RUNNING)
    assert jobs.get(database, job_id).state is JobState.PENDING

    with pytest.raises(StaleWrite), jobs.guarded(database) as first:
        mine = jobs.load_row(first, job_id)
        with jobs.guarded(database) as second:
            jobs.transition(second, jobs.load_row(second, job_id), JobState.PLANNED)
        jobs.transition(first, mine, JobState.CANCELLED)
    assert jobs.get(database, job_id).state is JobState.PLANNED


def test_budget_refuses_the_launch(database: Database, home: Path) -> None:
    settings = _settings(home, database)
    job_id = submit(database)
    alloc_id = plan_allocation(database, job_id, nodes=2, price=Decimal("100"))
    with database.session() as session:
        session.add(BudgetRow(team="default", amount=Decimal("0.5"), period="month"))

    with pytest.raises(BudgetExceeded, match="team default"):
        execution.run_allocation(database, settings, alloc_id, runner=execution.inprocess_runner)

    assert jobs.get(database, job_id).state is JobState.FAILED
    with database.session() as session:
        assert list(session.scalars(select(InstanceRow))) == []
    assert LocalProvider(settings).list_instances(settings.owner_tag) == []


class _SlowBoot(LocalProvider):
    """Nodes that never finish booting: a fault the local machine cannot produce."""

    def list_instances(self, owner_tag: str):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        return [replace(r, state=InstanceState.PENDING) for r in super().list_instances(owner_tag)]


def test_cancel_during_provisioning_leaves_nothing_running(
    database: Database, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import providers.local

    settings = _settings(home, database)
    monkeypatch.setattr(providers.local, "create", _SlowBoot)
    job_id = submit(database)
    alloc_id = plan_allocation(database, job_id, nodes=2)
    result: dict[str, JobState] = {}
    worker = threading.Thread(
        target=lambda: result.update(state=execution.run_allocation(database, settings, alloc_id))
    )
    worker.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with database.session() as session:
            ids = session.scalars(
                select(InstanceRow.provider_instance_id).where(
                    InstanceRow.allocation_id == alloc_id
                )
            ).all()
        if ids and all(ids):
            break
        time.sleep(0.05)
    assert jobs.get(database, job_id).state is JobState.PROVISIONING
    assert len(LocalProvider(settings).list_instances(settings.owner_tag)) == 2

    jobs.cancel(database, settings, job_id)
    worker.join(30)

    assert result["state"] is JobState.CANCELLED
    assert jobs.get(database, job_id).state is JobState.CANCELLED
    assert LocalProvider(settings).list_instances(settings.owner_tag) == []
    with database.session() as session:
        alloc = session.get(AllocationRow, alloc_id)
        assert alloc is not None and not AllocationState(alloc.state).live
        states = set(session.scalars(select(InstanceRow.state)))
        assert states == {InstanceState.TERMINATED.value}
        assert len(list(session.scalars(select(UsageRow)))) == 2


def test_sdk_submit_wait_plans_through_the_scheduler(home: Path) -> None:
    from broker.sdk import Broker
    from tests.support.execution import tiny_spec

    with Broker(home=str(home)) as broker:
        handle = broker.submit(tiny_spec(nodes=2))
        assert handle.state is JobState.PENDING
        handle.runner = execution.inprocess_runner
        view = handle.wait()
        assert view.state is JobState.SUCCEEDED
        assert [j.id for j in broker.jobs("SUCCEEDED")] == [handle.id]
        assert any(e.kind == "progress" for e in handle.logs())
        with broker.db.session() as session:
            (alloc,) = session.scalars(select(AllocationRow)).all()
        # The scheduler placed it on the local machine, two nodes, as the spec asks.
        assert (alloc.provider, alloc.nodes, alloc.plan_id is not None) == ("local", 2, True)
        assert broker.job_summary(handle.id).usage_rows == 2
