"""A Lagrangian lower bound that is at least the LP bound and often much closer.

Relax the rows shared between job classes (pool capacity, quotas, team budgets, the share
rows and the gang cuts) with the LP's optimal duals mu <= 0 and keep each class's own
rows. What is left splits by class and is solved exactly in integers:

- a training class takes, unit by unit, its cheapest candidates by linking-reduced cost
  (each up to its bound) or leaves the job unplaced at its penalty;
- a serving job solves its own small covering problem (whole nodes per demand key) with
  the solver; the solver's dual bound stands in when it stops early, so the bound stays
  valid.

L(mu) = sum_r mu_r b_r + sum_k min_k(mu) is a lower bound on every integer plan; with the
LP duals it is >= the LP bound (the class problems' own LP relaxations give the LP value).
With mu = 0 it is still a bound (each class at its cheapest, shared rows ignored): that is
the fallback when the LP solve returns no duals.
"""

from __future__ import annotations

import math
import time

import numpy as np

from scheduler.model import Duals, JobClass, PoolIndex, reduced_costs, solver_output_to_stderr
from scheduler.problem import INFERENCE, Problem


def lagrangian_bound(problem: Problem, classes: list[JobClass], pools: PoolIndex,
                     duals: Duals | None, *, deadline: float) -> float | None:
    """The bound, or None when it cannot be computed in time (or is unbounded).

    ``duals`` None (the LP solve returned none) means all multipliers zero: each class
    alone at its cheapest, which is still a valid, if weaker, bound."""
    if duals is None:
        duals = Duals.zero(problem, pools)
    share = problem.share_cap
    if share is not None and duals.total + share * float(duals.provider.sum()) < -1e-7:
        return None  # the auxiliary total would run off to infinity
    c = problem.candidates
    value = float(np.dot(duals.pool, pools.capacity))
    if len(problem.quotas):
        value += float(np.dot(duals.quota, [q.limit for q in problem.quotas]))
    value += sum(mu * problem.budgets[team] for team, mu in duals.budget.items())
    for p, cuts in duals.cuts.items():
        value += sum(mu * (int(pools.capacity[p]) // d) for d, mu in cuts)
    for cls in classes:
        if time.perf_counter() > deadline:
            return None
        rows = c.of_shape(cls.shape)
        rc = reduced_costs(problem, pools, cls, duals, linking_only=True)
        if cls.kind == INFERENCE:
            sub = _serving(problem, pools, cls, rows.start, rc, deadline)
            if sub is None:
                return None
            value += sub
            continue
        finite = np.flatnonzero(np.isfinite(rc) & (rc < cls.penalty))
        order = finite[np.argsort(rc[finite], kind="stable")]
        left = cls.count
        for i in order:
            if left == 0:
                break
            cand = rows.start + int(i)
            take = min(left, _bound(pools, problem, cls, cand))
            value += take * float(rc[i])
            left -= take
        value += left * cls.penalty
    return value


def _bound(pools: PoolIndex, problem: Problem, cls: JobClass, cand: int) -> int:
    from scheduler.model import unit_bound

    return unit_bound(problem, pools, cls, cand)


def _serving(problem: Problem, pools: PoolIndex, cls: JobClass, start: int, rc: np.ndarray,
             deadline: float) -> float | None:
    import datetime

    from ortools.math_opt.python import mathopt

    c = problem.candidates
    model = mathopt.Model(name="serving")
    u = model.add_binary_variable(name="u")
    objective = cls.penalty * u
    covers = [rate * u for _, rate in cls.demand]
    replicas = cls.min_replicas * u
    for i in np.flatnonzero(np.isfinite(rc)):
        cand = start + int(i)
        ub = _bound(pools, problem, cls, cand)
        if ub <= 0:
            continue
        y = model.add_integer_variable(lb=0, ub=ub)
        objective += float(rc[i]) * y
        covers[int(c.area[cand])] += float(c.rate[cand]) * y
        replicas += int(c.replicas[cand]) * y
    for (_, rate), expr in zip(cls.demand, covers, strict=True):
        model.add_linear_constraint(expr >= rate)
    if cls.min_replicas:
        model.add_linear_constraint(replicas >= cls.min_replicas)
    model.minimize(objective)
    left = deadline - time.perf_counter()
    if left <= 0.05:
        return None
    params = mathopt.SolveParameters(time_limit=datetime.timedelta(seconds=min(left, 5.0)),
                                     relative_gap_tolerance=1e-6)
    params.highs.int_options["threads"] = 1
    with solver_output_to_stderr():
        result = mathopt.solve(model, mathopt.SolverType.HIGHS, params=params)
    bound = result.termination.objective_bounds.dual_bound
    return None if not math.isfinite(bound) else float(bound)
