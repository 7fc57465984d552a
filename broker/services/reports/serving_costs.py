"""What serving cost: a serving job's ledger cost in a window beside the traffic its
endpoints counted."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.db.models import EndpointRow, JobRow, UsageRow
from broker.domain import JobKind


@dataclass(frozen=True)
class ServingCost:
    """A serving job's ledger cost in a window beside the traffic its endpoints counted."""

    job_id: int
    name: str
    cost: Decimal
    requests: int
    tokens: int

    @property
    def per_thousand_requests(self) -> Decimal | None:
        return _per(self.cost * 1000, self.requests)

    @property
    def per_million_tokens(self) -> Decimal | None:
        return _per(self.cost * 10**6, self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "name": self.name,
            "cost": self.cost,
            "requests": self.requests,
            "tokens": self.tokens,
            "cost_per_1k_requests": self.per_thousand_requests,
            "cost_per_1m_tokens": self.per_million_tokens,
        }


def _per(amount: Decimal, count: int) -> Decimal | None:
    return (amount / count).quantize(Decimal("0.000001")) if count else None


def serving_costs(session: Session, start: datetime, end: datetime) -> list[ServingCost]:
    """Serving jobs with ledger cost in [start, end): cost per 1,000 requests and per
    million generated tokens, over the traffic their endpoints counted."""
    costs = dict(
        session.execute(
            select(UsageRow.job_id, func.sum(UsageRow.cost))
            .join(JobRow, JobRow.id == UsageRow.job_id)
            .where(
                JobRow.kind == JobKind.INFERENCE.value,
                UsageRow.start < end,
                UsageRow.end > start,
            )
            .group_by(UsageRow.job_id)
        ).all()
    )
    out = []
    for job_id in sorted(costs):
        job = session.get(JobRow, job_id)
        traffic = session.execute(
            select(
                func.coalesce(func.sum(EndpointRow.requests), 0),
                func.coalesce(func.sum(EndpointRow.tokens), 0),
            ).where(EndpointRow.job_id == job_id)
        ).one()
        out.append(
            ServingCost(
                job_id=job_id,
                name=job.name if job is not None else "",
                cost=Decimal(str(costs[job_id])),
                requests=int(traffic[0]),
                tokens=int(traffic[1]),
            )
        )
    return out
