"""Jobs: submission, listing, state changes under optimistic locking, and the event log.

Every state change goes through :func:`transition`, which checks
``broker.domain.JOB_TRANSITIONS`` and lets the row's version column catch a concurrent
writer; a lost race surfaces as ``StaleWrite``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from broker.db.engine import Database
from broker.db.models import JobEventRow, JobRow
from broker.domain import JobState, can_transition, utcnow
from broker.errors import ConflictError, NotFound, StaleWrite

if TYPE_CHECKING:
    from broker.config import Settings
    from workloads.spec import JobSpec


@dataclass(frozen=True)
class JobView:
    id: int
    name: str
    kind: str
    team: str
    priority: int
    state: JobState
    attempts: int
    message: str | None
    deadline: datetime | None
    budget: Decimal | None
    created_at: datetime
    updated_at: datetime
    spec: dict[str, Any]

    def as_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "team": self.team,
            "priority": self.priority,
            "state": self.state.value,
            "attempts": self.attempts,
            "message": self.message,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class EventView:
    id: int
    job_id: int
    ts: datetime
    kind: str
    payload: dict[str, Any]


def view(row: JobRow) -> JobView:
    return JobView(
        id=row.id,
        name=row.name,
        kind=row.kind,
        team=row.team,
        priority=row.priority,
        state=JobState(row.state),
        attempts=row.attempts,
        message=row.message,
        deadline=row.deadline,
        budget=row.budget,
        created_at=row.created_at,
        updated_at=row.updated_at,
        spec=dict(row.spec),
    )


@contextmanager
def guarded(db: Database) -> Iterator[Session]:
    """A transaction whose lost optimistic-lock race is raised as ``StaleWrite``."""
    try:
        with db.session() as session:
            yield session
    except StaleDataError:
        raise StaleWrite("the job or allocation changed under us; reload and retry") from None


def prepare(spec: JobSpec, settings: Settings, *, base: Path | None = None) -> JobSpec:
    """Check what a spec names outside itself (workdir, ``train:`` target, storage URI)
    before it is stored; the workdir becomes an absolute path (relative ones are taken
    from ``base``, the spec file's folder, else the current directory)."""
    from workloads import code, storage

    if spec.kind == "training" and spec.storage is not None:
        storage.parse(spec.storage)
    workdir = None
    if spec.workdir is not None:
        limit = int(settings.workdir_max_mib * 2**20)
        workdir = code.resolve_workdir(spec.workdir, limit, base=base)
    field, target = ("train", spec.train) if spec.kind == "training" else ("serve", spec.serve)
    if target is not None:
        code.check_train_target(target, workdir, field)
    return spec.model_copy(update={"workdir": workdir}) if workdir else spec


def submit(db: Database, spec: JobSpec) -> JobView:
    """Store ``spec`` as a PENDING job."""
    from workloads.spec import spec_to_dict

    with db.session() as session:
        row = JobRow(
            name=spec.name,
            kind=spec.kind,
            spec=spec_to_dict(spec),
            team=spec.team,
            priority=spec.priority,
            state=JobState.PENDING.value,
            deadline=spec.deadline,
            budget=spec.budget,
        )
        session.add(row)
        session.flush()
        record_event(session, row.id, "state", {"state": JobState.PENDING.value})
        return view(row)


def load_row(session: Session, job_id: int) -> JobRow:
    if not -(2**63) <= job_id < 2**63:  # past any database integer: no such job
        raise NotFound(f"job {job_id} does not exist")
    row = session.get(JobRow, job_id)
    if row is None:
        raise NotFound(f"job {job_id} does not exist")
    return row


def get(db: Database, job_id: int) -> JobView:
    with db.session() as session:
        return view(load_row(session, job_id))


def list_jobs(db: Database, states: Sequence[JobState | str] | None = None) -> list[JobView]:
    with db.session() as session:
        query = select(JobRow).order_by(JobRow.id)
        if states:
            query = query.where(JobRow.state.in_([JobState(s).value for s in states]))
        return [view(row) for row in session.scalars(query)]


def transition(
    session: Session,
    row: JobRow,
    new: JobState,
    message: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Move ``row`` to ``new`` (checked against JOB_TRANSITIONS) and log the change, with
    ``detail`` (e.g. the plan and pool) added to the event's payload."""
    old = JobState(row.state)
    if old == new:
        return
    if not can_transition(old, new):
        raise ConflictError(f"job {row.id}: cannot go from {old.value} to {new.value}")
    row.state = new.value
    row.updated_at = utcnow()
    if message is not None:
        row.message = message
    payload: dict[str, Any] = {"state": new.value, "from": old.value}
    if message:
        payload["message"] = message
    record_event(session, row.id, "state", {**payload, **(detail or {})})


def record_event(session: Session, job_id: int, kind: str, payload: dict[str, Any]) -> None:
    session.add(JobEventRow(job_id=job_id, ts=utcnow(), kind=kind, payload=payload))


def events(db: Database, job_id: int, after_id: int = 0) -> list[EventView]:
    with db.session() as session:
        load_row(session, job_id)
        rows = session.scalars(
            select(JobEventRow)
            .where(JobEventRow.job_id == job_id, JobEventRow.id > after_id)
            .order_by(JobEventRow.id)
        )
        return [EventView(r.id, r.job_id, r.ts, r.kind, dict(r.payload)) for r in rows]
