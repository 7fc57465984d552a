"""What is live now and what it costs: allocations, their instances, and the burn rate.

Cost so far of an allocation = what the usage ledger already charged for its ended node
runs + price x time for each instance still up (launched and not terminated; a node that
is requested but not launched costs nothing yet). The burn rate is the sum of the hourly
prices of the instances up now. The same figures per job feed ``gpubroker jobs``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow, JobRow, UsageRow
from broker.db.queries import live_allocation
from broker.domain import MICRO, InstanceState, as_utc, utcnow
from broker.services.metering import hours_between

_GONE = (InstanceState.TERMINATED.value, InstanceState.FAILED.value, InstanceState.PREEMPTED.value)


def _q(value: Decimal) -> Decimal:
    return value.quantize(MICRO) + 0


@dataclass(frozen=True)
class LiveInstance:
    id: int
    allocation_id: int
    job_id: int
    provider: str
    region: str
    zone: str
    instance_type: str
    pricing: str
    instance: str | None  # the provider's instance id
    node: int
    state: str
    address: str | None
    launched_at: datetime | None
    age_seconds: int
    price_per_hour: Decimal | None
    cost_so_far: Decimal


@dataclass(frozen=True)
class LiveAllocation:
    id: int
    job_id: int
    job: str
    team: str
    state: str
    provider: str
    region: str
    zone: str
    instance_type: str
    pricing: str
    gpu: str | None
    nodes: int
    gpus: int
    up: int  # instances launched and not yet terminated
    created_at: datetime
    age_seconds: int
    price_per_hour: Decimal | None  # per node
    burn_rate: Decimal  # USD per hour of the instances up now
    cost_so_far: Decimal
    estimate: Decimal


@dataclass(frozen=True)
class ProviderBurn:
    provider: str
    allocations: int
    instances: int
    gpus: int
    burn_rate: Decimal
    cost_so_far: Decimal


@dataclass(frozen=True)
class Status:
    at: datetime
    allocations: list[LiveAllocation]
    instances: list[LiveInstance]
    providers: list[ProviderBurn]
    burn_rate: Decimal
    cost_so_far: Decimal
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _up_since(row: InstanceRow) -> datetime | None:
    """When an instance that is up now (launched, not terminated) was launched; else None."""
    if row.terminated_at is None and row.state not in _GONE:
        return row.launched_at
    return None


def _metered(session: Session, allocation_ids: Iterable[int]) -> dict[int, Decimal]:
    ids = list(allocation_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(InstanceRow.allocation_id, func.coalesce(func.sum(UsageRow.cost), 0))
        .join(UsageRow, UsageRow.instance_id == InstanceRow.id)
        .where(InstanceRow.allocation_id.in_(ids))
        .group_by(InstanceRow.allocation_id)
    ).all()
    return {allocation_id: Decimal(str(cost)) for allocation_id, cost in rows}


def live_status(db: Database, *, now: datetime | None = None) -> Status:
    """Every live allocation and its instances, with age, $/h and cost so far."""
    now = as_utc(now or utcnow())
    with db.session() as session:
        allocations = session.execute(
            select(AllocationRow, JobRow.name, JobRow.team)
            .join(JobRow, AllocationRow.job_id == JobRow.id)
            .where(live_allocation())
            .order_by(AllocationRow.provider, AllocationRow.id)
        ).all()
        ids = [a.id for a, _, _ in allocations]
        instance_rows = (
            session.scalars(
                select(InstanceRow)
                .where(InstanceRow.allocation_id.in_(ids))
                .order_by(InstanceRow.allocation_id, InstanceRow.node_index, InstanceRow.id)
            ).all()
            if ids
            else []
        )
        metered = _metered(session, ids)
        job_of = {a.id: a.job_id for a, _, _ in allocations}
        instances: list[LiveInstance] = []
        for row in instance_rows:
            if row.state in _GONE:
                continue
            launched = as_utc(row.launched_at) if row.launched_at else None
            up_since = _up_since(row)
            cost = (
                _q(row.price_per_hour * hours_between(up_since, now))
                if up_since is not None and row.price_per_hour is not None
                else Decimal(0)
            )
            instances.append(
                LiveInstance(
                    id=row.id,
                    allocation_id=row.allocation_id,
                    job_id=job_of[row.allocation_id],
                    provider=row.provider,
                    region=row.region,
                    zone=row.zone,
                    instance_type=row.instance_type,
                    pricing=row.pricing,
                    instance=row.provider_instance_id,
                    node=row.node_index,
                    state=row.state,
                    address=row.address,
                    launched_at=launched,
                    age_seconds=int((now - (launched or as_utc(row.created_at))).total_seconds()),
                    price_per_hour=row.price_per_hour,
                    cost_so_far=cost,
                )
            )
        views: list[LiveAllocation] = []
        for alloc, name, team in allocations:
            mine = [i for i in instances if i.allocation_id == alloc.id]
            up = [i for i in mine if i.launched_at is not None]
            burn = sum((i.price_per_hour or Decimal(0) for i in up), Decimal(0))
            cost = metered.get(alloc.id, Decimal(0)) + sum(
                (i.cost_so_far for i in mine), Decimal(0)
            )
            created = as_utc(alloc.created_at)
            views.append(
                LiveAllocation(
                    id=alloc.id,
                    job_id=alloc.job_id,
                    job=name,
                    team=team,
                    state=alloc.state,
                    provider=alloc.provider,
                    region=alloc.region,
                    zone=alloc.zone,
                    instance_type=alloc.instance_type,
                    pricing=alloc.pricing,
                    gpu=alloc.gpu,
                    nodes=alloc.nodes,
                    gpus=alloc.nodes * alloc.gpus_per_node,
                    up=len(up),
                    created_at=created,
                    age_seconds=int((now - created).total_seconds()),
                    price_per_hour=alloc.price_at_plan,
                    burn_rate=_q(burn),
                    cost_so_far=_q(cost),
                    estimate=_q(alloc.est_cost),
                )
            )
    providers = []
    for provider in sorted({a.provider for a in views}):
        theirs = [a for a in views if a.provider == provider]
        providers.append(
            ProviderBurn(
                provider=provider,
                allocations=len(theirs),
                instances=sum(a.up for a in theirs),
                gpus=sum(a.gpus for a in theirs if a.up),
                burn_rate=_q(sum((a.burn_rate for a in theirs), Decimal(0))),
                cost_so_far=_q(sum((a.cost_so_far for a in theirs), Decimal(0))),
            )
        )
    notes = []
    unknown = sum(1 for i in instances if i.launched_at and i.price_per_hour is None)
    if unknown:
        notes.append(f"{unknown} instance(s) have no known price; counted at $0/h")
    return Status(
        at=now,
        allocations=views,
        instances=instances,
        providers=providers,
        burn_rate=_q(sum((p.burn_rate for p in providers), Decimal(0))),
        cost_so_far=_q(sum((p.cost_so_far for p in providers), Decimal(0))),
        notes=notes,
    )


@dataclass(frozen=True)
class JobResources:
    """Where a job runs (its newest allocation) and what it has cost so far."""

    gpu: str | None
    nodes: int | None
    provider: str | None
    region: str | None
    cost_so_far: Decimal
    estimate: Decimal | None


def job_resources(
    db: Database, job_ids: Iterable[int], *, now: datetime | None = None
) -> dict[int, JobResources]:
    """Per job: the newest allocation's GPU, nodes, provider and region; the ledger's cost
    plus the running cost of instances still up; the newest allocation's estimate."""
    now = as_utc(now or utcnow())
    ids = sorted(set(job_ids))
    result: dict[int, JobResources] = {}
    with db.session() as session:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            newest: dict[int, AllocationRow] = {}
            for alloc in session.scalars(
                select(AllocationRow)
                .where(AllocationRow.job_id.in_(chunk))
                .order_by(AllocationRow.id)
            ):
                newest[alloc.job_id] = alloc
            metered = dict(
                session.execute(
                    select(UsageRow.job_id, func.coalesce(func.sum(UsageRow.cost), 0))
                    .where(UsageRow.job_id.in_(chunk))
                    .group_by(UsageRow.job_id)
                ).all()
            )
            running: dict[int, Decimal] = {}
            for instance, job_id in session.execute(
                select(InstanceRow, AllocationRow.job_id)
                .join(AllocationRow, InstanceRow.allocation_id == AllocationRow.id)
                .where(AllocationRow.job_id.in_(chunk))
            ):
                up_since = _up_since(instance)
                if up_since is not None and instance.price_per_hour is not None:
                    cost = instance.price_per_hour * hours_between(up_since, now)
                    running[job_id] = running.get(job_id, Decimal(0)) + cost
            for job_id in chunk:
                latest = newest.get(job_id)
                cost = Decimal(str(metered.get(job_id, 0))) + running.get(job_id, Decimal(0))
                result[job_id] = JobResources(
                    gpu=latest.gpu if latest else None,
                    nodes=latest.nodes if latest else None,
                    provider=latest.provider if latest else None,
                    region=latest.region if latest else None,
                    cost_so_far=_q(cost),
                    estimate=_q(latest.est_cost) if latest else None,
                )
    return result
