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

import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from broker.db.engine import Database
from broker.domain import MICRO, as_utc, utcnow
from broker.errors import UserError
from broker.services.metering import FINE, JobCost, Slice, job_costs, window_slices
from broker.services.serving import serving_costs

DIMENSIONS = ("team", "provider", "region", "gpu", "pricing", "job")
OVERRUN = Decimal("1.25")  # a job costing more than this times its estimate is flagged
FORMATS = ("table", "csv", "json", "html")
DEFAULT_GROUP_BY = ("team", "provider")
_DURATION = re.compile(r"^\s*(\d+)\s*(min|h|d|w|mo|m|y)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_WINDOW_YEARS = 200  # longest window a report may reach back
DURATION_HELP = "30min, 12h, 7d, 4w, 1mo (calendar months), ytd (since January 1st)"


def parse_duration(text: str, *, field: str = "since") -> timedelta:
    """``30min``, ``12h``, ``7d`` or ``2w`` as a timedelta (fixed lengths only: months and
    ``ytd`` depend on the calendar, see :func:`since_start`). ``m`` alone is refused: it
    could mean minutes or months."""
    match = _DURATION.match(text or "")
    unit = match.group(2).lower() if match else ""
    if unit == "m":
        raise UserError(
            f"{field}: {text!r} is ambiguous; write {match.group(1)}min for minutes or "  # type: ignore[union-attr]
            f"{match.group(1)}mo for months"  # type: ignore[union-attr]
        )
    if not match or int(match.group(1)) == 0 or unit not in _UNIT_SECONDS:
        raise UserError(f"{field}: {text!r} is not a duration; use e.g. 30min, 12h, 7d or 2w")
    seconds = int(match.group(1)) * _UNIT_SECONDS[unit]
    if seconds > MAX_WINDOW_YEARS * 366 * 86400:
        raise UserError(f"{field}: {text!r} is too long; at most {MAX_WINDOW_YEARS} years")
    return timedelta(seconds=seconds)


def months_before(moment: datetime, months: int) -> datetime:
    """The same day and time ``months`` calendar months earlier (the month's last day when
    that month is shorter: 31 March less one month is 28 or 29 February)."""
    import calendar

    index = moment.year * 12 + moment.month - 1 - months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def since_start(text: str, end: datetime, *, field: str = "since") -> datetime:
    """The start of a window that ends at ``end`` and reaches back ``text``: a duration
    (``12h``, ``7d``, ``4w``), calendar months (``1mo``, ``3mo``), years (``1y``), ``ytd``
    (from January 1st of ``end``'s year, UTC) or a date (``2026-11-01``)."""
    value = (text or "").strip().lower()
    if value == "ytd":
        return datetime(end.year, 1, 1, tzinfo=UTC)
    match = _DURATION.match(value)
    if match and match.group(2).lower() in ("mo", "y") and int(match.group(1)) > 0:
        count = int(match.group(1)) * (12 if match.group(2).lower() == "y" else 1)
        if count > MAX_WINDOW_YEARS * 12:
            raise UserError(f"{field}: {text!r} is too long; at most {MAX_WINDOW_YEARS} years")
        return months_before(end, count)
    if re.match(r"^\d{4}-\d{2}-\d{2}", value):
        return parse_instant(text, field=field)
    try:
        return end - parse_duration(text, field=field)
    except UserError as exc:
        if "ambiguous" in str(exc) or "too long" in str(exc):
            raise
        raise UserError(
            f"{field}: {text!r} is not a duration or date; use {DURATION_HELP}, or YYYY-MM-DD"
        ) from None


def parse_instant(text: str, *, field: str, end_of_day: bool = False) -> datetime:
    """An ISO date or datetime (UTC unless it names a zone). A bare date means its start,
    or with ``end_of_day`` the start of the next day, so ``--to 2026-11-07`` includes the 7th."""
    try:
        if len(text.strip()) == 10:
            day = date.fromisoformat(text.strip())
            moment = datetime.combine(day, time(0), tzinfo=UTC)
            return moment + timedelta(days=1) if end_of_day else moment
        return as_utc(datetime.fromisoformat(text.strip()))
    except OverflowError:
        message = f"{field}: {text!r} is out of range; use a date before 9999-12-31"
        raise UserError(message) from None
    except ValueError:
        raise UserError(
            f"{field}: {text!r} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+00:00]"
        ) from None


def parse_group_by(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_GROUP_BY
    parts = value.split(",") if isinstance(value, str) else list(value)
    dims = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    bad = [d for d in dims if d not in DIMENSIONS]
    if bad or not dims:
        raise UserError(
            f"group-by: {bad[0] if bad else value!r} is not allowed; use a comma-separated "
            f"list of {', '.join(DIMENSIONS)}"
        )
    return dims


def window(
    *,
    since: str | timedelta | None = None,
    start: str | datetime | None = None,
    end: str | datetime | None = None,
    now: datetime | None = None,
) -> tuple[datetime, datetime]:
    """The report window from ``--since`` or ``--from``/``--to`` (default: the last 7 days)."""
    if since is not None and start is not None:
        raise UserError("since: give either --since or --from/--to, not both")
    now = as_utc(now or utcnow())
    if isinstance(end, str) and not re.match(r"^\s*\d{4}-\d{2}-\d{2}", end):
        stop = since_start(end, now, field="to")  # "--to 7d": seven days ago
    elif isinstance(end, str):
        stop = parse_instant(end, field="to", end_of_day=True)
    else:
        stop = as_utc(end or now)
    if start is not None:
        begin = parse_instant(start, field="from") if isinstance(start, str) else as_utc(start)
    elif isinstance(since, str):
        begin = since_start(since, stop)
    else:
        begin = stop - (since or timedelta(days=7))
    if begin >= stop:
        raise UserError("from: the window must start before it ends (--from < --to)")
    return begin, stop


# --- the report ---------------------------------------------------------------------------


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
class Report:
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

    def render(self, fmt: str) -> str:
        """The report as ``html``, ``csv`` or ``json`` text."""
        return render_text(self, fmt)

    def save(self, path: str | Path, fmt: str | None = None) -> Path:
        """Write the report to ``path``; the format defaults to the file's suffix."""
        target = Path(path).expanduser()
        write_atomic(target, render_text(self, fmt or target.suffix.lstrip(".").lower()))
        return target

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
    from sqlalchemy import func, select

    from broker.db.models import AllocationRow, BudgetRow, JobRow, UsageRow
    from broker.domain import AllocationState
    from broker.services.budgets import period_end, period_start

    live = [state.value for state in AllocationState if state.live]
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
            committed = session.scalar(
                select(func.coalesce(func.sum(AllocationRow.est_cost), 0))
                .join(JobRow, AllocationRow.job_id == JobRow.id)
                .where(JobRow.team == row.team, AllocationRow.state.in_(live))
            )
            metered, committed = Decimal(str(metered)), Decimal(str(committed))
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
    return [
        TopJob(
            job_id=job_id,
            name=costs[job_id].name,
            team=costs[job_id].team,
            state=costs[job_id].state,
            spend=_q(spend[job_id]),
            gpu_hours=_q(hours[job_id]),
            actual_total=_q(costs[job_id].actual),
            estimated_total=None
            if costs[job_id].estimated is None
            else _q(costs[job_id].estimated),
        )
        for job_id in ranked
    ]


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
        c
        for c in costs.values()
        if c.estimated is not None and c.estimated > 0 and c.actual > c.estimated * OVERRUN
    ]
    over.sort(key=lambda c: (-(c.actual / c.estimated), c.job_id))  # type: ignore[operator]
    return [
        TopJob(
            job_id=c.job_id,
            name=c.name,
            team=c.team,
            state=c.state,
            spend=_q(c.actual),
            gpu_hours=_q(c.gpu_hours),
            actual_total=_q(c.actual),
            estimated_total=_q(c.estimated),  # type: ignore[arg-type]
        )
        for c in over
    ]


# --- renderings ---------------------------------------------------------------------------

METRIC_COLUMNS = (
    "spend",
    "gpu_hours",
    "on_demand_cost",
    "savings_vs_on_demand",
    "cheapest_cost",
    "savings_vs_cheapest",
    "utilisation",
    "jobs",
    "runs",
)


def group_rows(report: Report) -> list[dict]:
    """The grouped rows with their metrics, and a final ``TOTAL`` row."""
    rows = [{**g.key, **asdict(g.metrics)} for g in report.groups]
    total = {dim: "TOTAL" if i == 0 else "" for i, dim in enumerate(report.group_by)}
    rows.append({**total, **asdict(report.totals)})
    return rows


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def render_text(report: Report, fmt: str) -> str:
    """The report as ``csv``, ``json`` or ``html`` text (``table`` is the CLI's rich view)."""
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2, default=_json_default) + "\n"
    if fmt == "csv":
        columns = [*report.group_by, *METRIC_COLUMNS]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in group_rows(report):
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
        return buffer.getvalue()
    if fmt == "html":
        from broker.services.report_html import render_html

        return render_html(report)
    raise UserError(f"format: must be one of csv, json, html for a file (got {fmt!r})")


def write_atomic(path: Path, text: str, *, make_parent: bool = False) -> None:
    """Write ``text`` to ``path`` with ``broker.files.write_atomic`` (a regular file or a
    new name only, exclusive temporary file, rename); ``make_parent``: create the folder
    (0700) first, as a scheduled report's folder may not exist yet."""
    from broker.files import write_atomic as write_safely

    if make_parent:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_safely(path, text)
