"""Queries several services share, so each rule is written once."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import ColumnElement, CursorResult, Delete, Update, and_, func, select
from sqlalchemy.orm import Session

from broker.db.models import AllocationRow, JobRow, OfferRow
from broker.domain import AllocationState

# Allocations that hold nodes, or are about to: they count against capacity and budgets.
LIVE_ALLOCATION_STATES = tuple(state.value for state in AllocationState if state.live)


def rows_matched(session: Session, statement: Update | Delete) -> int:
    """Run an UPDATE or DELETE; the number of rows it matched."""
    result = session.execute(statement)
    # Session.execute is typed to return a Result; for these statements it is a CursorResult.
    if not isinstance(result, CursorResult):
        raise TypeError(f"{type(result).__name__} from an UPDATE or DELETE has no rowcount")
    return result.rowcount


# one pool per (provider, region, zone, instance type, pricing), always read in this order
POOL_ORDER = (
    OfferRow.provider,
    OfferRow.region,
    OfferRow.zone,
    OfferRow.instance_type,
    OfferRow.pricing,
)


def plannable_offer() -> ColumnElement[bool]:
    """The offers the planner places on: fresh and priced. The simulator reads its supply
    with the same condition, so a replay offers what a plan would see."""
    return and_(OfferRow.stale.is_(False), OfferRow.price_per_hour.is_not(None))


def live_allocation() -> ColumnElement[bool]:
    """The condition an ``AllocationRow`` query filters live allocations by."""
    return AllocationRow.state.in_(LIVE_ALLOCATION_STATES)


def live_allocation_ids(session: Session, job_id: int) -> list[int]:
    """The live allocations of ``job_id``, oldest first."""
    query = (
        select(AllocationRow.id)
        .where(AllocationRow.job_id == job_id, live_allocation())
        .order_by(AllocationRow.id)
    )
    return list(session.scalars(query))


def committed_estimates(session: Session, team: str) -> Decimal:
    """The planned cost of ``team``'s live allocations: spend the ledger has not seen yet."""
    total = session.scalar(
        select(func.coalesce(func.sum(AllocationRow.est_cost), 0))
        .join(JobRow, AllocationRow.job_id == JobRow.id)
        .where(JobRow.team == team, live_allocation())
    )
    return Decimal(str(total))
