"""Whole jobs: plan and run a job to its end, run every pending one, follow another's run."""

from __future__ import annotations

import contextlib
import threading
import time

from sqlalchemy import select

from broker.config import Settings
from broker.db import leases
from broker.db.engine import Database
from broker.db.models import AllocationRow
from broker.db.queries import live_allocation_ids
from broker.domain import AllocationState, JobKind, JobState
from broker.errors import ConflictError, Infeasible
from broker.services.execution.cancel import CANCEL_GRACE_S, cancel
from broker.services.execution.executor import run_allocation
from broker.services.execution.provision import load_allocation
from broker.services.execution.run_context import (
    POLL_S,
    Progress,
    ProgressFn,
    lease_holder,
    lease_name,
)
from broker.services.execution.runners import Runner
from broker.services.jobs import store as jobs_service


def schedule_job(db: Database, settings: Settings, job_id: int) -> list[int]:
    """Plan ``job_id`` now; its new allocation ids, or Infeasible with the reason."""
    from broker.services.planning.schedule import schedule

    result = schedule(db, settings, job_ids=[job_id])
    if job_id in result.unplaced:
        raise Infeasible([f"job {job_id}: {result.unplaced[job_id]}"])
    return list(result.allocation_ids)


def run_job(
    db: Database,
    settings: Settings,
    job_id: int,
    *,
    progress: ProgressFn | None = None,
    runner: Runner | None = None,
    max_rounds: int | None = None,
) -> JobState:
    """Plan and run ``job_id`` until it ends, re-planning after capacity loss."""
    rounds = max_rounds or 2 + int(jobs_service.get(db, job_id).spec.get("max_failures", 3))
    state = JobState(jobs_service.get(db, job_id).state)
    for _ in range(rounds):
        if state.terminal:
            return state
        if state is JobState.PENDING:
            allocation_ids = schedule_job(db, settings, job_id)
        else:
            with db.session() as session:
                allocation_ids = live_allocation_ids(session, job_id)
        try:
            state = _run_allocations(db, settings, job_id, allocation_ids, progress, runner)
        except ConflictError as exc:
            holders = {leases.holder_of(db, lease_name(i)) for i in allocation_ids}
            if holders <= {None, lease_holder()}:
                raise exc
            return attach(db, job_id, progress)  # a daemon runs it: follow it to its end
    return state


def _run_allocations(
    db: Database,
    settings: Settings,
    job_id: int,
    allocation_ids: list[int],
    progress: ProgressFn | None,
    runner: Runner | None,
) -> JobState:
    """Run a job's allocations: one after another (a training gang has one), or, for a
    serving job, all at once (each area's endpoint runs until the job is cancelled)."""
    if len(allocation_ids) < 2 or jobs_service.get(db, job_id).kind != JobKind.INFERENCE:
        state = JobState(jobs_service.get(db, job_id).state)
        for allocation_id in allocation_ids:
            state = run_allocation(db, settings, allocation_id, progress=progress, runner=runner)
        return state
    errors: list[BaseException] = []

    def one(allocation_id: int) -> None:
        try:
            run_allocation(db, settings, allocation_id, progress=progress, runner=runner)
        except BaseException as exc:  # raised below, in the caller's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=one, args=(i,), name=f"alloc-{i}", daemon=True)
        for i in allocation_ids
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:  # only this thread hears it: stop every area, then go
        with contextlib.suppress(ConflictError):  # unless the job already ended
            cancel(db, settings, job_id)
        for thread in threads:
            thread.join(timeout=CANCEL_GRACE_S)
        raise
    if errors:
        raise errors[0]
    return JobState(jobs_service.get(db, job_id).state)


def attach(db: Database, job_id: int, progress: ProgressFn | None = None) -> JobState:
    """Follow a job another executor runs until it ends, passing its progress on."""
    after = 0
    while True:
        state = JobState(jobs_service.get(db, job_id).state)
        for event in jobs_service.events(db, job_id, after):
            after = event.id
            record = event.payload
            if progress is not None and event.kind == "progress":
                progress(
                    Progress(
                        job_id=job_id,
                        state=state.value,
                        step=record.get("step"),
                        steps=record.get("steps"),
                        loss=record.get("loss"),
                        tokens_per_s=record.get("tokens_per_s"),
                    )
                )
        if state.terminal:
            return state
        time.sleep(POLL_S * 2)


def run_pending(
    db: Database,
    settings: Settings,
    *,
    progress: ProgressFn | None = None,
    runner: Runner | None = None,
) -> list[int]:
    """Schedule every PENDING job and run the PLANNED allocations; the job ids run."""
    from broker.services.planning.schedule import schedule

    schedule(db, settings)
    with db.session() as session:
        ids = list(
            session.scalars(
                select(AllocationRow.id)
                .where(AllocationRow.state == AllocationState.PLANNED.value)
                .order_by(AllocationRow.id)
            )
        )
        # An inference job holds one allocation per pool of its replica mix.
        by_job: dict[int, list[int]] = {}
        for allocation_id in ids:
            by_job.setdefault(load_allocation(session, allocation_id).job_id, []).append(
                allocation_id
            )
    for job_id, allocation_ids in by_job.items():
        _run_allocations(db, settings, job_id, allocation_ids, progress, runner)
    return list(by_job)
