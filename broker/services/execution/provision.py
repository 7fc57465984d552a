"""Provisioning an allocation, in the order that makes a crash recoverable.

1. the job and allocation go PROVISIONING and one instance row per node, carrying the
   launch's request id, is committed *before* the provider is called (``begin``);
2. ``provider.launch`` (convergent by request id) with the nodes' boot script, then the
   rows get the provider's ids (``launch``, ``record_launch``);
3. once every node runs (``wait_running``), the head's private address is published to
   the nodes (``publish_head``); they form their Ray cluster themselves.

The executor holds the lease ``alloc-<id>`` while it works; the reconciler treats an
allocation whose executor is gone as orphaned.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from broker.config import Settings
from broker.db import leases
from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow, JobRow
from broker.domain import AllocationState, InstanceState, JobState, Pricing, utcnow
from broker.errors import (
    BrokerError,
    BudgetExceeded,
    ConflictError,
    NotFound,
    OutOfCapacity,
    StaleWrite,
)
from broker.services.execution import node_boot, ray_jobs
from broker.services.execution.run_context import (
    LEASE_TTL_S,
    POLL_S,
    crash_point,
    lease_holder,
    lease_name,
)
from broker.services.jobs import store as jobs_service

if TYPE_CHECKING:
    from providers.base import InstanceRecord, Launcher


RUNNING_TIMEOUT_S = 600.0

STALE_RETRIES = 5  # optimistic-lock races between one job's allocations, retried


def request_id_for(db: Database, settings: Settings, allocation_id: int) -> str:
    """Unique across installations sharing a cloud account: it carries the database's
    installation id, and so do the client tokens and names derived from it."""
    return f"{settings.owner_tag}-{db.installation_id}-alloc-{allocation_id}"


def load_allocation(session: Any, allocation_id: int) -> AllocationRow:
    row = session.get(AllocationRow, allocation_id)
    if row is None:
        raise NotFound(f"allocation {allocation_id} does not exist")
    return row


def _check_budget(session: Any, job: JobRow, alloc: AllocationRow) -> None:
    """Refuse a launch that would take the team or the job past its budget."""
    from broker.db.models import BudgetRow
    from broker.services import budgets

    if job.budget is not None and alloc.est_cost > job.budget:
        raise BudgetExceeded(
            f"job {job.id}: estimated cost {alloc.est_cost:.2f} USD exceeds its budget "
            f"{job.budget:.2f} USD"
        )
    row = session.scalar(select(BudgetRow).where(BudgetRow.team == job.team))
    if row is None:
        return
    # spent() already counts this allocation's estimate, since it is live.
    spent = budgets.spent(session, job.team, budgets.period_start(row.period, utcnow()))
    if spent > row.amount:
        raise BudgetExceeded(
            f"team {job.team}: launching allocation {alloc.id} would spend {spent:.2f} USD "
            f"of a {row.amount:.2f} USD {row.period} budget"
        )


def begin(db: Database, settings: Settings, allocation_id: int) -> tuple[int, bool]:
    """PLANNED -> PROVISIONING and the instance rows; returns (job id, go on?)."""
    # The lease comes first, so the reconciler never sees a PROVISIONING allocation
    # without an executor that is still alive.
    if not leases.acquire(db, lease_name(allocation_id), lease_holder(), LEASE_TTL_S):
        raise ConflictError(f"allocation {allocation_id} is being run by another executor")
    attempts = 0
    while True:
        try:
            return _begin_once(db, settings, allocation_id)
        except StaleWrite:  # a serving job's other allocation moved the job: read it again
            attempts += 1
            if attempts >= STALE_RETRIES:
                leases.release(db, lease_name(allocation_id), lease_holder())
                raise


def _begin_once(db: Database, settings: Settings, allocation_id: int) -> tuple[int, bool]:
    failed: BudgetExceeded | None = None
    with jobs_service.guarded(db) as session:
        alloc = load_allocation(session, allocation_id)
        job = jobs_service.load_row(session, alloc.job_id)
        job_id = job.id
        if not AllocationState(alloc.state).live or JobState(job.state).terminal:
            done = True
            if alloc.state == AllocationState.PLANNED.value:
                alloc.state = AllocationState.RELEASED.value  # its job ended: never launched
        else:
            done = False
            try:
                _check_budget(session, job, alloc)
            except BudgetExceeded as exc:
                failed = exc
                alloc.state = AllocationState.FAILED.value
                jobs_service.transition(session, job, JobState.FAILED, str(exc))
            else:
                _provision_rows(session, request_id_for(db, settings, allocation_id), job, alloc)
    if done or failed is not None:
        leases.release(db, lease_name(allocation_id), lease_holder())
    if failed is not None:
        raise failed
    return job_id, not done


def _provision_rows(session: Any, request_id: str, job: JobRow, alloc: AllocationRow) -> None:
    """Job and allocation to PROVISIONING; one REQUESTED instance row per missing node."""
    if job.state == JobState.PLANNED.value:
        jobs_service.transition(session, job, JobState.PROVISIONING)
        job.attempts += 1
    alloc.state = AllocationState.PROVISIONING.value
    have = {row.node_index for row in alloc.instances}
    price = alloc.price_at_plan if alloc.price_at_plan is not None else Decimal(0)
    for index in range(alloc.nodes):
        if index in have:
            continue
        session.add(
            InstanceRow(
                allocation_id=alloc.id,
                provider=alloc.provider,
                region=alloc.region,
                zone=alloc.zone,
                instance_type=alloc.instance_type,
                pricing=alloc.pricing,
                request_id=request_id,
                node_index=index,
                state=InstanceState.REQUESTED.value,
                price_per_hour=price,
            )
        )


def launch(
    db: Database,
    settings: Settings,
    allocation_id: int,
    provider: Launcher,
    cluster: node_boot.ClusterSpec | None,
) -> list[InstanceRecord]:
    from providers.base import TAG_ALLOCATION, TAG_JOB, LaunchRequest

    with db.session() as session:
        alloc = load_allocation(session, allocation_id)
        request = LaunchRequest(
            request_id=request_id_for(db, settings, allocation_id),
            region=alloc.region,
            zone=alloc.zone or None,
            instance_type=alloc.instance_type,
            nodes=alloc.nodes,
            pricing=Pricing(alloc.pricing),
            owner=settings.owner_tag,
            installation=db.installation_id,
            tags={TAG_JOB: str(alloc.job_id), TAG_ALLOCATION: str(alloc.id)},
            user_data=node_boot.boot_script(cluster) if cluster is not None else None,
            ingress_cidr=settings.ingress_cidr if cluster is not None else None,
            ports=cluster.ports if cluster is not None else (),
        )
    records = provider.launch(request)
    crash_point("after_cloud_create")
    record_launch(db, allocation_id, records)
    return records


def record_launch(db: Database, allocation_id: int, records: list[InstanceRecord]) -> None:
    by_index = {r.node_index: r for r in records}
    with db.session() as session:
        alloc = load_allocation(session, allocation_id)
        for row in alloc.instances:
            record = by_index.get(row.node_index)
            if record is None or row.state == InstanceState.TERMINATED.value:
                continue
            row.provider_instance_id = record.instance_id
            row.state = record.state.value
            row.address = record.address or record.private_address
            row.launched_at = row.launched_at or record.launched_at or utcnow()


def wait_running(
    db: Database, settings: Settings, allocation_id: int, job_id: int, provider: Launcher
) -> list[InstanceRecord] | None:
    """Poll until every node runs; None when the job was cancelled meanwhile."""
    deadline = time.monotonic() + RUNNING_TIMEOUT_S
    request_id = request_id_for(db, settings, allocation_id)
    while True:
        with db.session() as session:
            if jobs_service.load_row(session, job_id).state == JobState.CANCELLED.value:
                return None
            alloc = load_allocation(session, allocation_id)
            nodes, zone = alloc.nodes, alloc.zone
        mine = [
            r for r in provider.list_instances(settings.owner_tag) if r.request_id == request_id
        ]
        record_launch(db, allocation_id, mine)
        running = sorted(
            (r for r in mine if r.state == InstanceState.RUNNING), key=lambda r: r.node_index or 0
        )
        if len(running) == nodes:
            return running
        gone = [r for r in mine if r.state in (InstanceState.PREEMPTED, InstanceState.FAILED)]
        if gone or time.monotonic() > deadline:
            raise OutOfCapacity(provider.name, zone, "nodes did not all reach RUNNING")
        leases.acquire(db, lease_name(allocation_id), lease_holder(), LEASE_TTL_S)
        time.sleep(POLL_S)


def publish_head(
    settings: Settings,
    provider: Launcher,
    running: list[InstanceRecord],
    cluster: node_boot.ClusterSpec,
) -> ray_jobs.Head:
    """Tell every node where its head is (node 0's private address); where we reach it."""
    from providers.base import META_HEAD

    node = running[0]
    private = node.private_address or node.address
    reach = node.address if settings.cluster_network == "public" else private
    if private is None or reach is None:
        raise BrokerError(f"node {node.instance_id} has no address to reach its head at")
    provider.set_metadata([r.instance_id for r in running], {META_HEAD: private})
    return ray_jobs.Head(f"http://{reach}:{cluster.dashboard_port}", cluster.token)
