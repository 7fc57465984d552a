"""Endpoints of serving jobs: one per serving allocation, with its area, replicas and traffic.

A serving allocation's run reports ``serving`` events (the Serve application's state, its
running replicas, and the requests, generated tokens and errors counted since it started);
:func:`record` folds each into the allocation's endpoint row. The highest request rate
measured over a report interval is kept, and :func:`measured_rates` gives the planner the
job's total when it exceeds the spec's figure. :func:`resolve_model_from` fills a serving
spec's ``model`` from the training job its ``model_from`` names, at submit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.db.engine import Database
from broker.db.models import AllocationRow, EndpointRow, JobRow
from broker.domain import EndpointState, JobKind, JobState, as_utc, utcnow
from broker.errors import NotFound, SpecError

# Serve's application states, and what the endpoint is while the run reports them.
_READY_STATES = {"RUNNING"}
_STARTING_STATES = {"NOT_STARTED", "DEPLOYING"}
MIN_RATE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class EndpointView:
    job_id: int
    area: str
    url: str | None
    replicas: int
    state: str
    min_replicas: int
    max_replicas: int
    requests: int
    tokens: int
    errors: int
    request_rate: float | None
    allocation_id: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def replica_bounds(session: Session, alloc: AllocationRow, min_replicas: int) -> tuple[int, int]:
    """(min, max) replicas of ``alloc``: at most what its nodes hold, at least its share of
    the job's ``min_replicas`` (by replicas planned), and at least one."""
    most = max(1, alloc.replicas or alloc.nodes)
    total = session.scalar(
        select(func.coalesce(func.sum(AllocationRow.replicas), 0)).where(
            AllocationRow.plan_id == alloc.plan_id, AllocationRow.job_id == alloc.job_id
        )
    )
    share = most / total if total else 1.0
    return min(most, max(1, math.ceil(min_replicas * share))), most


def open_endpoint(db: Database, allocation_id: int, url: str, min_replicas: int) -> tuple[int, int]:
    """The allocation's endpoint row, STARTING at ``url``; returns its replica bounds."""
    with db.session() as session:
        alloc = session.get(AllocationRow, allocation_id)
        if alloc is None:
            raise NotFound(f"allocation {allocation_id} does not exist")
        low, high = replica_bounds(session, alloc, min_replicas)
        row = session.scalar(select(EndpointRow).where(EndpointRow.allocation_id == alloc.id))
        if row is None:
            row = EndpointRow(
                job_id=alloc.job_id,
                allocation_id=alloc.id,
                area=alloc.area or "anywhere",
                replicas=0,
                requests=0,
                tokens=0,
                errors=0,
            )
            session.add(row)
        row.url, row.state = url, EndpointState.STARTING.value
        row.min_replicas, row.max_replicas = low, high
        return low, high


def record(session: Session, allocation_id: int, report: dict[str, Any]) -> str | None:
    """Fold one ``serving`` report into the endpoint; the new state when it changed."""
    row = session.scalar(select(EndpointRow).where(EndpointRow.allocation_id == allocation_id))
    if row is None:
        return None
    now = utcnow()
    requests = _count(report.get("requests"), row.requests)
    elapsed = (now - as_utc(row.updated_at)).total_seconds() if row.updated_at else 0.0
    if elapsed >= MIN_RATE_INTERVAL_S and requests >= row.requests:
        rate = (requests - row.requests) / elapsed
        row.request_rate = max(row.request_rate or 0.0, round(rate, 4))
    row.requests = requests
    row.tokens = _count(report.get("tokens"), row.tokens)
    row.errors = _count(report.get("errors"), row.errors)
    row.replicas = _count(report.get("replicas"), row.replicas)
    row.updated_at = now
    before = row.state
    row.state = _state(str(report.get("state", "")), row).value
    return row.state if row.state != before else None


def _count(value: Any, default: int) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else default


def _state(app_state: str, row: EndpointRow) -> EndpointState:
    if app_state in ("DELETING", "DELETED"):
        return EndpointState.STOPPED
    if app_state in _READY_STATES:
        return EndpointState.READY if row.replicas >= row.min_replicas else EndpointState.DEGRADED
    if app_state in _STARTING_STATES and row.state == EndpointState.STARTING.value:
        return EndpointState.STARTING
    return EndpointState.DEGRADED


def close(db: Database, allocation_id: int, state: EndpointState) -> None:
    """The endpoint of a torn-down allocation: no replicas, ``state`` (STOPPED or LOST)."""
    with db.session() as session:
        row = session.scalar(select(EndpointRow).where(EndpointRow.allocation_id == allocation_id))
        if row is not None and row.state not in (EndpointState.STOPPED, EndpointState.LOST):
            row.state, row.replicas = state.value, 0


def endpoints(db: Database, job_id: int | None = None, *, live: bool = False) -> list[EndpointView]:
    """Endpoints by job and allocation; ``live``: only those not stopped or lost."""
    query = select(EndpointRow).order_by(EndpointRow.job_id, EndpointRow.allocation_id)
    if job_id is not None:
        query = query.where(EndpointRow.job_id == job_id)
    if live:
        gone = [EndpointState.STOPPED.value, EndpointState.LOST.value]
        query = query.where(EndpointRow.state.not_in(gone))
    with db.session() as session:
        return [
            EndpointView(
                job_id=row.job_id,
                area=row.area,
                url=row.url,
                replicas=row.replicas,
                state=row.state,
                min_replicas=row.min_replicas,
                max_replicas=row.max_replicas,
                requests=row.requests,
                tokens=row.tokens,
                errors=row.errors,
                request_rate=row.request_rate,
                allocation_id=row.allocation_id,
            )
            for row in session.scalars(query)
        ]


def resolve_model_from(db: Database, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with ``model`` filled from the training job ``model_from`` names.

    The job must exist, train the bundled GPT and have finished; a spec that also gives
    ``model`` must give that job's shape.
    """
    source = spec.get("model_from")
    if not source:
        return spec
    job_id = int(str(source).removeprefix("job:"))
    with db.session() as session:
        job = session.get(JobRow, job_id)
        if job is None:
            raise SpecError("model_from", f"job {job_id} does not exist")
        if job.kind != JobKind.TRAINING.value or not job.spec.get("model"):
            raise SpecError("model_from", f"job {job_id} does not train the bundled GPT")
        if job.state != JobState.SUCCEEDED.value:
            raise SpecError("model_from", f"job {job_id} has not finished ({job.state})")
        model = dict(job.spec["model"])
    given = spec.get("model")
    if given is not None and given != model:
        raise SpecError("model", f"must be job {job_id}'s model or left out with model_from")
    return {**spec, "model": model}
