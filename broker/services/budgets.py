"""Team budgets: what a team may still spend in the current period.

Spent money is the metered ledger (``usage``) inside the period plus the estimated cost of
the team's live allocations, which are committed but not yet metered. The scheduler
treats what is left as a hard constraint and execution refuses a launch past it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.db.engine import Database
from broker.db.models import AllocationRow, BudgetRow, JobRow, UsageRow
from broker.domain import AllocationState, as_utc

PERIODS = ("month", "week")


def period_start(period: str, at: datetime) -> datetime:
    """Start (UTC) of the calendar month, or the ISO week (Monday), that contains ``at``."""
    at = as_utc(at)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return day.replace(day=1)
    if period == "week":
        return day - timedelta(days=day.weekday())
    raise ValueError(f"period must be one of {', '.join(PERIODS)}")


def spent(session: Session, team: str, since: datetime) -> Decimal:
    """Metered spend of ``team`` since ``since`` plus its live allocations' estimates."""
    metered = session.scalar(
        select(func.coalesce(func.sum(UsageRow.cost), 0)).where(
            UsageRow.team == team, UsageRow.start >= since
        )
    )
    live_states = [state.value for state in AllocationState if state.live]
    committed = session.scalar(
        select(func.coalesce(func.sum(AllocationRow.est_cost), 0))
        .join(JobRow, AllocationRow.job_id == JobRow.id)
        .where(JobRow.team == team, AllocationRow.state.in_(live_states))
    )
    return Decimal(str(metered)) + Decimal(str(committed))


def remaining_in(session: Session, team: str, at: datetime) -> Decimal | None:
    """What ``team`` may still spend at ``at``; None when it has no budget."""
    budget = session.scalar(select(BudgetRow).where(BudgetRow.team == team))
    if budget is None:
        return None
    left = budget.amount - spent(session, team, period_start(budget.period, at))
    return max(left, Decimal(0))


def remaining(db: Database, team: str, at: datetime) -> Decimal | None:
    with db.session() as session:
        return remaining_in(session, team, at)
