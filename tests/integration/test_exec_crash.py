"""Kill the broker at each crash point; one reconcile leaves no leak and no orphan."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from broker.config import Settings, load_settings
from broker.db import leases
from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow, UsageRow
from broker.domain import AllocationState, InstanceState, JobState
from broker.services.execution.provision import request_id_for
from broker.services.execution.reconcile import reconcile
from broker.services.execution.run_context import (
    CRASH_EXIT_CODE,
    CRASH_POINTS,
    lease_holder,
    lease_name,
)
from broker.services.jobs import store as jobs
from providers.base import TAG_ALLOCATION, LaunchRequest
from providers.local import LocalProvider
from tests.support.execution import plan_allocation, submit

REPO = Path(__file__).resolve().parents[2]
DRIVER = """
import sys
from broker.config import load_settings
from broker.db.engine import Database
from broker.services.execution import runners
from broker.services.execution.executor import run_allocation
settings = load_settings()
run_allocation(
    Database(settings.database_url), settings, int(sys.argv[1]),
    runner=runners.inprocess_runner,
)
"""


def _settings(home: Path) -> Settings:
    return load_settings({"GPUBROKER_HOME": str(home)})


def _crash(home: Path, alloc_id: int, point: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUBROKER_")}
    env.update(GPUBROKER_HOME=str(home), GPUBROKER_CRASH_AT=point, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(alloc_id)], env=env, capture_output=True, timeout=120
    )
    return proc.returncode


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_reconcile_after_crash(home: Path, point: str) -> None:
    settings = _settings(home)
    database = Database(settings.database_url)
    job_id = submit(database, steps=400, checkpoint_every=100)
    alloc_id = plan_allocation(database, job_id, nodes=2)

    assert _crash(home, alloc_id, point) == CRASH_EXIT_CODE

    provider = LocalProvider(settings)
    with database.session() as session:
        rows = list(session.scalars(select(InstanceRow).order_by(InstanceRow.node_index)))
    # The rows, with their request id, exist whatever point the broker died at.
    request_id = request_id_for(database, settings, alloc_id)
    assert [r.request_id for r in rows] == [request_id] * 2
    launched = provider.list_instances(settings.owner_tag)
    if point == "after_launch_record":
        assert launched == [] and {r.state for r in rows} == {InstanceState.REQUESTED.value}
    else:
        assert len(launched) == 2  # the crash left a whole gang running

    report = reconcile(database, settings)

    assert report.orphaned_allocations == [alloc_id]
    assert report.requeued_jobs == [job_id]
    assert report.errors == []
    assert provider.list_instances(settings.owner_tag) == []  # zero leaks
    with database.session() as session:
        alloc = session.get(AllocationRow, alloc_id)
        assert alloc is not None and alloc.state == AllocationState.ORPHANED.value
        live = session.scalars(
            select(AllocationRow).where(
                AllocationRow.state.in_([s.value for s in AllocationState if s.live])
            )
        ).all()
        assert live == []  # zero orphans
        states = {r.state for r in session.scalars(select(InstanceRow))}
        usage = len(session.scalars(select(UsageRow)).all())
    assert jobs.get(database, job_id).state is JobState.PENDING
    if point == "after_launch_record":
        assert states == {InstanceState.FAILED.value} and usage == 0
    else:
        assert states == {InstanceState.TERMINATED.value} and usage == 2
    # One pass was enough: a second finds nothing to do.
    again = reconcile(database, settings)
    assert again.terminated == [] and again.orphaned_allocations == []
    database.dispose()


def test_reconcile_terminates_only_what_nothing_owns(home: Path) -> None:
    settings = _settings(home)
    database = Database(settings.database_url)
    provider = LocalProvider(settings)
    job_id = submit(database)
    alloc_id = plan_allocation(database, job_id, nodes=1)
    with database.session() as session:  # an allocation whose executor is alive: this process
        session.get(AllocationRow, alloc_id).state = AllocationState.ACTIVE.value  # type: ignore[union-attr]
        session.add(
            InstanceRow(
                allocation_id=alloc_id,
                provider="local",
                region="local",
                zone="local",
                instance_type="local-node",
                pricing="on_demand",
                request_id="owned",
                node_index=0,
                state=InstanceState.RUNNING.value,
            )
        )
    leases.acquire(database, lease_name(alloc_id), lease_holder(), 60)

    def launch(
        request_id: str, allocation: int, owner: str = "gpubroker", installation: str = ""
    ) -> None:
        provider.launch(
            LaunchRequest(
                request_id=request_id,
                region="local",
                zone="local",
                instance_type="local-node",
                nodes=1,
                owner=owner,
                installation=installation or database.installation_id,
                tags={TAG_ALLOCATION: str(allocation)},
            )
        )

    launch("owned", alloc_id)
    launch("stray", 999)
    launch("not-ours", 998, owner="someone-else")
    launch("other-installation", 997, installation="0" * 16)  # same owner tag, not ours

    report = reconcile(database, settings, ["local"])

    assert len(report.terminated) == 1 and report.orphaned_allocations == []
    assert len(report.foreign) == 1
    assert {r.request_id for r in provider.list_instances("gpubroker")} == {
        "owned",
        "other-installation",
    }
    assert len(provider.list_instances("someone-else")) == 1
    database.dispose()
