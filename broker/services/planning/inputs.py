"""What the planner reads from the database: pools, quotas, pending jobs, measured rates.

Pools are the fresh offers with a known price. A pool's capacity is the provider's figure
where known, else ``settings.default_pool_capacity``, minus the nodes that live
allocations already hold there; pools in an active cool-down (a recent OutOfCapacity,
``add_cooldown``) are left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Float, cast, func, select
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.db.engine import Database
from broker.db.models import AllocationRow, EndpointRow, JobRow, OfferRow, PoolCooldownRow, QuotaRow
from broker.db.queries import POOL_ORDER, live_allocation, plannable_offer
from broker.domain import JobState, utcnow

# the offer columns a pool is made of: read as plain rows, not ORM objects, since every
# re-plan reads every offer (thousands)
_POOL_COLUMNS = (
    "id",
    "provider",
    "region",
    "zone",
    "instance_type",
    "pricing",
    "gpu",
    "gpus_per_node",
    "price_per_hour",
    "capacity_nodes",
    "interconnect_gbps",
    "rdma",
    "vcpus",
    "memory_gib",
)


def available_pools(session: Session, settings: Settings) -> list[Any]:
    from scheduler.problem import Pool

    now = utcnow()
    held: dict[tuple, int] = defaultdict(int)
    for row in session.scalars(select(AllocationRow).where(live_allocation())):
        held[(row.provider, row.region, row.zone or "", row.instance_type, row.pricing)] += (
            row.nodes
        )
    cooling: dict[tuple[str, str], list[PoolCooldownRow]] = defaultdict(list)
    for c in session.scalars(select(PoolCooldownRow).where(PoolCooldownRow.until > now)):
        cooling[(c.provider, c.region)].append(c)
    pools = []
    offers = session.execute(
        select(
            *(
                # the planner prices in floats: cast in SQL, not through Decimal per row
                cast(OfferRow.price_per_hour, Float)
                if name == "price_per_hour"
                else OfferRow.__table__.c[name]
                for name in _POOL_COLUMNS
            )
        )
        .where(plannable_offer())
        .order_by(*POOL_ORDER)
    )
    default = settings.default_pool_capacity
    for (  # in _POOL_COLUMNS order: plain tuples are read far faster than named rows
        offer_id,
        provider,
        region,
        zone,
        instance_type,
        pricing,
        gpu,
        gpus_per_node,
        price,
        capacity,
        gbps,
        rdma,
        vcpus,
        memory_gib,
    ) in offers:
        zone = zone or ""
        cooldowns = cooling.get((provider, region))
        if cooldowns and any(
            (c.zone or "") in ("", zone) and c.instance_type in (None, instance_type)
            for c in cooldowns
        ):
            continue
        key = (provider, region, zone, instance_type, pricing)
        capacity = (default if capacity is None else capacity) - held.get(key, 0)
        if capacity <= 0:
            continue
        pools.append(
            Pool(
                provider=provider,
                region=region,
                zone=zone,
                instance_type=instance_type,
                pricing=pricing,
                gpu=gpu,
                gpus_per_node=gpus_per_node or 0,
                price_per_hour=price,
                capacity=capacity,
                interconnect_gbps=gbps,
                rdma=rdma or "none",
                offer_id=offer_id,
                vcpus=vcpus,
                memory_gib=memory_gib,
            )
        )
    return pools


def held_by_provider(session: Session, share_on: str) -> dict[str, float]:
    """What live allocations hold per provider, in the share cap's unit: GPUs, or for a
    cap on spend their estimated cost (the unit the plan's candidates are priced in)."""
    held: dict[str, float] = defaultdict(float)
    for row in session.scalars(select(AllocationRow).where(live_allocation())):
        if share_on == "spend":
            held[row.provider] += float(row.est_cost)
        else:
            held[row.provider] += float(row.gpus_per_node * row.nodes)
    return dict(sorted(held.items()))


def quotas(session: Session) -> list[Any]:
    from scheduler.problem import Quota

    out = []
    for row in session.scalars(
        select(QuotaRow).where(QuotaRow.unit == "gpus").order_by(QuotaRow.id)
    ):
        out.append(
            Quota(
                provider=row.provider,
                region=None if row.region == "global" else row.region,
                family=None if row.scope in ("all", "") else row.scope,
                pricing=row.pricing,
                limit=max(row.limit - row.used, 0.0),
                name=f"quota {row.provider}/{row.region}/{row.name}",
            )
        )
    return out


def pending_jobs(session: Session, job_ids: Sequence[int] | None) -> list[JobRow]:
    query = select(JobRow).where(JobRow.state == JobState.PENDING.value).order_by(JobRow.id)
    if job_ids is not None:
        query = query.where(JobRow.id.in_(list(job_ids)))
    return list(session.scalars(query))


def measured_rates(session: Session, job_ids: list[int]) -> dict[int, float]:
    """Each job's measured request rate: the sum over its endpoints of their highest."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(EndpointRow.job_id, func.sum(EndpointRow.request_rate))
        .where(EndpointRow.job_id.in_(job_ids), EndpointRow.request_rate.is_not(None))
        .group_by(EndpointRow.job_id)
    )
    return {job_id: float(rate) for job_id, rate in rows if rate}


def with_measured_rates(session: Session, specs: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Serving specs with the request rate their endpoints measured, where it is higher."""
    rates = measured_rates(session, [job for job, spec in specs if spec.kind == "inference"])
    return [
        (job, spec.model_copy(update={"request_rate": rates[job]}))
        if rates.get(job, 0.0) > getattr(spec, "request_rate", 0.0)
        else (job, spec)
        for job, spec in specs
    ]


def add_cooldown(
    db: Database,
    settings: Settings,
    *,
    provider: str,
    region: str,
    zone: str,
    instance_type: str | None,
    reason: str,
) -> int:
    """Keep the pool (or the whole zone, when ``instance_type`` is None) out of plans for
    ``settings.capacity_cooldown_minutes``."""
    until = utcnow() + timedelta(minutes=settings.capacity_cooldown_minutes)
    with db.session() as session:
        row = PoolCooldownRow(
            provider=provider,
            region=region,
            zone=zone or "",
            instance_type=instance_type,
            reason=reason[:256],
            until=until,
        )
        session.add(row)
        session.flush()
        return row.id
