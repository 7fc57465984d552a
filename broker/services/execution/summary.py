"""What a job produced and cost, from its events and the usage ledger."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select

from broker.config import Settings
from broker.db.engine import Database
from broker.db.models import UsageRow
from broker.domain import as_utc
from broker.services.execution.run_specs import newest_checkpoint
from broker.services.jobs import store as jobs_service


def usage_cost(db: Database, job_id: int) -> Decimal:
    """What the ledger has charged ``job_id`` so far."""
    from sqlalchemy import func

    with db.session() as session:
        total = session.scalar(
            select(func.coalesce(func.sum(UsageRow.cost), 0)).where(UsageRow.job_id == job_id)
        )
    return Decimal(str(total))


@dataclass(frozen=True)
class JobSummary:
    """What a finished (or running) job produced and cost, from its events and the ledger."""

    job_id: int
    state: str
    step: int | None
    steps: int | None
    first_loss: float | None
    last_loss: float | None
    tokens_per_s: float | None
    checkpoint: str | None
    cost: Decimal
    node_hours: float
    usage_rows: int
    message: str | None


def job_summary(db: Database, settings: Settings, job_id: int) -> JobSummary:
    view = jobs_service.get(db, job_id)
    progress = [e.payload for e in jobs_service.events(db, job_id) if e.kind == "progress"]
    with db.session() as session:
        rows = list(session.scalars(select(UsageRow).where(UsageRow.job_id == job_id)))
    found = newest_checkpoint(settings, job_id, view.spec)
    checkpoint = found.removeprefix("file://") if found else None  # a local folder: its path
    last = progress[-1] if progress else {}
    return JobSummary(
        job_id=job_id,
        state=view.state.value,
        step=last.get("step"),
        steps=last.get("steps"),
        first_loss=progress[0].get("loss") if progress else None,
        last_loss=last.get("loss"),
        tokens_per_s=last.get("tokens_per_s"),
        checkpoint=checkpoint,
        cost=sum((r.cost for r in rows), Decimal(0)),
        node_hours=sum((as_utc(r.end) - as_utc(r.start)).total_seconds() for r in rows) / 3600,
        usage_rows=len(rows),
        message=view.message,
    )
