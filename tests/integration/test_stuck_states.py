"""A provider that refuses credentials never leaves a job stuck: the failure path ends it,
``cancel`` ends it, and ``reconcile`` terminates what was left once the provider answers."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from broker.config import load_settings
from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow, UsageRow
from broker.domain import AllocationState, InstanceState, JobState
from broker.errors import AuthError
from broker.services.execution import provision, runners
from broker.services.execution.cancel import cancel
from broker.services.execution.executor import run_allocation
from broker.services.execution.monitor import Monitor
from broker.services.execution.reconcile import reconcile
from broker.services.execution.run_context import Outcome, RunContext
from broker.services.jobs import store as jobs
from providers.base import InstanceRecord
from providers.fake import FakeProvider
from providers.fake.faults import FaultPlan, LaunchFailure
from tests.support.execution import plan_allocation, submit

POOL = {
    "provider": "fake",
    "region": "us-east-1",
    "zone": "us-east-1a",
    "instance_type": "fake-l4x1",
}


class RefusingCloud(FakeProvider):
    """The fake cloud, whose listing and termination can be made to refuse credentials."""

    refuse = False

    def list_instances(self, owner_tag: str) -> list[InstanceRecord]:
        if self.refuse:
            raise AuthError(self.name, "credentials refused (test)")
        return super().list_instances(owner_tag)

    def terminate(self, instance_ids: Sequence[str], request_id: str) -> None:
        if self.refuse:
            raise AuthError(self.name, "credentials refused (test)")
        super().terminate(instance_ids, request_id)


def _setup(home: Path, cloud: FakeProvider) -> tuple[Database, object, int, int]:
    settings = dataclasses.replace(
        load_settings({"GPUBROKER_HOME": str(home)}), extra={"fake_provider": cloud}
    )
    database = Database(settings.database_url)
    job_id = submit(database, nodes=2, constraints={"providers": ["fake"]})
    return database, settings, job_id, plan_allocation(database, job_id, nodes=2, **POOL)


def _live_allocations(database: Database, job_id: int) -> list[int]:
    with database.session() as session:
        rows = session.scalars(select(AllocationRow).where(AllocationRow.job_id == job_id))
        return [r.id for r in rows if AllocationState(r.state).live]


def test_a_refused_teardown_inside_the_error_path_still_ends_the_job(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provision, "POLL_S", 0.01)
    # The second node's launch is refused; the teardown that follows is refused too.
    cloud = RefusingCloud(faults=FaultPlan(launch_failures=(LaunchFailure("auth", at_node=2),)))
    database, settings, job_id, alloc_id = _setup(home, cloud)
    original = cloud.launch

    def launch_then_lose_credentials(req):  # type: ignore[no-untyped-def]
        try:
            return original(req)
        finally:
            cloud.refuse = True

    monkeypatch.setattr(cloud, "launch", launch_then_lose_credentials)

    state = run_allocation(database, settings, alloc_id, runner=runners.inprocess_runner)

    view = jobs.get(database, job_id)
    assert state is JobState.FAILED and view.state is JobState.FAILED
    assert view.message and "credentials" in view.message
    assert _live_allocations(database, job_id) == []  # its estimate holds no budget now
    kinds = [e.kind for e in jobs.events(database, job_id)]
    assert "teardown_failed" in kinds
    cloud.refuse = False
    reconcile(database, settings, ["fake"])
    assert [r for r in cloud.list_instances(settings.owner_tag)] == []
    database.dispose()


def test_cancel_ends_a_running_job_when_the_provider_refuses(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provision, "POLL_S", 0.01)
    # cancel is called from inside the run here, so the executor it would wait for is
    # its own caller: no grace
    monkeypatch.setattr("broker.services.execution.cancel.CANCEL_GRACE_S", 0.0)
    cloud = RefusingCloud()
    database, settings, job_id, alloc_id = _setup(home, cloud)
    cancelled: list[JobState] = []

    def cancel_while_refused(ctx: RunContext, monitor: Monitor) -> Outcome:
        cloud.refuse = True
        cancelled.append(cancel(database, settings, job_id).state)  # type: ignore[arg-type]
        return Outcome(ok=False, stop="cancelled")

    cancel_while_refused.needs_cluster = False  # type: ignore[attr-defined]
    state = run_allocation(database, settings, alloc_id, runner=cancel_while_refused)

    assert cancelled == [JobState.CANCELLED] and state is JobState.CANCELLED
    assert _live_allocations(database, job_id) == []
    failed = [e for e in jobs.events(database, job_id) if e.kind == "teardown_failed"]
    assert failed and "credentials refused" in failed[0].payload["error"]
    cloud.refuse = True
    refused = reconcile(database, settings, ["fake"])
    assert refused.failed_providers == ["fake"] and refused.errors
    cloud.refuse = False
    assert len(cloud.list_instances(settings.owner_tag)) == 2  # left running, recorded
    dry = reconcile(database, settings, ["fake"], dry_run=True)
    assert dry.retried_teardowns == [alloc_id] and len(dry.terminated) == 2
    assert _metered(database) == ({InstanceState.RUNNING.value}, 0)  # nothing changed
    report = reconcile(database, settings, ["fake"])  # the retry
    assert len(report.terminated) == 2 and report.errors == []
    assert report.retried_teardowns == [alloc_id]
    assert all(
        r.state is InstanceState.TERMINATED
        for r in cloud.instances()
        if r.tags.get("gpubroker-installation") == database.installation_id
    )
    # The retried teardown closed the rows and metered the nodes that outlived the job.
    assert _metered(database) == ({InstanceState.TERMINATED.value}, 2)
    assert reconcile(database, settings, ["fake"]).retried_teardowns == []
    database.dispose()


def _metered(database: Database) -> tuple[set[str], int]:
    """The states of the instance rows, and how many usage rows there are."""
    with database.session() as session:
        states = set(session.scalars(select(InstanceRow.state)))
        return states, len(session.scalars(select(UsageRow.id)).all())
