"""Plan the pending jobs against current offers (``plan``); nothing is stored.

Team budgets are what is left in the period (usage plus live allocations' estimates are
spent). Stored calibrations (``calibrations.calibration_map``) set the training hours.
Every plan passes ``scheduler.validate`` before it is shown or stored; ``schedule`` commits
one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from broker.config import Settings
from broker.db.engine import Database
from broker.db.models import JobRow
from broker.domain import money, round_cents, utcnow
from broker.errors import ConfigError
from broker.services.planning.inputs import (
    available_pools,
    held_by_provider,
    pending_jobs,
    quotas,
    with_measured_rates,
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
    # placement in priority weight (a job weighs 1 + its priority): what the plan places,
    # and the most any plan can place (an LP bound)
    placed_weight: int = 0
    most_placeable: int | None = None
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
            "placed_weight": self.placed_weight,
            "most_placeable": self.most_placeable,
            "cost_gap": self.cost_gap,
            "clock_stop": self.clock_stop,
            "explain": {str(k): v for k, v in sorted(self.explain.items())},
        }


@dataclass(frozen=True)
class ScheduleResult:
    plan_id: int
    allocation_ids: list[int]
    unplaced: dict[int, str]


def solver_options(
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


def prepare(
    db: Database,
    settings: Settings,
    solver: str | None,
    time_limit: float | None,
    max_provider_share: float | None,
) -> tuple[str, float, float | None, dict[str, Any]]:
    """What ``plan`` and ``schedule`` both do before solving: check the solver options,
    make sure there are offers, and read the stored calibrations."""
    from broker.services.offers.bootstrap import ensure_catalog
    from broker.services.planning.calibrations import calibration_map

    name, limit, share = solver_options(settings, solver, time_limit, max_provider_share)
    ensure_catalog(db, settings)
    return name, limit, share, calibration_map(db)


def solve_pending(
    session: Session,
    settings: Settings,
    solver: str,
    limit: float,
    share: float | None,
    job_ids: Sequence[int] | None,
    calibrations: dict[str, Any],
) -> tuple[Any, Any, list[JobRow]]:
    from broker.services.budgets import remaining_in
    from broker.services.planning.assumptions import candidate_settings
    from scheduler.candidates import build_problem
    from scheduler.solve import solve
    from workloads.spec import parse_spec

    rows = pending_jobs(session, job_ids)
    # a stored spec that no longer parses names its job (source) and field
    specs = [(row.id, parse_spec(row.spec, source=f"job {row.id}")) for row in rows]
    specs = with_measured_rates(session, specs)
    now = utcnow()
    budgets = {}
    for team in sorted({row.team for row in rows}):
        left = remaining_in(session, team, now)
        if left is not None:
            budgets[team] = float(left)
    problem = build_problem(
        specs,
        available_pools(session, settings),
        now=now,
        quotas=quotas(session),
        budgets=budgets,
        max_provider_share=share,
        calibrations=calibrations,
        knobs=candidate_settings(session, settings, now),
    )
    if share is not None:
        # the cap is on each provider's share of the whole fleet, running jobs included
        problem.held = held_by_provider(session, problem.share_on)
    plan = solve(
        problem, solver=solver, time_limit=limit, relative_gap=settings.solver_relative_gap
    )
    return problem, plan, rows


def _area(jobs: dict[int, Any], candidates: Any, assignment: Any) -> str | None:
    """The user area a serving candidate answers (None for training)."""
    index = int(candidates.area[assignment.candidate])
    return None if index < 0 else str(jobs[assignment.job].demand[index][0])


def plan_report(problem: Any, plan: Any, solver: str) -> PlanReport:
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
        placed_weight=plan.placed_weight,
        most_placeable=plan.most_placeable,
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
    name, limit, share, calibrations = prepare(db, settings, solver, time_limit, max_provider_share)
    with db.session() as session:
        problem, result, _ = solve_pending(
            session, settings, name, limit, share, job_ids, calibrations
        )
    return plan_report(problem, result, name)
