"""Team budgets: what a team may still spend in the current period.

Spent money is the metered ledger (``usage``) inside the period plus the estimated cost of
the team's live allocations, which are committed but not yet metered. The scheduler
treats what is left as a hard constraint and execution refuses a launch past it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.db.engine import Database
from broker.db.models import AllocationRow, BudgetRow, JobRow, UsageRow
from broker.db.queries import committed_estimates, live_allocation
from broker.domain import MICRO, as_utc, money, utcnow
from broker.errors import NotFound, UserError

PERIODS = ("month", "week")
MAX_BUDGET = Decimal(10) ** 12  # what Numeric(18, 6) holds with room to add spend to it


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
    return Decimal(str(metered)) + committed_estimates(session, team)


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


# --- setting and listing budgets --------------------------------------------------------


def period_end(period: str, at: datetime) -> datetime:
    """End (exclusive, UTC) of the budget period that contains ``at``."""
    start = period_start(period, at)
    if period == "week":
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class BudgetView:
    """A team's budget in the period containing ``at``; ``spent`` includes live estimates."""

    team: str
    amount: Decimal
    period: str
    period_start: datetime
    period_end: datetime
    spent: Decimal
    remaining: Decimal


def _validate(team: str, amount: object, period: str) -> tuple[str, Decimal, str]:
    team = team.strip()
    if not team or len(team) > 64:
        raise UserError("team: must be 1 to 64 characters")
    if isinstance(amount, str) and not amount.isascii():
        raise UserError("amount: must be a number of US dollars, e.g. 5000 or 1250.50")
    try:
        value = money(amount)
    except (InvalidOperation, ValueError):
        raise UserError("amount: must be a number of US dollars, e.g. 5000 or 1250.50") from None
    if not value.is_finite() or not 0 <= value <= MAX_BUDGET:
        raise UserError(f"amount: must be a number of US dollars from 0 to {MAX_BUDGET:,}")
    if period not in PERIODS:
        raise UserError(f"period: must be one of {', '.join(PERIODS)}")
    return team, value.quantize(MICRO), period


def _view(session: Session, row: BudgetRow, at: datetime) -> BudgetView:
    used = spent(session, row.team, period_start(row.period, at))
    return BudgetView(
        team=row.team,
        amount=row.amount,
        period=row.period,
        period_start=period_start(row.period, at),
        period_end=period_end(row.period, at),
        spent=used,
        remaining=max(row.amount - used, Decimal(0)),
    )


def set_budget(
    db: Database, team: str, amount: object, period: str, *, at: datetime | None = None
) -> BudgetView:
    """Create or replace ``team``'s budget of ``amount`` dollars per ``period``."""
    team, value, period = _validate(team, amount, period)
    with db.session() as session:
        row = session.scalar(select(BudgetRow).where(BudgetRow.team == team))
        if row is None:
            row = BudgetRow(team=team, amount=value, period=period)
            session.add(row)
        else:
            row.amount, row.period = value, period
        session.flush()
        return _view(session, row, at or utcnow())


def list_budgets(db: Database, *, at: datetime | None = None) -> list[BudgetView]:
    """Every team's budget with what it has spent and has left, ordered by team."""
    with db.session() as session:
        rows = session.scalars(select(BudgetRow).order_by(BudgetRow.team)).all()
        return [_view(session, row, at or utcnow()) for row in rows]


def remove_budget(db: Database, team: str) -> None:
    with db.session() as session:
        row = session.scalar(select(BudgetRow).where(BudgetRow.team == team))
        if row is None:
            raise NotFound(f"team {team!r} has no budget")
        session.delete(row)


# --- budgets while running ----------------------------------------------------------------


def running_cost(
    price_per_hour: Decimal, launched_at: datetime, since: datetime, now: datetime
) -> Decimal:
    """What one running node has cost inside the period that began at ``since``."""
    start = max(as_utc(launched_at), as_utc(since))
    seconds = max((as_utc(now) - start).total_seconds(), 0.0)
    return price_per_hour * Decimal(str(seconds)) / 3600


def crossed(amount: Decimal, metered: Decimal, running: Iterable[Decimal]) -> Decimal | None:
    """The team's spend when metered plus running spend has reached its budget, else None.

    Checked at every metering tick, this stops a team's runs at most one tick's spend past
    its budget. Estimates are not counted: a run is stopped for money spent, not planned.
    """
    spend = metered + sum(running, Decimal(0))
    return spend if spend >= amount else None


def enforce_running(session: Session, job: JobRow, now: datetime | None = None) -> bool:
    """Stop ``job`` (CANCELLED, with the reason) when its team has spent its budget.

    Every run of the team sees the same totals at its own next tick, so all of them stop.
    Returns whether the job was stopped now.
    """
    from broker.db.models import InstanceRow
    from broker.domain import JobState
    from broker.services.jobs.store import record_event, transition

    if JobState(job.state).terminal:
        return False
    budget = session.scalar(select(BudgetRow).where(BudgetRow.team == job.team))
    if budget is None:
        return False
    now = as_utc(now or utcnow())
    since = period_start(budget.period, now)
    metered = session.scalar(
        select(func.coalesce(func.sum(UsageRow.cost), 0)).where(
            UsageRow.team == job.team, UsageRow.start >= since
        )
    )
    nodes = session.execute(
        select(InstanceRow.price_per_hour, InstanceRow.launched_at)
        .join(AllocationRow, InstanceRow.allocation_id == AllocationRow.id)
        .join(JobRow, AllocationRow.job_id == JobRow.id)
        .where(
            JobRow.team == job.team,
            live_allocation(),
            InstanceRow.launched_at.is_not(None),
            InstanceRow.terminated_at.is_(None),
        )
    ).all()
    running = [running_cost(Decimal(p or 0), at, since, now) for p, at in nodes if at is not None]
    spend = crossed(budget.amount, Decimal(str(metered)), running)
    if spend is None:
        return False
    reason = (
        f"team {job.team} reached its {budget.period} budget: spent {spend:.2f} of "
        f"{budget.amount:.2f} USD while running"
    )
    record_event(
        session,
        job.id,
        "budget_stop",
        {
            "team": job.team,
            "spent": str(money(spend).quantize(MICRO)),
            "budget": str(budget.amount),
        },
    )
    transition(session, job, JobState.CANCELLED, reason)
    return True
