"""Solve a placement problem: greedy warm start, column generation, integer solve, checks.

1. Jobs are grouped into classes; the better of the greedy-by-regret and first-come
   plans is the first feasible plan.
2. Column generation (with valid rounding cuts for gang packing and serving units) over
   the *full* candidate space: the LP over the columns found so
   far gives duals; every candidate of every class is priced with them (vectorised) and
   the most negative ones join. When none prices out, the LP optimum is the full-space LP
   bound; if the time share for it runs out first, the Lagrangian bound
   (LP + sum of negative reduced costs x their bounds) is reported instead, still valid.
   A solve that returns no duals (an empty problem) ends pricing at once: the bound is
   the Lagrangian one at zero multipliers and columns are ranked by cost.
3. Each class also keeps its cheapest columns by reduced cost until their pools could hold
   twice its jobs (pruning by cumulative capacity, never a flat top-K), plus the greedy
   plan's columns, so the integer model can always do at least as well as greedy.
4. The integer model (HiGHS by default, CP-SAT on request; CP-SAT is hinted with the
   greedy plan; HiGHS in MathOpt takes no hint, so the greedy plan is its fallback)
   runs to the time limit or the relative gap; the better of it and greedy wins. The
   plan is checked by ``validate`` before it is returned.
5. When serving jobs are in the plan, the time left goes to a Lagrangian bound
   (``scheduler.bound``) that solves each serving job's covering problem in integers;
   the reported bound is the larger of it and the LP bound.
6. When the full candidate space is small enough to hold as one integer model (with the
   LP's cuts), the time still left goes to HiGHS on that model: its proven dual bound
   raises the reported bound (whole nodes per serving area and whole gangs leave an
   integrality gap no LP bound closes), and its solution replaces the plan when cheaper
   (pruned columns can miss the optimum where budgets bind; see bench/RESULTS.md).
Single-threaded solvers and a fixed seed make the same input give the same plan.
"""

from __future__ import annotations

import time

import numpy as np

from broker.errors import ConfigError
from scheduler.baselines import Units, first_come, greedy_regret, units_to_plan
from scheduler.bound import lagrangian_bound
from scheduler.explain import explain_plan
from scheduler.model import Duals, JobClass, Master, PoolIndex, build_classes, reduced_costs
from scheduler.problem import Plan, Problem
from scheduler.validate import check

SOLVERS = ("highs", "cpsat")
PRICE_TOL = 1e-7
COLUMNS_PER_ROUND = 8
SERVING_COLUMNS = 200
DENSE_SHARE_PROVIDERS = 8
# The integer solver measures its gap against its own (restricted) bound, which is above the
# full-space LP bound the plan reports; aim it at half the gap asked for.
MIP_GAP_SHARE = 0.5
CG_TIME_SHARE = 0.4  # column generation may use this share of the time limit
MIP_TIME_SHARE = 0.8  # the rest of the time limit may tighten the bound
LAGRANGIAN_MAX_SERVING = 100  # one small integer solve per serving job: skip beyond
# The full-space integer bound: at most this many columns, and on a large model only with
# enough time left for HiGHS's presolve and root LP (10-15 s at 90k columns on one core).
FULL_BOUND_MAX_COLUMNS = 120_000
FULL_BOUND_LARGE_COLUMNS = 20_000
FULL_BOUND_LARGE_MIN_SECONDS = 15.0


class InvalidPlan(AssertionError):
    """The solver produced a plan that the independent checker rejects (a bug)."""


def solve(
    problem: Problem,
    *,
    solver: str = "highs",
    time_limit: float = 30.0,
    relative_gap: float = 0.005,
    seed: int | None = None,
    explain: bool = True,
) -> Plan:
    if solver not in SOLVERS:
        raise ConfigError(f"solver: must be one of {', '.join(SOLVERS)}, not {solver!r}")
    start = time.perf_counter()
    seed = problem.seed if seed is None else seed
    classes = build_classes(problem)
    pools = PoolIndex.of(problem)
    timings: dict[str, float] = {}

    # warm start: the better of greedy-by-regret and first-come failover
    greedy, greedy_plan = min(
        ((units, units_to_plan(problem, classes, units, solver="greedy"))
         for units in (greedy_regret(problem, classes), first_come(problem, classes))),
        key=lambda pair: pair[1].objective,
    )
    timings["first_feasible"] = time.perf_counter() - start

    lp_bound, duals_columns, lp_model = _column_generation(
        problem, classes, pools, greedy, deadline=start + CG_TIME_SHARE * time_limit
    )
    timings["lp_bound"] = time.perf_counter() - start
    columns = _enrich(problem, classes, pools, duals_columns, greedy)

    mip = Master(problem, classes, pools, integer=True,
                 dense_share=_dense_share(problem, solver),
                 integral_total=solver == "cpsat")
    mip.copy_cuts_from(lp_model)
    for cls in classes:
        mine = columns.get(cls.index)
        if mine is not None and len(mine):
            mip.add_columns(cls, mine)
    serving = sum(1 for cls in classes if cls.kind == "inference")
    bound_later = 0 < serving <= LAGRANGIAN_MAX_SERVING
    share = MIP_TIME_SHARE if bound_later else 1.0
    remaining = share * time_limit - (time.perf_counter() - start)
    restricted = mip.solve_mip(
        solver, time_limit=remaining, relative_gap=relative_gap * MIP_GAP_SHARE, seed=seed,
        hint=greedy,
    )
    if lp_model.duals is not None and bound_later:
        # Serving units are whole nodes: the Lagrangian bound closes much of that LP gap.
        stronger = lagrangian_bound(problem, classes, pools, lp_model.duals,
                                    deadline=start + time_limit)
        if stronger is not None and stronger > lp_bound:
            lp_bound = stronger
    full_bound, full_units = _full_space(
        problem, classes, pools, lp_model, deadline=start + time_limit,
        relative_gap=relative_gap * MIP_GAP_SHARE, seed=seed,
    )
    if full_bound is not None and full_bound > lp_bound:
        lp_bound = full_bound
    plan = greedy_plan
    for found in (restricted.units, full_units):
        if found is not None:
            candidate = units_to_plan(problem, classes, found, solver=solver)
            if candidate.objective < plan.objective - 1e-9 or (
                plan is greedy_plan and candidate.objective <= plan.objective + 1e-9
            ):
                plan = candidate
    plan.solver = solver
    status = restricted.status
    plan.status = status if plan is not greedy_plan else f"{status} (greedy plan kept)"
    plan.lp_bound = min(lp_bound, plan.objective)
    plan.gap = _gap(plan.objective, plan.lp_bound)
    plan.solve_seconds = time.perf_counter() - start
    timings["total"] = plan.solve_seconds
    plan.timings = timings
    problems = check(problem, plan)
    if problems:
        raise InvalidPlan("; ".join(problems[:5]))
    if explain:
        plan.explain = explain_plan(problem, plan)
        for job_id, info in plan.explain.items():
            if job_id in plan.unplaced:
                plan.unplaced[job_id] = info["reason"]
    return plan


def _full_space(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    lp_model: Master,
    *,
    deadline: float,
    relative_gap: float,
    seed: int,
) -> tuple[float | None, Units | None]:
    """HiGHS on the integer model over every candidate: its dual bound and its best
    solution, each None when the space is too large for the time left or none was found."""
    ranges = [problem.candidates.of_shape(cls.shape) for cls in classes]
    columns = sum(r.stop - r.start for r in ranges)
    left = deadline - time.perf_counter()
    too_big = columns > FULL_BOUND_MAX_COLUMNS or (
        columns > FULL_BOUND_LARGE_COLUMNS and left < FULL_BOUND_LARGE_MIN_SECONDS
    )
    # Under a share cap HiGHS did not return within minutes on the full M-size model (the
    # cap rows touch every column), so a capped plan keeps the restricted model's result.
    if columns == 0 or too_big or left <= 0 or problem.share_cap is not None:
        return None, None
    full = Master(problem, classes, pools, integer=True,
                  dense_share=_dense_share(problem, "highs"))
    full.copy_cuts_from(lp_model)
    for cls, rows in zip(classes, ranges, strict=True):
        if rows.stop > rows.start:
            full.add_columns(cls, np.arange(rows.start, rows.stop))
    left = deadline - time.perf_counter()
    if left <= 0.5:
        return None, None
    result = full.solve_mip("highs", time_limit=left, relative_gap=relative_gap, seed=seed)
    return result.bound, result.units


def _dense_share(problem: Problem, solver: str) -> bool:
    """Share rows in the integer model: dense (each column in every provider's row) when
    providers are few; HiGHS branches far better on them than on the auxiliary total, which
    the column generation keeps so that pricing stays sparse. CP-SAT cannot hold a
    continuous total, so it always gets dense rows when the share is on spend."""
    if solver == "cpsat" and problem.share_on == "spend":
        return True
    return len(problem.providers) <= DENSE_SHARE_PROVIDERS


def _gap(objective: float, bound: float) -> float:
    if objective <= 0:
        return 0.0
    return max(0.0, (objective - bound) / objective)


def lp_bound(problem: Problem, *, time_budget: float = 60.0) -> float:
    """The full-space LP lower bound alone (used by benchmarks and tests)."""
    classes = build_classes(problem)
    pools = PoolIndex.of(problem)
    bound, _, _ = _column_generation(problem, classes, pools, {},
                                  deadline=time.perf_counter() + time_budget)
    return bound


def _initial_columns(problem: Problem, cls: JobClass, greedy: Units) -> np.ndarray:
    rows = problem.candidates.of_shape(cls.shape)
    cheapest = np.arange(rows.start, min(rows.stop, rows.start + 4))
    mine = [cand for (k, cand) in greedy if k == cls.index]
    return np.unique(np.concatenate([cheapest, np.asarray(mine, dtype=np.int64)]))


def _column_generation(
    problem: Problem, classes: list[JobClass], pools: PoolIndex, greedy: Units,
    *, deadline: float, cuts: bool = True,
) -> tuple[float, dict[int, np.ndarray], Master]:
    """LP bound over the full space, and the final reduced costs per class."""
    master = Master(problem, classes, pools, integer=False)
    costs = problem.candidates.cost
    scale = max(1.0, float(np.median(costs))) if len(costs) else 1.0
    for cls in classes:
        master.add_columns(cls, _initial_columns(problem, cls, greedy))
    while True:
        objective, duals = master.solve_lp()
        if duals is None:
            return _bound_without_duals(problem, classes, pools, master, deadline)
        lagrange = 0.0
        added = 0
        rcs: dict[int, np.ndarray] = {}
        out_of_time = time.perf_counter() > deadline
        for cls in classes:
            rc = reduced_costs(problem, pools, cls, duals)
            rcs[cls.index] = rc
            negative = np.flatnonzero(rc < -PRICE_TOL * scale)
            if len(negative) == 0:
                continue
            start = problem.candidates.of_shape(cls.shape).start
            present = np.asarray(master.by_class.get(cls.index, []), dtype=np.int64) - start
            fresh = negative[~np.isin(negative, present)]
            if out_of_time:
                bound = _bounds(problem, pools, cls, fresh + start)
                lagrange += float(np.sum(rc[fresh] * bound))
                continue
            best = fresh[np.argsort(rc[fresh], kind="stable")[:COLUMNS_PER_ROUND]]
            added += master.add_columns(cls, best + start)
        if out_of_time:
            return objective + lagrange, rcs, master
        if added == 0 and (not cuts or master.add_gang_cuts() + master.add_cover_cuts() == 0):
            return objective, rcs, master


def _bound_without_duals(
    problem: Problem, classes: list[JobClass], pools: PoolIndex, master: Master, deadline: float
) -> tuple[float, dict[int, np.ndarray], Master]:
    """No duals to price with (the LP solve returned none; an empty problem has no rows):
    the bound is the Lagrangian one at zero multipliers, else 0 (costs are never
    negative), and columns are ranked by cost alone."""
    zero = Duals.zero(problem, pools)
    bound = lagrangian_bound(problem, classes, pools, zero, deadline=deadline)
    rcs = {cls.index: reduced_costs(problem, pools, cls, zero) for cls in classes}
    return (0.0 if bound is None else bound), rcs, master


def _bounds(problem: Problem, pools: PoolIndex, cls: JobClass, cands: np.ndarray) -> np.ndarray:
    c = problem.candidates
    fit = pools.capacity[c.pool[cands]] // np.maximum(c.nodes[cands], 1)
    if cls.kind != "inference":
        fit = np.minimum(fit, cls.count)
    return fit.astype(np.float64)


def _enrich(
    problem: Problem, classes: list[JobClass], pools: PoolIndex,
    rcs: dict[int, np.ndarray], greedy: Units,
) -> dict[int, np.ndarray]:
    """Columns for the integer model: best by reduced cost until pools hold 2x the class."""
    c = problem.candidates
    out: dict[int, np.ndarray] = {}
    for cls in classes:
        rows = c.of_shape(cls.shape)
        rc = rcs.get(cls.index)
        if rc is None or len(rc) == 0:
            continue
        order = np.argsort(rc, kind="stable")
        order = order[np.isfinite(rc[order])]
        cands = order + rows.start
        fit = pools.capacity[c.pool[cands]] // np.maximum(c.nodes[cands], 1)
        near_zero = int(np.sum(rc[order] <= 1e-6 * max(1.0, cls.penalty)))
        if cls.kind == "inference":
            # units are small and mixed: keep them all up to a bound, best first, plus,
            # per demand key, enough units to serve it three times over
            picked = [cands[:SERVING_COLUMNS]]
            for a, (_, rate) in enumerate(cls.demand):
                mine_a = cands[c.area[cands] == a]
                fit_a = pools.capacity[c.pool[mine_a]] // np.maximum(c.nodes[mine_a], 1)
                served = np.cumsum(fit_a * c.rate[mine_a])
                picked.append(mine_a[: int(np.searchsorted(served, 3.0 * rate)) + 4])
            kept = np.concatenate(picked)
        else:
            need = 2.0 * cls.count
            # a pool counts once per class, whatever node counts it offers
            first = _first_of_pool(c.pool[cands])
            supply = np.cumsum(np.where(first, np.minimum(fit, cls.count), 0))
            keep = int(np.searchsorted(supply, need)) + 1
            kept = cands[: max(keep, min(near_zero, 400), 8)]
        mine = [cand for (k, cand) in greedy if k == cls.index]
        out[cls.index] = np.unique(np.concatenate([kept, np.asarray(mine, dtype=np.int64)]))
    return out


def _first_of_pool(pool: np.ndarray) -> np.ndarray:
    _, first_index = np.unique(pool, return_index=True)
    mask = np.zeros(len(pool), dtype=bool)
    mask[first_index] = True
    return mask


def describe(plan: Plan) -> str:
    gap = "-" if plan.gap is None else f"{plan.gap:.3%}"
    return (f"{plan.solver}: cost {plan.cost:.2f}, bound {plan.lp_bound}, gap {gap}, "
            f"{len(plan.unplaced)} unplaced, {plan.solve_seconds:.1f} s")


