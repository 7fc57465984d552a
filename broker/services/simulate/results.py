"""Figures of a replay, read back from its own database: the ledger and the job events.

Cost and GPU-hours are the usage ledger's (what ``gpubroker report`` reads); preemptions,
queue waits and completion times are the jobs' state events. Means over seeds are taken
per policy.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select

from broker.db.engine import Database
from broker.db.models import JobEventRow, JobRow, UsageRow
from broker.domain import JobState, as_utc, round_cents
from broker.services.metering import hours_between


@dataclass
class RunResult:
    """Where one replay left its ledger, and what the loop itself counted."""

    policy: str
    seed: int
    database: Path
    start: datetime
    end: datetime
    deadlines: dict[int, datetime | None]  # job id -> the deadline its arrival carried
    plans: int
    refused: int
    wall_seconds: float
    budgets: dict[str, tuple[Decimal, str]]  # team -> (amount, period), as the scenario says


@dataclass
class RunFigures:
    """One policy on one seed."""

    policy: str
    seed: int
    database: str
    cost: Decimal
    gpu_hours: float
    jobs: int
    completed: int
    deadline_jobs: int
    deadline_misses: int
    preemptions: int
    mean_wait_hours: float
    p95_wait_hours: float
    provider_shares: dict[str, float]
    budget_overruns: int
    plans: int
    refused_plans: int
    wall_seconds: float
    report_from: str
    report_to: str


def measure(result: RunResult) -> RunFigures:
    db = Database(f"sqlite:///{result.database}")
    try:
        with db.session() as session:
            usage = session.execute(
                select(
                    UsageRow.job_id,
                    UsageRow.team,
                    UsageRow.provider,
                    UsageRow.cost,
                    UsageRow.start,
                    UsageRow.end,
                    UsageRow.gpus,
                ).order_by(UsageRow.id)
            ).all()
            jobs = list(session.scalars(select(JobRow).order_by(JobRow.id)))
            events = session.execute(
                select(JobEventRow.job_id, JobEventRow.ts, JobEventRow.payload)
                .where(JobEventRow.kind == "state")
                .order_by(JobEventRow.id)
            ).all()
    finally:
        db.dispose()
    cost = sum((row.cost for row in usage), Decimal(0))
    gpu_hours = sum(float(hours_between(r.start, r.end)) * r.gpus for r in usage)
    by_provider: dict[str, Decimal] = defaultdict(Decimal)
    by_job: dict[int, Decimal] = defaultdict(Decimal)
    for row in usage:
        by_provider[row.provider] += row.cost
        by_job[row.job_id] += row.cost
    shares = {p: float(c / cost) if cost else 0.0 for p, c in sorted(by_provider.items())}
    preemptions = 0
    first_run: dict[int, datetime] = {}
    succeeded: dict[int, datetime] = {}
    for job_id, ts, payload in events:
        state = payload.get("state")
        if state == JobState.PREEMPTED.value:
            preemptions += 1
        elif state == JobState.RUNNING.value:
            first_run.setdefault(job_id, as_utc(ts))
        elif state == JobState.SUCCEEDED.value:
            succeeded[job_id] = as_utc(ts)
    waits = sorted(
        (first_run[j.id] - as_utc(j.created_at)).total_seconds() / 3600.0
        for j in jobs
        if j.id in first_run
    )
    misses = deadline_jobs = 0
    for job in jobs:
        deadline = result.deadlines.get(job.id)
        if deadline is None:
            continue
        deadline_jobs += 1
        done = succeeded.get(job.id)
        if done is None or done > deadline:
            misses += 1
    overruns = sum(
        1 for j in jobs if j.budget is not None and by_job.get(j.id, Decimal(0)) > j.budget
    )
    overruns += _team_overruns(result.budgets, usage)
    end_day = (result.end + timedelta(days=1)).date()
    return RunFigures(
        policy=result.policy,
        seed=result.seed,
        database=str(result.database),
        cost=round_cents(cost),
        gpu_hours=round(gpu_hours, 3),
        jobs=len(jobs),
        completed=len(succeeded),
        deadline_jobs=deadline_jobs,
        deadline_misses=misses,
        preemptions=preemptions,
        mean_wait_hours=round(sum(waits) / len(waits), 3) if waits else 0.0,
        p95_wait_hours=round(_percentile(waits, 0.95), 3) if waits else 0.0,
        provider_shares={p: round(s, 4) for p, s in shares.items()},
        budget_overruns=overruns,
        plans=result.plans,
        refused_plans=result.refused,
        wall_seconds=round(result.wall_seconds, 2),
        report_from=result.start.date().isoformat(),
        report_to=end_day.isoformat(),
    )


def _team_overruns(budgets: dict[str, tuple[Decimal, str]], usage: Sequence[Any]) -> int:
    """Periods (per team) whose metered spend went past the scenario's team budget, whether
    or not the policy knew of the budget."""
    from broker.services.budgets import period_start

    count = 0
    for team, (amount, period) in sorted(budgets.items()):
        spent: dict[datetime, Decimal] = defaultdict(Decimal)
        for row in usage:
            if row.team == team:
                spent[period_start(period, as_utc(row.start))] += row.cost
        count += sum(1 for value in spent.values() if value > amount)
    return count


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    rank = max(1, math.ceil(q * len(values)))
    return values[rank - 1]


# The figures of a PolicySummary that the table and the HTML page show, in their order.
SUMMARY_FIGURES = (
    "policy",
    "cost",
    "gpu_hours",
    "deadline_misses",
    "preemptions",
    "mean_wait_hours",
    "p95_wait_hours",
    "budget_overruns",
    "completed",
    "jobs",
)


@dataclass
class PolicySummary:
    """Means over the seeds of one policy (``runs`` keeps each seed's figures)."""

    policy: str
    cost: float
    gpu_hours: float
    deadline_misses: float
    deadline_jobs: float
    jobs: float
    completed: float
    preemptions: float
    mean_wait_hours: float
    p95_wait_hours: float
    provider_shares: dict[str, float]
    budget_overruns: float
    refused_plans: float
    seeds: int
    databases: list[str]
    report_window: dict[str, str]
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(figures: list[RunFigures], policies: list[str]) -> list[PolicySummary]:
    out = []
    for policy in policies:
        mine = [f for f in figures if f.policy == policy]
        if not mine:
            continue
        n = len(mine)

        def mean(name: str, runs: list[RunFigures] = mine, n: int = n) -> float:
            return round(sum(float(getattr(f, name)) for f in runs) / n, 4)

        providers = sorted({p for f in mine for p in f.provider_shares})
        shares = {
            p: round(sum(f.provider_shares.get(p, 0.0) for f in mine) / n, 4) for p in providers
        }
        out.append(
            PolicySummary(
                policy=policy,
                cost=round(sum(float(f.cost) for f in mine) / n, 2),
                gpu_hours=mean("gpu_hours"),
                deadline_misses=mean("deadline_misses"),
                deadline_jobs=mean("deadline_jobs"),
                jobs=mean("jobs"),
                completed=mean("completed"),
                preemptions=mean("preemptions"),
                mean_wait_hours=mean("mean_wait_hours"),
                p95_wait_hours=mean("p95_wait_hours"),
                provider_shares=shares,
                budget_overruns=mean("budget_overruns"),
                refused_plans=mean("refused_plans"),
                seeds=n,
                databases=[f.database for f in mine],
                report_window={
                    "from": min(f.report_from for f in mine),
                    "to": max(f.report_to for f in mine),
                },
                runs=[{**asdict(f), "cost": str(f.cost)} for f in mine],
            )
        )
    return out
