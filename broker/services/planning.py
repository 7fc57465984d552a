"""Plan the pending jobs against current offers, and commit a plan (``schedule``).

Pools are the fresh offers with a known price. A pool's capacity is the provider's figure
where known, else ``settings.default_pool_capacity``, minus the nodes that live
allocations already hold there; pools in an active cool-down (a recent OutOfCapacity) are
left out. Team budgets are what is left in the period (usage plus live allocations'
estimates are spent). Stored calibrations (``calibrations.calibration_map``) set the
training hours. Every plan passes ``scheduler.validate`` before it is shown or stored.

``schedule`` also records, in ``plans.detail["per_job_cheapest"]``, what each job would
cost on its own cheapest candidate with capacity ignored (the per-job rule the reports
compare spend against), and logs a job event for every job it plans or leaves unplaced.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.db.engine import Database
from broker.db.models import (
    AllocationRow,
    JobRow,
    OfferRow,
    PlanRow,
    PoolCooldownRow,
    QuotaRow,
)
from broker.domain import AllocationState, JobState, money, round_cents, utcnow
from broker.errors import ConfigError, ConflictError, Infeasible, StaleWrite
from broker.services import leases
from broker.services.jobs import guarded as jobs_guarded
from broker.services.jobs import record_event, transition
from broker.services.metering import BASELINE_KEY

ALLOCATION_KEYS = (
    "job",
    "provider",
    "region",
    "zone",
    "instance_type",
    "pricing",
    "nodes",
    "gpus",
    "est_hours",
    "est_cost",
)


@dataclass
class PlanReport:
    allocations: list[dict[str, Any]]
    unplaced: list[dict[str, Any]]
    objective: Decimal | None
    lp_bound: Decimal | None
    gap: float | None
    solve_seconds: float
    validated: bool
    solver: str = "highs"
    status: str = ""
    explain: dict[int, dict[str, Any]] = field(default_factory=dict)
    lp_placed: float | None = None  # jobs the LP places (fractions counted): the most any plan can
    cost_gap: float | None = None  # the cost gap over the jobs the plan places
    clock_stop: bool = False  # the wall-clock safety stop cut a step short (load-dependent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "allocations": self.allocations,
            "unplaced": self.unplaced,
            "objective": self.objective,
            "lp_bound": self.lp_bound,
            "gap": self.gap,
            "solve_seconds": self.solve_seconds,
            "validated": self.validated,
            "solver": self.solver,
            "status": self.status,
            "lp_placed": self.lp_placed,
            "cost_gap": self.cost_gap,
            "clock_stop": self.clock_stop,
            "explain": {str(k): v for k, v in sorted(self.explain.items())},
        }


@dataclass(frozen=True)
class ScheduleResult:
    plan_id: int
    allocation_ids: list[int]
    unplaced: dict[int, str]


def _options(
    settings: Settings,
    solver: str | None,
    time_limit: float | None,
    max_provider_share: float | None,
) -> tuple[str, float, float | None]:
    solver = (solver or settings.solver).lower()
    if solver not in ("highs", "cpsat"):
        raise ConfigError(f"--solver: must be highs or cpsat, not {solver!r}")
    limit = settings.solver_time_limit if time_limit is None else time_limit
    if not 0 < limit <= 86400:  # also refuses nan and inf
        raise ConfigError("--time-limit: must be > 0 and at most 86400 seconds")
    share = settings.max_provider_share if max_provider_share is None else max_provider_share
    if not 0 < share <= 1:
        raise ConfigError("--max-provider-share: must be in (0, 1]")
    return solver, float(limit), (share if share < 1 else None)


def _pools(session: Session, settings: Settings) -> list[Any]:
    from scheduler.problem import Pool

    now = utcnow()
    held: dict[tuple, int] = defaultdict(int)
    live = [s.value for s in AllocationState if s.live]
    for row in session.scalars(select(AllocationRow).where(AllocationRow.state.in_(live))):
        held[(row.provider, row.region, row.zone or "", row.instance_type, row.pricing)] += (
            row.nodes
        )
    cooling = list(session.scalars(select(PoolCooldownRow).where(PoolCooldownRow.until > now)))
    pools = []
    offers = session.scalars(
        select(OfferRow)
        .where(OfferRow.stale.is_(False), OfferRow.price_per_hour.is_not(None))
        .order_by(
            OfferRow.provider,
            OfferRow.region,
            OfferRow.zone,
            OfferRow.instance_type,
            OfferRow.pricing,
        )
    )
    for offer in offers:
        zone = offer.zone or ""
        if any(
            c.provider == offer.provider
            and c.region == offer.region
            and (c.zone or "") in ("", zone)
            and c.instance_type in (None, offer.instance_type)
            for c in cooling
        ):
            continue
        capacity = offer.capacity_nodes
        if capacity is None:
            capacity = settings.default_pool_capacity
        capacity -= held.get(
            (offer.provider, offer.region, zone, offer.instance_type, offer.pricing), 0
        )
        if capacity <= 0:
            continue
        pools.append(
            Pool(
                provider=offer.provider,
                region=offer.region,
                zone=zone,
                instance_type=offer.instance_type,
                pricing=offer.pricing,
                gpu=offer.gpu,
                gpus_per_node=offer.gpus_per_node or 0,
                price_per_hour=float(offer.price_per_hour),
                capacity=capacity,
                interconnect_gbps=offer.interconnect_gbps,
                rdma=offer.rdma or "none",
                offer_id=offer.id,
                vcpus=offer.vcpus,
            )
        )
    return pools


def _quotas(session: Session) -> list[Any]:
    from scheduler.problem import Quota

    out = []
    for row in session.scalars(
        select(QuotaRow).where(QuotaRow.unit == "gpus").order_by(QuotaRow.id)
    ):
        out.append(
            Quota(
                provider=row.provider,
                region=None if row.region == "global" else row.region,
                family=None if row.scope in ("all", "") else row.scope,
                pricing=row.pricing,
                limit=max(row.limit - row.used, 0.0),
                name=f"quota {row.provider}/{row.region}/{row.name}",
            )
        )
    return out


def _pending(session: Session, job_ids: Sequence[int] | None) -> list[JobRow]:
    query = select(JobRow).where(JobRow.state == JobState.PENDING.value).order_by(JobRow.id)
    if job_ids is not None:
        query = query.where(JobRow.id.in_(list(job_ids)))
    return list(session.scalars(query))


def _solve(
    session: Session,
    settings: Settings,
    solver: str,
    limit: float,
    share: float | None,
    job_ids: Sequence[int] | None,
    calibrations: dict[str, Any],
) -> tuple[Any, Any, list[JobRow]]:
    from broker.services.budgets import remaining_in
    from scheduler.candidates import build_problem
    from scheduler.solve import solve
    from workloads.spec import parse_spec

    rows = _pending(session, job_ids)
    # a stored spec that no longer parses names its job (source) and field
    specs = [(row.id, parse_spec(row.spec, source=f"job {row.id}")) for row in rows]
    specs = _with_measured_rates(session, specs)
    now = utcnow()
    budgets = {}
    for team in sorted({row.team for row in rows}):
        left = remaining_in(session, team, now)
        if left is not None:
            budgets[team] = float(left)
    problem = build_problem(
        specs,
        _pools(session, settings),
        now=now,
        quotas=_quotas(session),
        budgets=budgets,
        max_provider_share=share,
        calibrations=calibrations,
    )
    plan = solve(
        problem, solver=solver, time_limit=limit, relative_gap=settings.solver_relative_gap
    )
    return problem, plan, rows


def _with_measured_rates(session: Session, specs: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Serving specs with the request rate their endpoints measured, where it is higher."""
    from broker.services.serving import measured_rates

    rates = measured_rates(session, [job for job, spec in specs if spec.kind == "inference"])
    return [
        (job, spec.model_copy(update={"request_rate": rates[job]}))
        if rates.get(job, 0.0) > getattr(spec, "request_rate", 0.0)
        else (job, spec)
        for job, spec in specs
    ]


def _area(jobs: dict[int, Any], candidates: Any, assignment: Any) -> str | None:
    """The user area a serving candidate answers (None for training)."""
    index = int(candidates.area[assignment.candidate])
    return None if index < 0 else str(jobs[assignment.job].demand[index][0])


def _report(problem: Any, plan: Any, solver: str) -> PlanReport:
    c = problem.candidates
    jobs = {job.id: job for job in problem.jobs}
    allocations = []
    for a in sorted(plan.assignments, key=lambda a: (a.job, a.candidate)):
        pool = problem.pools[int(c.pool[a.candidate])]
        nodes = int(c.nodes[a.candidate]) * a.count
        allocations.append(
            {
                "job": a.job,
                "provider": pool.provider,
                "region": pool.region,
                "zone": pool.zone or None,
                "instance_type": pool.instance_type,
                "pricing": pool.pricing,
                "nodes": nodes,
                "gpus": int(c.gpus[a.candidate]) * a.count,
                "est_hours": round(float(c.hours[a.candidate]), 4),
                "est_cost": round_cents(money(float(c.cost[a.candidate]) * a.count)),
                "gpu": pool.gpu,
                "offer_id": pool.offer_id,
                "price_per_hour": money(pool.price_per_hour),
                "area": _area(jobs, c, a),
                "replicas": int(c.replicas[a.candidate]) * a.count,
            }
        )
    unplaced = [{"job": j, "reason": r} for j, r in sorted(plan.unplaced.items())]
    return PlanReport(
        allocations=allocations,
        unplaced=unplaced,
        objective=round_cents(money(plan.objective)),
        lp_bound=None if plan.lp_bound is None else round_cents(money(plan.lp_bound)),
        gap=None if plan.gap is None else round(plan.gap, 6),
        solve_seconds=round(plan.solve_seconds, 3),
        validated=True,
        solver=solver,
        status=plan.status,
        explain=plan.explain,
        lp_placed=None if plan.lp_placed is None else round(plan.lp_placed, 4),
        cost_gap=None if plan.cost_gap is None else round(plan.cost_gap, 6),
        clock_stop=plan.clock_stop,
    )


def plan(
    db: Database,
    settings: Settings,
    *,
    solver: str | None = None,
    time_limit: float | None = None,
    max_provider_share: float | None = None,
    job_ids: Sequence[int] | None = None,
) -> PlanReport:
    """Plan the PENDING jobs against current offers; nothing is stored."""
    from broker.services.calibrations import calibration_map
    from broker.services.catalog import ensure_catalog

    name, limit, share = _options(settings, solver, time_limit, max_provider_share)
    ensure_catalog(db, settings)
    calibrations = calibration_map(db)
    with db.session() as session:
        problem, result, _ = _solve(session, settings, name, limit, share, job_ids, calibrations)
    return _report(problem, result, name)


def schedule(
    db: Database,
    settings: Settings,
    *,
    solver: str | None = None,
    time_limit: float | None = None,
    max_provider_share: float | None = None,
    job_ids: Sequence[int] | None = None,
) -> ScheduleResult:
    """Plan and commit in one transaction: PlanRow, PLANNED allocations, jobs -> PLANNED
    (each move logged as a state event), and an ``unplaced`` event for each job left pending
    for a reason other than the one it already shows."""
    from broker.services.calibrations import calibration_map
    from broker.services.catalog import ensure_catalog

    name, limit, share = _options(settings, solver, time_limit, max_provider_share)
    ensure_catalog(db, settings)
    calibrations = calibration_map(db)
    started = time.perf_counter()
    with _reserving(db) as session:
        problem, result, rows = _solve(
            session, settings, name, limit, share, job_ids, calibrations
        )
        report = _report(problem, result, name)
        plan_row = PlanRow(
            solver=name,
            status=result.status,
            objective=report.objective,
            lp_bound=report.lp_bound,
            gap=report.gap,
            solve_seconds=result.solve_seconds,
            validated=True,
            detail={
                "unplaced": {str(k): v for k, v in result.unplaced.items()},
                "explain": {str(k): v for k, v in result.explain.items()},
                BASELINE_KEY: _per_job_cheapest(problem),
                "wall_seconds": round(time.perf_counter() - started, 3),
            },
        )
        session.add(plan_row)
        session.flush()
        by_id = {row.id: row for row in rows}
        ids = []
        placed: dict[int, list[tuple[int, str]]] = defaultdict(list)  # job -> (alloc, pool)
        for alloc in report.allocations:
            row = AllocationRow(
                plan_id=plan_row.id,
                job_id=alloc["job"],
                offer_id=alloc["offer_id"],
                provider=alloc["provider"],
                region=alloc["region"],
                zone=alloc["zone"] or "",
                instance_type=alloc["instance_type"],
                pricing=alloc["pricing"],
                gpu=alloc["gpu"],
                gpus_per_node=alloc["gpus"] // max(alloc["nodes"], 1),
                nodes=alloc["nodes"],
                price_at_plan=alloc["price_per_hour"],
                est_hours=alloc["est_hours"],
                est_cost=alloc["est_cost"],
                area=alloc["area"],
                replicas=alloc["replicas"],
                state=AllocationState.PLANNED.value,
            )
            session.add(row)
            session.flush()
            ids.append(row.id)
            pool = "/".join(
                (row.provider, row.region, row.zone or "-", row.instance_type, row.pricing)
            )
            placed[alloc["job"]].append((row.id, pool))
        for job_id, held in sorted(placed.items()):
            job = by_id[job_id]
            if job.state != JobState.PENDING.value:
                raise StaleWrite(f"job {job_id} changed state while it was planned")
            _mark_planned(session, job, plan_row.id, held)
        for job_id, reason in sorted(result.unplaced.items()):
            job, reason = by_id[job_id], reason[:1000]
            if job.message != reason:  # a daemon replans often: log only a new reason
                payload = {"plan_id": plan_row.id, "reason": reason}
                record_event(session, job_id, "unplaced", payload)
            job.message = reason
        return ScheduleResult(
            plan_id=plan_row.id, allocation_ids=ids, unplaced=dict(sorted(result.unplaced.items()))
        )


@contextmanager
def _reserving(db: Database) -> Iterator[Session]:
    """The planner's one transaction: concurrent planners serialise on it, so each reads
    the capacity, quota and budget the one before it committed and never promises them
    twice. A lock not had in time, or a job changed under us, is a ``ConflictError``."""
    try:
        with jobs_guarded(db) as session:
            leases.serialize(session, "planning")
            yield session
    except OperationalError as exc:
        if "lock" not in str(exc):  # SQLite's "database is locked", PostgreSQL's lock timeout
            raise
        raise ConflictError("another planner held the database too long; try again") from None


def _per_job_cheapest(problem: Any) -> dict[str, str]:
    """{job id: estimated cost of its per-job-cheapest choice}, in dollars to the cent (as
    allocations' ``est_cost`` are, so a job planned on that very choice compares equal)."""
    from scheduler.baselines import per_job_cheapest, units_to_plan
    from scheduler.model import build_classes

    classes = build_classes(problem)
    alone = units_to_plan(problem, classes, per_job_cheapest(problem, classes))
    cost: dict[int, float] = defaultdict(float)
    for a in alone.assignments:
        cost[a.job] += float(problem.candidates.cost[a.candidate]) * a.count
    return {str(job): str(round_cents(money(value))) for job, value in sorted(cost.items())}


def _mark_planned(
    session: Session, job: JobRow, plan_id: int, held: list[tuple[int, str]]
) -> None:
    """PENDING -> PLANNED through ``jobs.transition``, whose state event also names the
    plan, the pool and the allocations."""
    detail = {
        "plan_id": plan_id,
        "pool": ", ".join(sorted({pool for _, pool in held})),  # a serving job may span pools
        "allocations": [alloc for alloc, _ in held],
    }
    transition(session, job, JobState.PLANNED, detail=detail)
    job.message = None


def add_cooldown(
    db: Database,
    settings: Settings,
    *,
    provider: str,
    region: str,
    zone: str,
    instance_type: str | None,
    reason: str,
) -> int:
    """Keep the pool (or the whole zone, when ``instance_type`` is None) out of plans for
    ``settings.capacity_cooldown_minutes``."""
    until = utcnow() + timedelta(minutes=settings.capacity_cooldown_minutes)
    with db.session() as session:
        row = PoolCooldownRow(
            provider=provider,
            region=region,
            zone=zone or "",
            instance_type=instance_type,
            reason=reason[:256],
            until=until,
        )
        session.add(row)
        session.flush()
        return row.id


def require_placed(result: ScheduleResult) -> None:
    """Raise Infeasible naming every unplaced job's reason (for callers that need all)."""
    if result.unplaced:
        raise Infeasible([f"job {j}: {r}" for j, r in sorted(result.unplaced.items())])
