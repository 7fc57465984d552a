"""Cancelling a job: its state first, then whatever it holds is released."""

from __future__ import annotations

from broker.config import Settings
from broker.db.engine import Database
from broker.domain import JobState
from broker.errors import ConflictError
from broker.services.execution.release import release_job
from broker.services.jobs.store import JobView, get, guarded, load_row, transition, view

CANCEL_GRACE_S = 45.0  # how long a running executor gets to stop (and drain) on its own


def cancel(db: Database, settings: Settings, job_id: int) -> JobView:
    """Cancel a job in any non-final state and release whatever it holds.

    An executor running the job notices the state at its next check and stops (a serving
    run drains); the release here waits for it up to ``CANCEL_GRACE_S`` and is idempotent
    with the executor's own teardown, so whichever comes first leaves nothing running.
    """
    with guarded(db) as session:
        row = load_row(session, job_id)
        state = JobState(row.state)
        if state.terminal:
            if state is JobState.CANCELLED:
                return view(row)
            raise ConflictError(f"job {job_id} already ended ({state.value}); nothing to cancel")
        transition(session, row, JobState.CANCELLED, "cancelled by user")
    release_job(db, settings, job_id, reason="cancelled", grace_s=CANCEL_GRACE_S)
    return get(db, job_id)
