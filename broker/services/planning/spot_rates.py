"""How often spot nodes are reclaimed, as this installation's ledger has seen it.

The planner prices a spot candidate's expected restarts (and drops those that would then
miss their deadline) with a reclaim rate per node-hour; a gang of n nodes is stopped at n
times that rate, since losing any node stops it. The rate used is the one measured over
the last ``WINDOW_DAYS``: spot runs stopped by a reclaim, over the spot node-hours the
usage ledger metered (under that model each node-hour carries the same chance of a stop,
whatever the size of its gang), blended with a prior of ``PRIOR_NODE_HOURS`` at the
scheduler's default rate so a young ledger does not swing on its first reclaim. A run
counts as reclaimed when it ran (the ledger has its busy time) and its allocation ended
FAILED while its job did not fail on its own code.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.db.models import AllocationRow, InstanceRow, JobRow, UsageRow
from broker.domain import AllocationState, JobState, Pricing, as_utc

WINDOW_DAYS = 14.0
PRIOR_NODE_HOURS = 24.0  # the default rate counts as one node-day of observations


def preemption_rate(session: Session, now: datetime, prior: float) -> float:
    """Reclaims per spot node-hour seen in the window, with ``prior`` as the starting rate."""
    since = now - timedelta(days=WINDOW_DAYS)
    rows = session.execute(
        select(
            UsageRow.start,
            UsageRow.end,
            UsageRow.busy_seconds,
            AllocationRow.id,
            AllocationRow.state,
            JobRow.state,
        )
        .join(InstanceRow, InstanceRow.id == UsageRow.instance_id)
        .join(AllocationRow, AllocationRow.id == InstanceRow.allocation_id)
        .join(JobRow, JobRow.id == AllocationRow.job_id)
        .where(UsageRow.pricing == Pricing.SPOT.value, UsageRow.end > since)
    ).all()
    hours = 0.0
    stopped: set[int] = set()
    for start, end, busy, allocation_id, alloc_state, job_state in rows:
        hours += max((as_utc(end) - max(as_utc(start), since)).total_seconds(), 0.0) / 3600.0
        if (
            busy is not None
            and alloc_state == AllocationState.FAILED.value
            and job_state != JobState.FAILED.value
        ):
            stopped.add(allocation_id)
    return (prior * PRIOR_NODE_HOURS + len(stopped)) / (PRIOR_NODE_HOURS + hours)
