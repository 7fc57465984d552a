"""The cost report's values: totals, groups, the timeline, budget burn, top jobs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from broker.domain import utcnow

OVERRUN = Decimal("1.25")  # a job costing more than this times its estimate is flagged


@dataclass(frozen=True)
class Metrics:
    spend: Decimal
    gpu_hours: Decimal
    node_hours: Decimal
    on_demand_cost: Decimal
    savings_vs_on_demand: Decimal
    cheapest_cost: Decimal
    savings_vs_cheapest: Decimal
    busy_gpu_hours: Decimal
    utilisation: Decimal | None  # busy / billed GPU-hours over runs that reported busy time
    jobs: int
    runs: int
    idle_cost: Decimal | None = None  # paid, not busy; None: no run reported busy time


@dataclass(frozen=True)
class Group:
    key: dict[str, str]
    metrics: Metrics


@dataclass(frozen=True)
class TimelinePoint:
    start: datetime
    end: datetime
    spend: Decimal
    by_provider: dict[str, Decimal]


@dataclass(frozen=True)
class BudgetBurn:
    team: str
    amount: Decimal
    period: str
    period_start: datetime
    period_end: datetime
    spent: Decimal  # metered, from the period start to the window's end
    committed: Decimal  # estimated cost of live allocations (not yet metered)
    remaining: Decimal
    burn: Decimal  # (spent + committed) / amount
    elapsed: Decimal  # share of the period gone by at the window's end
    forecast: Decimal = Decimal(0)  # spent / elapsed + committed: at the period's end


@dataclass(frozen=True)
class TopJob:
    job_id: int
    name: str
    team: str
    state: str
    spend: Decimal  # in the window
    gpu_hours: Decimal  # in the window
    actual_total: Decimal  # over the job's life
    estimated_total: Decimal | None


@dataclass(frozen=True)
class ReportData:
    """Every figure of one report; ``render.Report`` adds its renderings."""

    period_from: datetime
    period_to: datetime
    group_by: tuple[str, ...]
    totals: Metrics
    groups: list[Group]
    breakdowns: dict[str, list[Group]]  # provider, region, gpu, team -> groups by spend
    timeline: list[TimelinePoint]
    bucket: str  # hour | day | week
    budgets: list[BudgetBurn]
    top_jobs: list[TopJob]
    notes: list[str] = field(default_factory=list)
    generated_at: datetime = field(default_factory=utcnow)
    previous: Metrics | None = None  # the window of the same length just before
    overruns: list[TopJob] = field(default_factory=list)
    # Serving jobs: cost in the window per 1,000 requests and per million generated tokens.
    serving: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready (after ``jsonable``): the stable shape of ``--format json``."""
        data = asdict(self)
        data["group_by"] = list(self.group_by)
        data["groups"] = [{**g.key, **asdict(g.metrics)} for g in self.groups]
        data["breakdowns"] = {
            dim: [{dim: g.key[dim], **asdict(g.metrics)} for g in groups]
            for dim, groups in self.breakdowns.items()
        }
        return data
