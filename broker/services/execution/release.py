"""Ending an allocation: terminate its nodes, close their rows, write the usage ledger.

Every step is idempotent, so an executor, a cancel and the reconciler may all release the
same allocation; a provider that refuses is recorded on the job and retried by reconcile.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from broker.config import Settings
from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow, JobRow, OfferRow, UsageRow
from broker.db.queries import live_allocation_ids
from broker.domain import (
    MICRO,
    AllocationState,
    EndpointState,
    InstanceState,
    Pricing,
    as_utc,
    utcnow,
)
from broker.errors import BrokerError
from broker.services import metering
from broker.services.execution import endpoints
from broker.services.execution.provision import load_allocation, record_launch, request_id_for
from broker.services.execution.run_context import POLL_S, executor_alive
from broker.services.jobs import store as jobs_service

if TYPE_CHECKING:
    from providers.base import Launcher


def _on_demand_price(session: Any, alloc: AllocationRow) -> Decimal | None:
    if alloc.pricing == Pricing.ON_DEMAND.value:
        return alloc.price_at_plan
    return session.scalar(
        select(OfferRow.price_per_hour).where(
            OfferRow.provider == alloc.provider,
            OfferRow.region == alloc.region,
            OfferRow.zone == alloc.zone,
            OfferRow.instance_type == alloc.instance_type,
            OfferRow.pricing == Pricing.ON_DEMAND.value,
        )
    )


def teardown(
    db: Database, settings: Settings, allocation_id: int, *, busy_seconds: float | None = None
) -> int:
    """Stop Ray, terminate every node of the allocation, write the usage rows. Idempotent.

    Returns the number of instances terminated now.
    """
    from providers import registry

    endpoints.close(db, allocation_id, EndpointState.STOPPED)  # if it served, and is open

    with db.session() as session:
        alloc = load_allocation(session, allocation_id)
        provider_name = alloc.provider
        request_id = request_id_for(db, settings, allocation_id)
        known = [r.provider_instance_id for r in alloc.instances if r.provider_instance_id]
    try:
        provider = registry.launcher(provider_name, settings)
        listed = [
            r for r in provider.list_instances(settings.owner_tag) if r.request_id == request_id
        ]
        record_launch(db, allocation_id, listed)  # nodes a crash kept us from recording
        ids = sorted({*known, *(r.instance_id for r in listed)})
        if ids:
            provider.terminate(ids, request_id)
    except BrokerError as exc:
        # Recorded, never raised: the caller still ends the job, and once the allocation is
        # over its nodes are strays that ``reconcile`` terminates when the provider answers.
        _note_teardown_failure(db, allocation_id, exc)
        return 0
    now = utcnow()
    with db.session() as session:
        alloc = load_allocation(session, allocation_id)
        job = jobs_service.load_row(session, alloc.job_id)
        on_demand = _on_demand_price(session, alloc)
        for row in alloc.instances:
            if row.state != InstanceState.TERMINATED.value:
                row.state = (
                    InstanceState.TERMINATED.value
                    if row.provider_instance_id or row.launched_at
                    else InstanceState.FAILED.value
                )
                row.terminated_at = row.terminated_at or now
            _write_usage(session, alloc, job, row, on_demand, busy_seconds)
    return len([r for r in listed if r.state != InstanceState.TERMINATED])


def _note_teardown_failure(db: Database, allocation_id: int, exc: BrokerError) -> None:
    with db.session() as session:
        job_id = load_allocation(session, allocation_id).job_id
        jobs_service.record_event(
            session,
            job_id,
            "teardown_failed",
            {"allocation": allocation_id, "error": str(exc), "retry": "gpubroker reconcile"},
        )


def _write_usage(
    session: Any,
    alloc: AllocationRow,
    job: JobRow,
    row: InstanceRow,
    on_demand: Decimal | None,
    busy_seconds: float | None,
) -> None:
    if row.launched_at is None or row.terminated_at is None:
        return  # never ran: nothing to bill
    if session.scalar(select(UsageRow.id).where(UsageRow.instance_id == row.id)) is not None:
        return
    start, end = as_utc(row.launched_at), as_utc(row.terminated_at)
    lifetime = max(0.0, (end - start).total_seconds())
    price = row.price_per_hour if row.price_per_hour is not None else Decimal(0)
    # The launch price until the offer's price moves (spot), then each observed price.
    cost = metering.metered_cost(
        session, offer_id=alloc.offer_id, price_per_hour=price, start=start, end=end
    )
    session.add(
        UsageRow(
            instance_id=row.id,
            job_id=job.id,
            team=job.team,
            provider=row.provider,
            region=row.region,
            zone=row.zone,
            instance_type=row.instance_type,
            pricing=row.pricing,
            gpu=alloc.gpu,
            gpus=alloc.gpus_per_node,
            start=start,
            end=end,
            price_per_hour=price,
            on_demand_price_per_hour=on_demand,
            busy_seconds=None if busy_seconds is None else min(busy_seconds, lifetime),
            cost=cost.quantize(MICRO),
        )
    )
    try:
        session.flush()
    except IntegrityError:  # a concurrent teardown wrote it first
        session.rollback()


def retire_nodes(
    db: Database, settings: Settings, allocation_id: int, provider: Launcher, ids: list[str]
) -> None:
    """Nodes the provider took from a serving allocation that goes on without them:
    terminated (if anything is left of them), their rows closed and metered."""
    request_id = request_id_for(db, settings, allocation_id)
    try:
        provider.terminate(ids, request_id)
    except BrokerError as exc:  # reconcile terminates it once the provider answers
        _note_teardown_failure(db, allocation_id, exc)
    now = utcnow()
    with db.session() as session:
        alloc = load_allocation(session, allocation_id)
        job = jobs_service.load_row(session, alloc.job_id)
        on_demand = _on_demand_price(session, alloc)
        for row in alloc.instances:
            if row.provider_instance_id in ids and row.state != InstanceState.TERMINATED.value:
                row.state = InstanceState.TERMINATED.value
                row.terminated_at = now
                _write_usage(session, alloc, job, row, on_demand, None)
        jobs_service.record_event(
            session, job.id, "node_lost", {"allocation": allocation_id, "instances": ids}
        )


def _live(db: Database, job_id: int) -> list[int]:
    with db.session() as session:
        return live_allocation_ids(session, job_id)


def release_job(
    db: Database, settings: Settings, job_id: int, *, reason: str, grace_s: float = 0.0
) -> list[int]:
    """Tear down every live allocation of ``job_id``; returns their ids.

    With ``grace_s``, executors still running an allocation first get that long to stop
    their run themselves (a serving run drains its requests, a training run ends cleanly).
    """
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(executor_alive(db, i) for i in _live(db, job_id)):
        time.sleep(POLL_S)
    ids = _live(db, job_id)
    for allocation_id in ids:
        teardown(db, settings, allocation_id)
        with jobs_service.guarded(db) as session:
            alloc = load_allocation(session, allocation_id)
            if AllocationState(alloc.state).live:
                alloc.state = AllocationState.RELEASED.value
            jobs_service.record_event(
                session, job_id, "released", {"allocation": allocation_id, "reason": reason}
            )
    return ids
