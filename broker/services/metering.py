"""Queries over the usage ledger, the only source of cost.

A usage row is one instance run: start, end, the price per node-hour at launch and the
cost the ledger charged. Reports see a window through *slices*: each row clipped to the
window, its cost, GPU-hours and busy time pro-rated by the share of its run inside the
window. Adjacent windows therefore add up to the window that covers both, and the same
window always gives the same figures (rows are read in a fixed order and every pro-rated
amount is quantized before it is summed, so Decimal sums do not depend on order).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.db.models import (
    AllocationRow,
    InstanceRow,
    JobRow,
    OfferRow,
    PlanRow,
    PriceObservationRow,
    UsageRow,
)
from broker.domain import Pricing, as_utc, money

# Pro-rated amounts are quantized to this before summing (a billionth of a dollar or hour).
FINE = Decimal("0.000000001")
_SECONDS_PER_HOUR = Decimal(3600)
# Key in plans.detail: {job id (str): estimated cost of that job on the offer the
# per-job-cheapest rule picks at plan time}.
BASELINE_KEY = "per_job_cheapest"

# An offer's shape as the on-demand price cache keys it: provider, region, zone, type.
_Shape = tuple[str, str, str, str]


def seconds(delta: timedelta) -> Decimal:
    """Exact seconds of a timedelta as a Decimal."""
    return Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / 1_000_000


def hours_between(start: datetime, end: datetime) -> Decimal:
    return max(seconds(as_utc(end) - as_utc(start)), Decimal(0)) / _SECONDS_PER_HOUR


@dataclass(frozen=True)
class Slice:
    """One usage row clipped to a window. Money in dollars, times in hours."""

    usage_id: int
    job_id: int
    allocation_id: int
    team: str
    provider: str
    region: str
    zone: str
    instance_type: str
    pricing: str
    gpu: str | None
    gpus: int
    start: datetime
    end: datetime
    node_hours: Decimal
    gpu_hours: Decimal
    cost: Decimal
    on_demand_cost: Decimal | None  # None: no on-demand price known for this shape
    cheapest_cost: Decimal | None  # None: no per-job-cheapest baseline recorded
    busy_gpu_hours: Decimal | None  # None: the run did not report its busy time


def _on_demand_price(
    session: Session, row: UsageRow, cache: dict[_Shape, Decimal | None]
) -> Decimal | None:
    """The row's on-demand list price per node-hour: as recorded, else from ``offers``."""
    if row.on_demand_price_per_hour is not None:
        return row.on_demand_price_per_hour
    if row.pricing == Pricing.ON_DEMAND.value:
        return row.price_per_hour
    key = (row.provider, row.region, row.zone, row.instance_type)
    if key not in cache:
        offers = session.scalars(
            select(OfferRow)
            .where(
                OfferRow.provider == row.provider,
                OfferRow.region == row.region,
                OfferRow.instance_type == row.instance_type,
                OfferRow.pricing == Pricing.ON_DEMAND.value,
                OfferRow.price_per_hour.is_not(None),
            )
            .order_by(OfferRow.zone, OfferRow.id)
        ).all()
        same_zone = [o for o in offers if o.zone == row.zone]
        pick = next(iter(same_zone or offers), None)
        cache[key] = None if pick is None else pick.price_per_hour
    return cache[key]


def _baseline_ratios(session: Session, allocation_ids: Iterable[int]) -> dict[int, Decimal]:
    """allocation id -> per-job-cheapest cost / the job's estimated cost in that plan.

    The job's estimate is the sum over all its allocations of the plan (a serving job
    spans several pools), so each allocation's share of the baseline is in proportion.
    """
    ids = sorted(set(allocation_ids))
    ratios: dict[int, Decimal] = {}
    for chunk_start in range(0, len(ids), 500):
        chunk = ids[chunk_start : chunk_start + 500]
        rows = session.execute(
            select(AllocationRow.id, AllocationRow.job_id, AllocationRow.plan_id, PlanRow.detail)
            .join(PlanRow, AllocationRow.plan_id == PlanRow.id)
            .where(AllocationRow.id.in_(chunk))
        ).all()
        plan_ids = sorted({plan_id for _, _, plan_id, _ in rows})
        job_estimates = {
            (plan_id, job_id): money(total)
            for plan_id, job_id, total in session.execute(
                select(
                    AllocationRow.plan_id, AllocationRow.job_id, func.sum(AllocationRow.est_cost)
                )
                .where(AllocationRow.plan_id.in_(plan_ids))
                .group_by(AllocationRow.plan_id, AllocationRow.job_id)
            )
        }
        for alloc_id, job_id, plan_id, detail in rows:
            baseline = ((detail or {}).get(BASELINE_KEY) or {}).get(str(job_id))
            estimate = job_estimates.get((plan_id, job_id))
            if baseline is None or not estimate:
                continue
            ratios[alloc_id] = money(baseline) / estimate
    return ratios


def window_slices(session: Session, start: datetime, end: datetime) -> list[Slice]:
    """Every usage row that overlaps ``[start, end)``, clipped and pro-rated, in a fixed order."""
    start, end = as_utc(start), as_utc(end)
    rows = session.execute(
        select(UsageRow, InstanceRow.allocation_id)
        .join(InstanceRow, UsageRow.instance_id == InstanceRow.id)
        .where(UsageRow.start < end, UsageRow.end > start)
        .order_by(UsageRow.start, UsageRow.id)
    ).all()
    ratios = _baseline_ratios(session, (alloc for _, alloc in rows))
    od_cache: dict[_Shape, Decimal | None] = {}
    slices = []
    for row, allocation_id in rows:
        run_hours = hours_between(row.start, row.end)
        lo, hi = max(row.start, start), min(row.end, end)
        hours = hours_between(lo, hi)
        share = hours / run_hours if run_hours else Decimal(1)
        cost = (row.cost * share).quantize(FINE)
        od_price = _on_demand_price(session, row, od_cache)
        if od_price is None:
            on_demand = None
        elif od_price == row.price_per_hour:  # charged the list price: no saving, exactly
            on_demand = cost
        else:
            on_demand = (od_price * hours).quantize(FINE)
        ratio = ratios.get(allocation_id)
        cheapest = None if ratio is None else (cost * ratio).quantize(FINE)
        busy = None
        if row.busy_seconds is not None:
            busy_hours = money(row.busy_seconds) / _SECONDS_PER_HOUR * share
            busy = (busy_hours * row.gpus).quantize(FINE)
        slices.append(
            Slice(
                usage_id=row.id,
                job_id=row.job_id,
                allocation_id=allocation_id,
                team=row.team,
                provider=row.provider,
                region=row.region,
                zone=row.zone,
                instance_type=row.instance_type,
                pricing=row.pricing,
                gpu=row.gpu,
                gpus=row.gpus,
                start=lo,
                end=hi,
                node_hours=hours.quantize(FINE),
                gpu_hours=(hours * row.gpus).quantize(FINE),
                cost=cost,
                on_demand_cost=on_demand,
                cheapest_cost=cheapest,
                busy_gpu_hours=busy,
            )
        )
    return slices


@dataclass(frozen=True)
class JobCost:
    """Actual (metered) against estimated cost of one job, over its whole life."""

    job_id: int
    name: str
    team: str
    state: str
    actual: Decimal
    estimated: Decimal | None  # None: the job was never planned
    gpu_hours: Decimal
    estimated_gpu_hours: Decimal | None

    @property
    def delta(self) -> Decimal | None:
        """Actual minus estimated; positive means the job cost more than planned."""
        return None if self.estimated is None else self.actual - self.estimated


def job_costs(session: Session, job_ids: Iterable[int]) -> dict[int, JobCost]:
    """Actual against estimated per job.

    Estimated is what the plan that first started the job expected: the ``est_cost`` of
    its allocations from the earliest plan that metered any usage (one gang for training,
    the replicas of each area for serving). A run resumed after a preemption is planned
    again for the work left, so adding its estimate would count that work twice; what
    the restarts cost shows as actual above estimated. A job that has not run yet is
    compared with its newest allocation's estimate.
    """
    ids = sorted(set(job_ids))
    result: dict[int, JobCost] = {}
    for chunk_start in range(0, len(ids), 500):
        chunk = ids[chunk_start : chunk_start + 500]
        jobs = session.scalars(select(JobRow).where(JobRow.id.in_(chunk))).all()
        usage = session.execute(
            select(UsageRow.job_id, UsageRow.cost, UsageRow.start, UsageRow.end, UsageRow.gpus)
            .where(UsageRow.job_id.in_(chunk))
            .order_by(UsageRow.id)
        ).all()
        ran = set(
            session.scalars(
                select(InstanceRow.allocation_id)
                .join(UsageRow, UsageRow.instance_id == InstanceRow.id)
                .where(UsageRow.job_id.in_(chunk))
            ).all()
        )
        allocations = session.scalars(
            select(AllocationRow).where(AllocationRow.job_id.in_(chunk)).order_by(AllocationRow.id)
        ).all()
        for job in jobs:
            actual = sum((u.cost for u in usage if u.job_id == job.id), Decimal(0))
            gpu_hours = sum(
                (hours_between(u.start, u.end) * u.gpus for u in usage if u.job_id == job.id),
                Decimal(0),
            )
            mine = [a for a in allocations if a.job_id == job.id]
            started = [a for a in mine if a.id in ran]
            first_plan = min((a.plan_id for a in started), default=None)
            used = [a for a in started if a.plan_id == first_plan] or mine[-1:]
            estimated = sum((a.est_cost for a in used), Decimal(0)) if used else None
            est_gpu_hours = (
                sum((money(a.est_hours) * a.nodes * a.gpus_per_node for a in used), Decimal(0))
                if used
                else None
            )
            result[job.id] = JobCost(
                job_id=job.id,
                name=job.name,
                team=job.team,
                state=job.state,
                actual=actual,
                estimated=estimated,
                gpu_hours=gpu_hours.quantize(FINE),
                estimated_gpu_hours=None if est_gpu_hours is None else est_gpu_hours.quantize(FINE),
            )
    return result


def metered_cost(
    session: Session,
    *,
    offer_id: int | None,
    price_per_hour: Decimal,
    start: datetime,
    end: datetime,
) -> Decimal:
    """Cost of one node run from ``start`` to ``end``.

    The launch price holds until the offer's first price observation after ``start``;
    each later observation (spot prices move) holds until the next one. With no offer or
    no observations in the run, this is simply price x hours.
    """
    start, end = as_utc(start), as_utc(end)
    changes: list[tuple[datetime, Decimal]] = []
    if offer_id is not None:
        changes = [
            (as_utc(at), price)
            for at, price in session.execute(
                select(PriceObservationRow.observed_at, PriceObservationRow.price)
                .where(
                    PriceObservationRow.offer_id == offer_id,
                    PriceObservationRow.observed_at > start,
                    PriceObservationRow.observed_at < end,
                )
                .order_by(PriceObservationRow.observed_at, PriceObservationRow.id)
            ).all()
        ]
    total = Decimal(0)
    at, price = start, price_per_hour
    for changed_at, new_price in changes:
        total += price * hours_between(at, changed_at)
        at, price = changed_at, new_price
    total += price * hours_between(at, end)
    return total.quantize(FINE)
