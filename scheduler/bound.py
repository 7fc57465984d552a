"""Lagrangian lower bounds: valid for every integer plan, never below zero.

Relax the rows shared between job classes (pool capacity, quotas, team budgets, the share
rows and the rounding cuts) with LP duals mu <= 0 and keep each class's own rows. What is left
splits by class:

- a training class keeps its row "each job one gang or unplaced": it takes, unit by unit,
  its cheapest candidates by linking-reduced cost (each up to its bound) or leaves the job
  unplaced at its penalty; so the bound never counts more gangs than the class has jobs;
- a serving job either solves its own small covering problem (whole nodes per demand key)
  with the solver, whose proven dual bound stands in when it stops early
  (``lagrangian_bound``), or, cheaply, has its covering rows relaxed too
  (``relaxed_bound``, computed in every column-generation round).

L(mu) = sum_r mu_r b_r + sum_k min_k(mu) is a lower bound on every integer plan for *any*
multipliers of the right sign, so the duals of an unfinished column generation still give
one; costs and penalties are never negative, so 0 is one too, and the largest of them all
is what a plan reports. With the LP's optimal duals L is >= the LP bound; with mu = 0 it is
each class alone at its cheapest, the fallback when the LP solve returns no duals.

``share_prices`` relaxes the share rows alone, for the full-space integer model under a
share cap: the rest of that model stays whole, so its bound closes more than L does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from scheduler.model import (
    Duals,
    JobClass,
    PoolIndex,
    hard_stop_grace,
    quiet_parameters,
    reduced_costs,
    unit_bounds,
)
from scheduler.problem import INFERENCE, Problem
from scheduler.solver_process import run_in_child

SERVING_NODES = 2_000  # branch-and-bound nodes per serving job's covering problem


def lagrangian_bound(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    duals: Duals | None,
    *,
    deadline: float,
    serving_nodes: int = SERVING_NODES,
    cost_weight: float = 1.0,
) -> float | None:
    """The bound with each serving job's covering problem solved in integers, or None when
    the wall-clock safety stop ``deadline`` passes first (or the bound is unbounded).
    ``cost_weight``: the candidates' cost in the objective (``Master.cost_weight``).

    ``duals`` None (the LP solve returned none) means all multipliers zero: each class
    alone at its cheapest, which is still a valid, if weaker, bound."""
    if duals is None:
        duals = Duals.zero(problem, pools)
    value = _linking_constant(problem, pools, duals)
    if value is None:
        return None
    c = problem.candidates
    # serving jobs alike (same shape, demand and penalty, and so, priced alike, the same
    # reduced costs) have the same covering problem: solved once (L synthetic at capacity
    # x0.7: 11 serving jobs, 4 of them one problem of 3.9 s)
    solved: dict[tuple[object, ...], float] = {}
    for cls in classes:
        if time.perf_counter() > deadline:
            return None
        rows = c.of_shape(cls.shape)
        rc = reduced_costs(problem, pools, cls, duals, linking_only=True, cost_weight=cost_weight)
        if cls.kind == INFERENCE:
            key = (cls.shape, cls.demand, cls.min_replicas, cls.penalty, rc.tobytes())
            sub = solved.get(key)
            if sub is None:
                sub = _serving(problem, pools, cls, rows.start, rc, deadline, serving_nodes)
                if sub is None:
                    return None
                solved[key] = sub
            value += sub
        else:
            value += _training(problem, pools, cls, rc)
    return max(value, 0.0)


def relaxed_bound(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    duals: Duals,
    rcs: dict[int, np.ndarray],
) -> float | None:
    """The bound from ``rcs``, every class's full reduced costs under ``duals`` (as column
    generation computes them each round), with serving covering rows relaxed too: no
    solver call, so it is cheap enough for every round. None where it is unbounded."""
    value = _linking_constant(problem, pools, duals)
    if value is None:
        return None
    for cls in classes:
        rc = rcs.get(cls.index)
        if rc is None:
            continue
        if cls.kind == INFERENCE:
            value += _serving_relaxed(problem, pools, cls, duals, rc)
        else:
            value += _training(problem, pools, cls, rc + duals.cls_row.get(cls.index, 0.0))
    return max(value, 0.0)


def _linking_constant(problem: Problem, pools: PoolIndex, duals: Duals) -> float | None:
    """sum_r mu_r b_r over the shared rows; None when the share rows' auxiliary total has
    a negative reduced cost (the Lagrangian is then unbounded below)."""
    value = float(np.dot(duals.pool, pools.capacity))
    if problem.share_cap is not None:
        prices = share_prices(problem, pools, duals)
        if prices is None:
            return None
        value += prices.constant
    if len(problem.quotas):
        value += float(np.dot(duals.quota, [q.limit for q in problem.quotas]))
    value += sum(mu * problem.budgets[team] for team, mu in duals.budget.items())
    for p, cuts in duals.cuts.items():
        value += sum(mu * (int(pools.capacity[p]) // d) for d, mu in cuts)
    for q, cuts in duals.quota_cuts.items():
        value += sum(mu * (problem.quotas[q].limit // d) for d, mu in cuts)
    return value


@dataclass(frozen=True)
class SharePrices:
    """The share rows moved into the objective with their duals (the Lagrangian that
    relaxes only them): a candidate of provider v pays ``rate[v]`` per unit of its share
    weight (GPUs or spend) on top of its cost, and the bound gains ``constant``,
    sum_v mu_v room_v. A plan that keeps the cap costs at least its priced cost plus the
    constant, so a lower bound on the priced problem without the cap, plus the constant,
    holds for the capped one; at the converged LP's duals it is at least the LP bound."""

    problem: Problem
    pools: PoolIndex
    rate: np.ndarray  # per provider v: -(mu_total + mu_v), what a unit of its weight pays
    constant: float

    def of(self, cands: np.ndarray) -> np.ndarray:
        c = self.problem.candidates
        if self.problem.share_on == "gpus":
            weight = c.gpus[cands].astype(np.float64)
        else:
            weight = c.cost[cands]
        prices: np.ndarray = weight * self.rate[self.pools.provider[c.pool[cands]]]
        return prices


def share_prices(problem: Problem, pools: PoolIndex, duals: Duals) -> SharePrices | None:
    """The share rows priced at ``duals``; None where there is no cap, or where the
    auxiliary total's reduced cost is negative (the Lagrangian is then unbounded below)."""
    share = problem.share_cap
    if share is None or duals.total + share * float(duals.provider.sum()) < -1e-7:
        return None
    constant = sum(
        float(mu) * problem.share_room(name)
        for mu, name in zip(duals.provider, pools.providers, strict=True)
    )
    return SharePrices(problem, pools, -(duals.total + duals.provider), constant)


def _training(problem: Problem, pools: PoolIndex, cls: JobClass, rc: np.ndarray) -> float:
    """min sum rc y + penalty u over sum y + u = count, 0 <= y <= bound: the class's jobs
    fill its cheapest columns first, one gang each; the rest stay unplaced."""
    start = problem.candidates.of_shape(cls.shape).start
    usable = np.flatnonzero(np.isfinite(rc) & (rc < cls.penalty))
    # At most `count` columns are used (each holds at least one job): the cheapest that
    # can hold a unit. A finite reduced cost already says that a candidate fits, so the
    # unit bounds are read for the cheapest `count` alone, not for every candidate every
    # round (XL: this bound took 27.5 s of column generation's 74 s, now 4.4 s)
    few = _cheapest(rc, usable, cls.count)
    bounds = unit_bounds(problem, pools, cls, few + start)
    if not bounds.all():  # one of them cannot hold a unit: the cheapest of those that can
        usable = usable[unit_bounds(problem, pools, cls, usable + start) > 0]
        few = _cheapest(rc, usable, cls.count)
        bounds = unit_bounds(problem, pools, cls, few + start)
    sort = np.argsort(rc[few], kind="stable")
    order, bounds = few[sort], bounds[sort]
    taken = np.minimum(bounds, np.maximum(cls.count - (np.cumsum(bounds) - bounds), 0))
    left = cls.count - int(taken.sum())
    return float(np.dot(taken, rc[order])) + left * cls.penalty


def _cheapest(rc: np.ndarray, among: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` of ``among`` with the least ``rc`` (all where no more)."""
    if len(among) <= count:
        return among
    chosen: np.ndarray = among[np.argpartition(rc[among], count - 1)[:count]]
    return chosen


def _serving_relaxed(
    problem: Problem, pools: PoolIndex, cls: JobClass, duals: Duals, rc: np.ndarray
) -> float:
    """The serving job's own rows relaxed as well: their duals times their right-hand
    sides, plus each column (and "unplaced") at its bound where its reduced cost is
    negative."""
    own = sum(duals.cover.get((cls.index, a), 0.0) * rate for a, (_, rate) in enumerate(cls.demand))
    own += duals.replicas.get(cls.index, 0.0) * cls.min_replicas
    for a, t, mu in duals.cover_cuts.get(cls.index, ()):
        own += mu * math.ceil(cls.demand[a][1] / t - 1e-9)
    value = own + min(0.0, cls.penalty - own)  # u in [0, 1] with reduced cost penalty - own
    negative = np.flatnonzero(np.isfinite(rc) & (rc < 0))
    if len(negative):
        start = problem.candidates.of_shape(cls.shape).start
        value += float(np.dot(rc[negative], unit_bounds(problem, pools, cls, negative + start)))
    return value


def _serving(
    problem: Problem,
    pools: PoolIndex,
    cls: JobClass,
    start: int,
    rc: np.ndarray,
    deadline: float,
    nodes: int,
) -> float | None:
    import datetime

    from ortools.math_opt.python import mathopt

    c = problem.candidates
    model = mathopt.Model(name="serving")
    u = model.add_binary_variable(name="u")
    objective = cls.penalty * u
    covers = [rate * u for _, rate in cls.demand]
    replicas = cls.min_replicas * u
    cands = np.flatnonzero(np.isfinite(rc))
    for i, ub in zip(cands, unit_bounds(problem, pools, cls, cands + start), strict=True):
        if ub <= 0:
            continue
        cand = start + int(i)
        y = model.add_integer_variable(lb=0, ub=int(ub))
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
    # a node limit makes the bound the same on any machine; the clock only as a safety stop
    params = quiet_parameters(
        time_limit=datetime.timedelta(seconds=min(left, 1e6)),
        node_limit=nodes,
        relative_gap_tolerance=1e-6,
    )
    params.highs.int_options["threads"] = 1

    def work() -> float | None:
        result = mathopt.solve(model, mathopt.SolverType.HIGHS, params=params)
        if result.termination.limit == mathopt.Limit.TIME:
            return None
        bound = result.termination.objective_bounds.dual_bound
        return None if not math.isfinite(bound) else float(bound)

    return run_in_child(work, seconds=left + hard_stop_grace(left))
