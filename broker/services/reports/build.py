"""Cost reports over a time window, computed from the usage ledger alone.

Figures (every money amount in US dollars, over the part of each run inside the window):
- ``spend``: what the ledger charged.
- ``gpu_hours``: billed GPU-hours (node-hours x GPUs per node).
- ``on_demand_cost``: the same node-hours at the on-demand list price of the same
  instance type in the same region (the price recorded at launch, else the on-demand offer
  in ``offers``); runs with no known on-demand price count at their own cost.
  ``savings_vs_on_demand = on_demand_cost - spend``.
- ``cheapest_cost``: what each job would have cost had it been placed on its own on the
  cheapest offer (the per-job-cheapest rule), from the baseline the planner records per job
  in ``plans.detail["per_job_cheapest"]``. Both that baseline and the job's allocation are
  plan-time estimates from the same model, so the job's actual spend is scaled by their
  ratio: ``actual x baseline / allocation estimate``. Runs without a baseline count at
  their own cost. ``savings_vs_cheapest = cheapest_cost - spend``.
- ``utilisation``: busy GPU-hours / billed GPU-hours, over runs that reported busy time.
- ``idle_cost``: the paid part of runs that reported busy time and were not busy:
  cost x (1 - busy / billed GPU-hours), summed over those runs (None when none reported).
- ``previous``: the totals of the window of the same length just before this one, for
  the change against the previous period.
- budget burn per team (the budget period containing the window's end), with a forecast
  for the period's end: metered spend at its rate so far, plus live allocations' estimates.
- the top jobs, and the overruns: jobs in the window whose lifetime cost is more than
  ``OVERRUN`` times their plan-time estimate.
- breakdowns by provider, region, GPU, team and pricing (spot, on_demand).
The same window reported twice gives identical figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select

from broker.db.engine import Database
from broker.db.models import BudgetRow, UsageRow
from broker.db.queries import committed_estimates
from broker.domain import MICRO, as_utc
from broker.errors import UserError
from broker.services.budgets import period_end, period_start
from broker.services.metering import FINE, JobCost, Slice, job_costs, window_slices
from broker.services.reports.model import OVERRUN, BudgetBurn, Group, Metrics, TimelinePoint, TopJob
from broker.services.reports.render import Report
from broker.services.reports.serving_costs import serving_costs
from broker.services.reports.windows import DEFAULT_GROUP_BY, DIMENSIONS, parse_group_by


def _value(s: Slice, dim: str, names: dict[int, str]) -> str:
    if dim == "job":
        return f"#{s.job_id} {names.get(s.job_id, '')}".strip()
    if dim == "gpu":
        return s.gpu or "cpu"
    return str(getattr(s, dim))


def _q(value: Decimal) -> Decimal:
    return value.quantize(MICRO) + 0  # "+ 0" turns a negative zero into zero


def _metrics(slices: Sequence[Slice]) -> Metrics:
    spend = sum((s.cost for s in slices), Decimal(0))
    gpu_hours = sum((s.gpu_hours for s in slices), Decimal(0))
    on_demand = sum(
        (s.cost if s.on_demand_cost is None else s.on_demand_cost for s in slices), Decimal(0)
    )
    cheapest = sum(
        (s.cost if s.cheapest_cost is None else s.cheapest_cost for s in slices), Decimal(0)
    )
    measured = [s for s in slices if s.busy_gpu_hours is not None]
    busy = sum((s.busy_gpu_hours or Decimal(0) for s in measured), Decimal(0))
    billed = sum((s.gpu_hours for s in measured), Decimal(0))
    idle = sum(
        (
            (
                s.cost * (1 - min((s.busy_gpu_hours or Decimal(0)) / s.gpu_hours, Decimal(1)))
            ).quantize(FINE)
            for s in measured
            if s.gpu_hours
        ),
        Decimal(0),
    )
    return Metrics(
        spend=_q(spend),
        gpu_hours=_q(gpu_hours),
        node_hours=_q(sum((s.node_hours for s in slices), Decimal(0))),
        on_demand_cost=_q(on_demand),
        savings_vs_on_demand=_q(on_demand - spend),
        cheapest_cost=_q(cheapest),
        savings_vs_cheapest=_q(cheapest - spend),
        busy_gpu_hours=_q(busy),
        utilisation=(busy / billed).quantize(Decimal("0.0001")) if billed else None,
        jobs=len({s.job_id for s in slices}),
        runs=len({s.usage_id for s in slices}),
        idle_cost=_q(idle) if measured else None,
    )


def _groups(slices: Sequence[Slice], dims: Sequence[str], names: dict[int, str]) -> list[Group]:
    buckets: dict[tuple[str, ...], list[Slice]] = {}
    for s in slices:
        buckets.setdefault(tuple(_value(s, d, names) for d in dims), []).append(s)
    groups = [Group(dict(zip(dims, key, strict=True)), _metrics(b)) for key, b in buckets.items()]
    return sorted(groups, key=lambda g: (-g.metrics.spend, tuple(g.key.values())))


def _bucket_size(start: datetime, end: datetime) -> tuple[str, timedelta]:
    span = end - start
    if span <= timedelta(days=2):
        return "hour", timedelta(hours=1)
    if span <= timedelta(days=92):
        return "day", timedelta(days=1)
    return "week", timedelta(days=7)


def _timeline(slices: Sequence[Slice], start: datetime, end: datetime) -> tuple[str, list]:
    """Spend per hour, day or week; bucket edges at whole hours / UTC midnights."""
    name, size = _bucket_size(start, end)
    first = start.replace(minute=0, second=0, microsecond=0)
    if name != "hour":
        first = first.replace(hour=0)
    edges = []
    at = first
    while at < end:
        edges.append((max(at, start), min(at + size, end)))
        at += size
    spend = [Decimal(0)] * len(edges)
    by_provider: list[dict[str, Decimal]] = [{} for _ in edges]
    for s in slices:
        index = int((s.start - first) / size)
        while index < len(edges) and edges[index][0] < s.end:
            lo, hi = max(s.start, edges[index][0]), min(s.end, edges[index][1])
            if hi > lo:
                part = (s.cost * Decimal((hi - lo) / (s.end - s.start))).quantize(FINE)
                spend[index] += part
                by_provider[index][s.provider] = by_provider[index].get(s.provider, 0) + part
            index += 1
    points = [
        TimelinePoint(
            start=lo,
            end=hi,
            spend=_q(spend[i]),
            by_provider={p: _q(v) for p, v in sorted(by_provider[i].items())},
        )
        for i, (lo, hi) in enumerate(edges)
    ]
    return name, points


def _budget_burn(db: Database, end: datetime) -> list[BudgetBurn]:
    burns = []
    with db.session() as session:
        for row in session.scalars(select(BudgetRow).order_by(BudgetRow.team)).all():
            begin, finish = period_start(row.period, end), period_end(row.period, end)
            if end == begin:  # a window ending on a period boundary reports the period just ended
                begin = period_start(row.period, end - timedelta(microseconds=1))
                finish = end
            metered = session.scalar(
                select(func.coalesce(func.sum(UsageRow.cost), 0)).where(
                    UsageRow.team == row.team, UsageRow.start >= begin, UsageRow.start < end
                )
            )
            metered = Decimal(str(metered))
            committed = committed_estimates(session, row.team)
            used = metered + committed
            elapsed = Decimal((end - begin) / (finish - begin))
            pace = metered / elapsed if elapsed > 0 else metered
            burns.append(
                BudgetBurn(
                    team=row.team,
                    amount=row.amount,
                    period=row.period,
                    period_start=begin,
                    period_end=finish,
                    spent=_q(metered),
                    committed=_q(committed),
                    remaining=_q(max(row.amount - used, Decimal(0))),
                    burn=(used / row.amount).quantize(Decimal("0.0001"))
                    if row.amount
                    else Decimal(0),
                    elapsed=elapsed.quantize(Decimal("0.0001")),
                    forecast=_q(max(pace, metered) + committed),
                )
            )
    return burns


def _top_jobs(slices: Sequence[Slice], costs: dict[int, JobCost], limit: int) -> list[TopJob]:
    spend: dict[int, Decimal] = {}
    hours: dict[int, Decimal] = {}
    for s in slices:
        spend[s.job_id] = spend.get(s.job_id, Decimal(0)) + s.cost
        hours[s.job_id] = hours.get(s.job_id, Decimal(0)) + s.gpu_hours
    ranked = sorted(spend, key=lambda job_id: (-spend[job_id], job_id))[:limit]
    top = []
    for job_id in ranked:
        cost = costs[job_id]
        top.append(
            TopJob(
                job_id=job_id,
                name=cost.name,
                team=cost.team,
                state=cost.state,
                spend=_q(spend[job_id]),
                gpu_hours=_q(hours[job_id]),
                actual_total=_q(cost.actual),
                estimated_total=None if cost.estimated is None else _q(cost.estimated),
            )
        )
    return top


def _notes(slices: Iterable[Slice]) -> list[str]:
    slices = list(slices)
    notes = []
    no_od = sum(1 for s in slices if s.on_demand_cost is None)
    no_base = sum(1 for s in slices if s.cheapest_cost is None)
    no_busy = sum(1 for s in slices if s.busy_gpu_hours is None)
    if no_od:
        notes.append(f"{no_od} run(s) have no known on-demand price; counted at their own cost")
    if no_base:
        notes.append(
            f"{no_base} run(s) have no per-job-cheapest baseline; counted at their own cost"
        )
    if no_busy:
        notes.append(f"{no_busy} run(s) reported no busy time; left out of utilisation")
    return notes


def build_report(
    db: Database,
    start: datetime,
    end: datetime,
    *,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    top: int = 10,
) -> Report:
    """The report for ``[start, end)``."""
    start, end = as_utc(start), as_utc(end)
    if start >= end:
        raise UserError("from: the window must start before it ends (--from < --to)")
    dims = parse_group_by(group_by)
    with db.session() as session:
        slices = window_slices(session, start, end)
        costs = job_costs(session, (s.job_id for s in slices))
        before = window_slices(session, start - (end - start), start)
        serving = [row.to_dict() for row in serving_costs(session, start, end)]
    names = {job_id: cost.name for job_id, cost in costs.items()}
    bucket, timeline = _timeline(slices, start, end)
    return Report(
        period_from=start,
        period_to=end,
        group_by=dims,
        totals=_metrics(slices),
        groups=_groups(slices, dims, names),
        breakdowns={dim: _groups(slices, [dim], names) for dim in DIMENSIONS if dim != "job"},
        timeline=timeline,
        bucket=bucket,
        budgets=_budget_burn(db, end),
        top_jobs=_top_jobs(slices, costs, top),
        notes=_notes(slices),
        previous=_metrics(before),
        overruns=_overruns(costs),
        serving=serving,
    )


def _overruns(costs: dict[int, JobCost]) -> list[TopJob]:
    """Jobs whose lifetime cost is more than ``OVERRUN`` x their estimate, worst first."""
    over = [
        (c, c.estimated)
        for c in costs.values()
        if c.estimated is not None and c.estimated > 0 and c.actual > c.estimated * OVERRUN
    ]
    over.sort(key=lambda pair: (-(pair[0].actual / pair[1]), pair[0].job_id))
    return [
        TopJob(
            job_id=c.job_id,
            name=c.name,
            team=c.team,
            state=c.state,
            spend=_q(c.actual),
            gpu_hours=_q(c.gpu_hours),
            actual_total=_q(c.actual),
            estimated_total=_q(estimated),
        )
        for c, estimated in over
    ]
