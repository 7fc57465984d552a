"""Plan and commit in one transaction (``schedule``): the plan row, PLANNED allocations,
jobs PENDING -> PLANNED.

``schedule`` also records, in ``plans.detail["per_job_cheapest"]``, what each job would
cost on its own cheapest candidate with capacity ignored (the per-job rule the reports
compare spend against), and logs a job event for every job it plans or leaves unplaced.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.db import leases
from broker.db.engine import Database
from broker.db.models import AllocationRow, JobRow, PlanRow
from broker.domain import AllocationState, JobState, money, round_cents
from broker.errors import ConflictError, StaleWrite
from broker.services.jobs.store import guarded as jobs_guarded
from broker.services.jobs.store import record_event, transition
from broker.services.metering import BASELINE_KEY
from broker.services.planning.plan import ScheduleResult, plan_report, prepare, solve_pending


def schedule(
    db: Database,
    settings: Settings,
    *,
    solver: str | None = None,
    time_limit: float | None = None,
    max_provider_share: float | None = None,
    job_ids: Sequence[int] | None = None,
) -> ScheduleResult:
    """Plan and commit in one transaction: PlanRow, PLANNED allocations, jobs -> PLANNED
    (each move logged as a state event), and an ``unplaced`` event for each job left pending
    for a reason other than the one it already shows."""
    name, limit, share, calibrations = prepare(db, settings, solver, time_limit, max_provider_share)
    started = time.perf_counter()
    with _reserving(db) as session:
        problem, result, rows = solve_pending(
            session, settings, name, limit, share, job_ids, calibrations
        )
        report = plan_report(problem, result, name)
        plan_row = PlanRow(
            solver=name,
            status=result.status,
            objective=report.objective,
            lp_bound=report.lp_bound,
            gap=report.gap,
            solve_seconds=result.solve_seconds,
            validated=True,
            detail={
                "unplaced": {str(k): v for k, v in result.unplaced.items()},
                "explain": {str(k): v for k, v in result.explain.items()},
                BASELINE_KEY: _per_job_cheapest(problem),
                "wall_seconds": round(time.perf_counter() - started, 3),
            },
        )
        session.add(plan_row)
        session.flush()
        by_id = {row.id: row for row in rows}
        ids = []
        placed: dict[int, list[tuple[int, str]]] = defaultdict(list)  # job -> (alloc, pool)
        for alloc in report.allocations:
            row = AllocationRow(
                plan_id=plan_row.id,
                job_id=alloc["job"],
                offer_id=alloc["offer_id"],
                provider=alloc["provider"],
                region=alloc["region"],
                zone=alloc["zone"] or "",
                instance_type=alloc["instance_type"],
                pricing=alloc["pricing"],
                gpu=alloc["gpu"],
                gpus_per_node=alloc["gpus"] // max(alloc["nodes"], 1),
                nodes=alloc["nodes"],
                price_at_plan=alloc["price_per_hour"],
                est_hours=alloc["est_hours"],
                est_cost=alloc["est_cost"],
                area=alloc["area"],
                replicas=alloc["replicas"],
                state=AllocationState.PLANNED.value,
            )
            session.add(row)
            session.flush()
            ids.append(row.id)
            pool = "/".join(
                (row.provider, row.region, row.zone or "-", row.instance_type, row.pricing)
            )
            placed[alloc["job"]].append((row.id, pool))
        for job_id, held in sorted(placed.items()):
            job = by_id[job_id]
            if job.state != JobState.PENDING.value:
                raise StaleWrite(f"job {job_id} changed state while it was planned")
            _mark_planned(session, job, plan_row.id, held)
        for job_id, reason in sorted(result.unplaced.items()):
            job, reason = by_id[job_id], reason[:1000]
            if job.message != reason:  # a daemon replans often: log only a new reason
                payload = {"plan_id": plan_row.id, "reason": reason}
                record_event(session, job_id, "unplaced", payload)
            job.message = reason
        return ScheduleResult(
            plan_id=plan_row.id, allocation_ids=ids, unplaced=dict(sorted(result.unplaced.items()))
        )


@contextmanager
def _reserving(db: Database) -> Iterator[Session]:
    """The planner's one transaction: concurrent planners serialise on it, so each reads
    the capacity, quota and budget the one before it committed and never promises them
    twice. A lock not had in time, or a job changed under us, is a ``ConflictError``."""
    try:
        with jobs_guarded(db) as session:
            leases.serialize(session, "planning")
            yield session
    except OperationalError as exc:
        if "lock" not in str(exc):  # SQLite's "database is locked", PostgreSQL's lock timeout
            raise
        raise ConflictError("another planner held the database too long; try again") from None


def _per_job_cheapest(problem: Any) -> dict[str, str]:
    """{job id: estimated cost of its per-job-cheapest choice}, in dollars to the cent (as
    allocations' ``est_cost`` are, so a job planned on that very choice compares equal)."""
    from scheduler.baselines import per_job_cheapest, units_to_plan
    from scheduler.model import build_classes

    classes = build_classes(problem)
    alone = units_to_plan(problem, classes, per_job_cheapest(problem, classes))
    cost: dict[int, float] = defaultdict(float)
    for a in alone.assignments:
        cost[a.job] += float(problem.candidates.cost[a.candidate]) * a.count
    return {str(job): str(round_cents(money(value))) for job, value in sorted(cost.items())}


def _mark_planned(session: Session, job: JobRow, plan_id: int, held: list[tuple[int, str]]) -> None:
    """PENDING -> PLANNED through ``jobs.transition``, whose state event also names the
    plan, the pool and the allocations."""
    detail = {
        "plan_id": plan_id,
        "pool": ", ".join(sorted({pool for _, pool in held})),  # a serving job may span pools
        "allocations": [alloc for alloc, _ in held],
    }
    transition(session, job, JobState.PLANNED, detail=detail)
    job.message = None
