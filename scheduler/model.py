"""The placement model over job classes (OR-Tools MathOpt).

Identical jobs (same shape, team and priority) form one class with a count; a column is
(class, candidate) with an integer number of units. Rows:

- training class k:  sum_c y[k,c] + u[k] = n_k          (each job one gang, or unplaced)
- inference class k: sum_c rate_c y[k,c] + R_a u[k] >= R_a per demand key a, and
                     sum_c replicas_c y[k,c] + m_k u[k] >= m_k (minimum replicas)
- pool p:            sum nodes_c y[.,c] <= capacity_p
- quota q:           sum gpus_c y[.,c] over pools of q <= limit_q
- team t:            sum cost_c y[.,c] over classes of t <= budget left_t
- rounding cuts:    mixed-integer roundings of pool and quota rows (``rounding_coefficients``),
                     added where the LP point breaks them; they hold for every integer plan
- provider share:    sum w_c y - T = 0 and, per provider v, sum_{c in v} w_c y - s T <= room_v
                     (w = GPUs or cost; room_v = s x held - held_v, at least 0, from what
                     live allocations hold: ``Problem.share_room``; the auxiliary total T
                     keeps every row sparse; with few providers the integer model may
                     write them densely instead)

Objective: sum cost_c y + penalty_k u_k. ``reduced_costs`` prices any candidate of a class
against LP duals, which drives column generation over the full candidate space.
ortools is imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scheduler.lp_solution import ById, solve_lp
from scheduler.problem import INFERENCE, Job, Problem
from scheduler.solver_process import run_in_child, solver_log


@dataclass
class JobClass:
    index: int
    shape: int
    team: str
    priority: int
    kind: str
    jobs: list[int]  # job ids, ascending
    penalty: float  # per unplaced job
    demand: tuple[tuple[str, float], ...] = ()
    min_replicas: int = 0

    @property
    def count(self) -> int:
        return len(self.jobs)


def build_classes(problem: Problem) -> list[JobClass]:
    """Group identical training jobs; every inference job is a class of its own."""
    groups: dict[tuple[str | int, ...], list[Job]] = {}
    for job in sorted(problem.jobs, key=lambda j: j.id):
        if job.kind == INFERENCE:
            key: tuple[str | int, ...] = ("inference", job.id)
        else:
            key = ("training", job.shape, job.team, job.priority)
        groups.setdefault(key, []).append(job)
    classes: list[JobClass] = []
    for jobs in sorted(groups.values(), key=lambda js: js[0].id):
        first = jobs[0]
        classes.append(
            JobClass(
                index=len(classes),
                shape=first.shape,
                team=first.team,
                priority=first.priority,
                kind=first.kind,
                jobs=[j.id for j in jobs],
                penalty=problem.penalty(first),
                demand=first.demand,
                min_replicas=first.min_replicas,
            )
        )
    return classes


@dataclass
class PoolIndex:
    """Per-pool arrays the model and the heuristics share."""

    capacity: np.ndarray
    provider: np.ndarray  # provider index per pool
    providers: list[str]
    quotas_of: list[list[int]]  # quota indices per pool
    price: np.ndarray
    quota_cap: np.ndarray  # tightest quota limit (GPUs) over each pool, inf where none
    in_quota: np.ndarray  # (quotas x pools) whether quota q counts pool p
    # ``fits`` per (shape, team): it does not change with the duals
    _fits: dict[tuple[int, str], np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def fits(self, problem: Problem, cls: JobClass) -> np.ndarray:
        """Which candidates of the class's shape fit an empty pool: its nodes, its quotas'
        GPUs and the team's budget (as one unit, ``unit_bounds`` > 0). Read once per
        solve: it was 45 % of the time of pricing every candidate each round (XL)."""
        key = (cls.shape, cls.team)
        if key not in self._fits:
            c = problem.candidates
            rows = c.of_shape(cls.shape)
            pool, nodes = c.pool[rows.start : rows.stop], c.nodes[rows.start : rows.stop]
            gpus = c.gpus[rows.start : rows.stop].astype(np.float64)
            fits = (self.capacity[pool] >= nodes) & (self.quota_cap[pool] >= gpus)
            budget = problem.budgets.get(cls.team)
            if budget is not None:
                fits &= c.cost[rows.start : rows.stop] <= budget
            self._fits[key] = fits
        return self._fits[key]

    @classmethod
    def of(cls, problem: Problem) -> PoolIndex:
        providers = problem.providers
        where = {name: i for i, name in enumerate(providers)}
        quotas_of: list[list[int]] = [[] for _ in problem.pools]
        in_quota = np.zeros((len(problem.quotas), len(problem.pools)), dtype=bool)
        for qi, quota in enumerate(problem.quotas):
            for pi, pool in enumerate(problem.pools):
                if quota.matches(pool):
                    quotas_of[pi].append(qi)
                    in_quota[qi, pi] = True
        return cls(
            capacity=np.array([p.capacity for p in problem.pools], dtype=np.int64),
            provider=np.array([where[p.provider] for p in problem.pools], dtype=np.int32),
            providers=providers,
            quotas_of=quotas_of,
            price=np.array([p.price_per_hour for p in problem.pools], dtype=np.float64),
            quota_cap=np.array(
                [min((problem.quotas[q].limit for q in qs), default=math.inf) for qs in quotas_of],
                dtype=np.float64,
            ),
            in_quota=in_quota,
        )


def unit_bound(problem: Problem, pools: PoolIndex, cls: JobClass, cand: int) -> int:
    """Most units of ``cand`` any plan can hold: pool nodes, quota GPUs, team budget."""
    c = problem.candidates
    pool = int(c.pool[cand])
    fit = int(pools.capacity[pool] // max(int(c.nodes[cand]), 1))
    gpus = int(c.gpus[cand])
    if gpus > 0 and math.isfinite(pools.quota_cap[pool]):
        fit = min(fit, int(pools.quota_cap[pool] // gpus))
    budget = problem.budgets.get(cls.team)
    if budget is not None and c.cost[cand] > 0:
        fit = min(fit, int(budget // float(c.cost[cand])))
    return min(fit, cls.count) if cls.kind != INFERENCE else fit


def unit_bounds(problem: Problem, pools: PoolIndex, cls: JobClass, cands: np.ndarray) -> np.ndarray:
    """Most units of each candidate any plan can hold (vectorised ``model.unit_bound``)."""
    c = problem.candidates
    pool = c.pool[cands]
    fit = pools.capacity[pool] // np.maximum(c.nodes[cands], 1)
    gpus = c.gpus[cands].astype(np.float64)
    quota = pools.quota_cap[pool]
    limited = np.isfinite(quota) & (gpus > 0)
    if limited.any():
        by_quota = np.floor(quota[limited] / gpus[limited]).astype(np.int64)
        fit[limited] = np.minimum(fit[limited], by_quota)
    budget = problem.budgets.get(cls.team)
    cost = c.cost[cands]
    if budget is not None:
        priced = cost > 0
        fit[priced] = np.minimum(fit[priced], np.floor(budget / cost[priced]).astype(np.int64))
    if cls.kind != INFERENCE:
        fit = np.minimum(fit, cls.count)
    out: np.ndarray = np.maximum(fit, 0)
    return out


@dataclass
class Duals:
    cls_row: dict[int, float]  # training classes
    cover: dict[tuple[int, int], float]  # (class, demand index)
    replicas: dict[int, float]
    pool: np.ndarray
    quota: np.ndarray
    budget: dict[str, float]
    total: float
    provider: np.ndarray
    quota_by_pool: np.ndarray | None = None
    cuts: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # pool -> (d, dual)
    quota_cuts: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # quota -> ...
    # inference class -> (demand index, unit t, dual) of cover rounding cuts
    cover_cuts: dict[int, list[tuple[int, float, float]]] = field(default_factory=dict)
    _pool_cuts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def pool_cuts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``cuts`` flattened, by pool and then in each pool's order: pool, divisor, dual.
        Made once (pricing reads it for every class), so ``cuts`` is complete by then."""
        if self._pool_cuts is None:
            flat = [(p, d, v) for p in sorted(self.cuts) for d, v in self.cuts[p]]
            pool, d, value = zip(*flat, strict=True) if flat else ((), (), ())
            self._pool_cuts = (
                np.asarray(pool, dtype=np.int64),
                np.asarray(d, dtype=np.int64),
                np.asarray(value, dtype=np.float64),
            )
        return self._pool_cuts

    @classmethod
    def zero(cls, problem: Problem, pools: PoolIndex) -> Duals:
        """All multipliers zero: what pricing falls back to when a solve has no duals."""
        return cls(
            cls_row={},
            cover={},
            replicas={},
            pool=np.zeros(len(problem.pools)),
            quota=np.zeros(len(problem.quotas)),
            budget={},
            total=0.0,
            provider=np.zeros(len(pools.providers)),
        )


@dataclass
class Master:
    """A MathOpt model over a growing set of columns (LP for pricing, or the final MIP)."""

    problem: Problem
    classes: list[JobClass]
    pools: PoolIndex
    integer: bool
    dense_share: bool = False
    integral_total: bool = False
    capped: bool = True  # False: no share rows (the full-space step prices them instead)
    # the columns' cost in the objective: 1, or 0 where only placement counts (the most
    # any plan can place: ``solve._most_placeable``); budget rows keep the full cost
    cost_weight: float = 1.0
    # the share rows moved into the objective (with ``capped`` False): what each candidate
    # pays on top of its cost (``bound.SharePrices.of``)
    prices: Callable[[np.ndarray], np.ndarray] | None = None
    model: Any = None
    columns: dict[tuple[int, int], Any] = field(default_factory=dict)
    unplaced: list[Any] = field(default_factory=list)
    by_class: dict[int, list[int]] = field(default_factory=dict)
    _rows: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ortools.math_opt.python import mathopt

        self.model = model = mathopt.Model(name="placement")
        self._cls_rows: dict[int, Any] = {}
        self._cover_rows: dict[tuple[int, int], Any] = {}
        self._replica_rows: dict[int, Any] = {}
        for cls in self.classes:
            u = model.add_variable(
                lb=0, ub=cls.count, is_integer=self.integer, name=f"u{cls.index}"
            )
            self.unplaced.append(u)
            model.objective.set_linear_coefficient(u, cls.penalty)
            if cls.kind == INFERENCE:
                for a, (_, rate) in enumerate(cls.demand):
                    row = model.add_linear_constraint(lb=rate, name=f"cover{cls.index}_{a}")
                    row.set_coefficient(u, rate)
                    self._cover_rows[(cls.index, a)] = row
                if cls.min_replicas > 0:
                    row = model.add_linear_constraint(lb=cls.min_replicas, name=f"rep{cls.index}")
                    row.set_coefficient(u, cls.min_replicas)
                    self._replica_rows[cls.index] = row
            else:
                row = model.add_linear_constraint(
                    lb=cls.count, ub=cls.count, name=f"job{cls.index}"
                )
                row.set_coefficient(u, 1.0)
                self._cls_rows[cls.index] = row
        self._pool_rows: dict[int, Any] = {}
        self._cut_rows: dict[tuple[int, int], Any] = {}
        self._cuts_of: dict[int, list[int]] = {}
        self._columns_of_pool: dict[int, list[tuple[int, Any]]] = {}
        self.values = ById([], [])
        self.duals: Duals | None = None
        self._cover_cut_rows: dict[tuple[int, int, float], Any] = {}
        self._quota_cut_rows: dict[tuple[int, int], Any] = {}
        self._quota_cuts_of: dict[int, list[int]] = {}
        self._columns_of_quota: dict[int, list[tuple[int, Any]]] = {}
        self._columns_of_area: dict[tuple[int, int], list[tuple[float, Any]]] = {}
        self._quota_rows: dict[int, Any] = {}
        self._budget_rows: dict[str, Any] = {}
        self._provider_rows: dict[int, Any] = {}
        self._total_row = None
        self._total = None
        # (variable ids, classes, candidates) of columns written by full_space.write_every_column
        self._bulk: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        share = self.problem.share_cap if self.capped else None
        if share is not None:
            for v, name in enumerate(self.pools.providers):
                self._provider_rows[v] = model.add_linear_constraint(
                    ub=self.problem.share_room(name), name=f"share{v}"
                )
            if not self.dense_share:
                # CP-SAT wants every variable integer; HiGHS does better with T continuous
                integral = self.integer and self.integral_total
                self._total = model.add_variable(lb=0, is_integer=integral, name="total")
                self._total_row = model.add_linear_constraint(lb=0, ub=0, name="total")
                self._total_row.set_coefficient(self._total, -1.0)
                for row in self._provider_rows.values():
                    row.set_coefficient(self._total, -share)

    def fix_unplaced(self, left_out: list[int]) -> None:
        """Penalties off and exactly ``left_out[k]`` of class k's jobs unplaced: the
        model's optimum is then the least cost of placing what a plan with those counts
        places (the jobs of a class are alike)."""
        for u, count in zip(self.unplaced, left_out, strict=True):
            self.model.objective.set_linear_coefficient(u, 0.0)
            u.lower_bound = u.upper_bound = float(count)

    def fix_columns(self, kind: str, units: dict[tuple[int, int], int]) -> None:
        """Every column of a ``kind`` class held at its ``units`` (0 where absent): the
        model then re-buys only the other classes, around what those hold."""
        for key, var in self.columns.items():
            if self.classes[key[0]].kind == kind:
                var.lower_bound = var.upper_bound = float(units.get(key, 0))

    # --- rows created on first use --------------------------------------------------

    def _pool_row(self, p: int) -> Any:
        row = self._pool_rows.get(p)
        if row is None:
            cap = float(self.pools.capacity[p])
            row = self.model.add_linear_constraint(ub=cap, name=f"pool{p}")
            self._pool_rows[p] = row
        return row

    def _quota_row(self, q: int) -> Any:
        row = self._quota_rows.get(q)
        if row is None:
            limit = float(self.problem.quotas[q].limit)
            row = self.model.add_linear_constraint(ub=limit, name=f"quota{q}")
            self._quota_rows[q] = row
        return row

    def _budget_row(self, team: str) -> Any:
        row = self._budget_rows.get(team)
        if row is None:
            row = self.model.add_linear_constraint(
                ub=self.problem.budgets[team], name=f"team_{team}"
            )
            self._budget_rows[team] = row
        return row

    def add_columns(self, cls: JobClass, cands: np.ndarray) -> int:
        """Add (class, candidate) columns not yet in the model; returns how many were added."""
        c = self.problem.candidates
        share = self.problem.share_cap if self.capped else None
        added = 0
        cands = np.asarray(cands, dtype=np.int64)
        prices = np.zeros(len(cands)) if self.prices is None else self.prices(cands)
        for cand, price in zip(cands.tolist(), prices.tolist(), strict=True):
            key = (cls.index, cand)
            if key in self.columns:
                continue
            ub = unit_bound(self.problem, self.pools, cls, cand)
            if ub <= 0:
                continue
            var = self.model.add_variable(lb=0, ub=ub, is_integer=self.integer)
            self.columns[key] = var
            self.by_class.setdefault(cls.index, []).append(cand)
            added += 1
            cost = float(c.cost[cand])
            self.model.objective.set_linear_coefficient(var, cost * self.cost_weight + price)
            if cls.kind == INFERENCE:
                area, rate = int(c.area[cand]), float(c.rate[cand])
                self._cover_rows[(cls.index, area)].set_coefficient(var, rate)
                self._columns_of_area.setdefault((cls.index, area), []).append((rate, var))
                for (k, a, t), row in self._cover_cut_rows.items():
                    if (k, a) == (cls.index, area):
                        row.set_coefficient(var, float(math.ceil(rate / t - 1e-9)))
                if cls.index in self._replica_rows:
                    self._replica_rows[cls.index].set_coefficient(var, float(c.replicas[cand]))
            else:
                self._cls_rows[cls.index].set_coefficient(var, 1.0)
            pool = int(c.pool[cand])
            nodes = int(c.nodes[cand])
            self._pool_row(pool).set_coefficient(var, float(nodes))
            self._columns_of_pool.setdefault(pool, []).append((nodes, var))
            cap = float(self.pools.capacity[pool])
            for d in self._cuts_of.get(pool, ()):
                if value := float(rounding_coefficients(nodes, d, cap)):
                    self._cut_rows[(pool, d)].set_coefficient(var, value)
            gpus = int(c.gpus[cand])
            for q in self.pools.quotas_of[pool]:
                self._quota_row(q).set_coefficient(var, float(gpus))
                self._columns_of_quota.setdefault(q, []).append((gpus, var))
                limit = float(self.problem.quotas[q].limit)
                for d in self._quota_cuts_of.get(q, ()):
                    if value := float(rounding_coefficients(gpus, d, limit)):
                        self._quota_cut_rows[(q, d)].set_coefficient(var, value)
            if cls.team in self.problem.budgets:
                self._budget_row(cls.team).set_coefficient(var, cost)
            if share is not None:
                weight = float(c.gpus[cand]) if self.problem.share_on == "gpus" else cost
                own = int(self.pools.provider[pool])
                if self.dense_share:
                    for v, row in self._provider_rows.items():
                        row.set_coefficient(var, weight * ((1.0 if v == own else 0.0) - share))
                else:
                    assert self._total_row is not None  # made with the share rows
                    self._total_row.set_coefficient(var, weight)
                    self._provider_rows[own].set_coefficient(var, weight)
        return added

    # --- rounding cuts ---------------------------------------------------------------

    def add_rounding_cuts(self) -> int:
        """Add the rounding cuts of pool rows (nodes) and quota rows (GPUs) that the LP
        point breaks; they stop the LP from packing 1.6 gangs into a pool, or a quota with
        gangs it cannot hold whole. Valid for every integer plan, so the LP bound stays a
        bound. Returns how many were added."""
        added = 0
        for pool, cols in sorted(self._columns_of_pool.items()):
            cap = float(self.pools.capacity[pool])
            for d in self._violated(cols, cap, self._cuts_of.get(pool, ())):
                self._cut_rows[(pool, d)] = self._rounding_row(cols, d, cap, f"cut{pool}_{d}")
                self._cuts_of.setdefault(pool, []).append(d)
                added += 1
        for q, cols in sorted(self._columns_of_quota.items()):
            limit = float(self.problem.quotas[q].limit)
            for d in self._violated(cols, limit, self._quota_cuts_of.get(q, ())):
                self._quota_cut_rows[(q, d)] = self._rounding_row(cols, d, limit, f"qcut{q}_{d}")
                self._quota_cuts_of.setdefault(q, []).append(d)
                added += 1
        return added

    def _violated(self, cols: list[tuple[int, Any]], rhs: float, have: Iterable[int]) -> list[int]:
        """Divisors d (sizes above 1 of the row's columns) whose rounding cut the
        LP point breaks, skipping those in ``have``."""
        used = [(a, self.values.get(var, 0.0)) for a, var in cols]
        if not any(abs(x - round(x)) > 1e-6 for _, x in used):
            return []  # an integral point keeps every valid cut
        sizes = np.array([a for a, _ in used], dtype=np.float64)
        values = np.array([x for _, x in used])
        out = []
        for d in sorted({a for a, x in used if a > 1} - set(have)):
            lhs = float(rounding_coefficients(sizes, d, rhs) @ values)
            if lhs > rhs // d + 1e-6:
                out.append(d)
        return out

    def _rounding_row(self, cols: list[tuple[int, Any]], d: int, rhs: float, name: str) -> Any:
        row = self.model.add_linear_constraint(ub=float(rhs // d), name=name)
        for a, var in cols:
            if value := float(rounding_coefficients(a, d, rhs)):
                row.set_coefficient(var, value)
        return row

    def add_cover_cuts(self) -> int:
        """Rounding cuts of serving demand rows: with unit size t,
        sum ceil(rate/t) y + ceil(R/t) u >= ceil(R/t) holds for every integer plan."""
        added = 0
        for (k, a), cols in sorted(self._columns_of_area.items()):
            used = [(rate, self.values.get(var, 0.0)) for rate, var in cols]
            if not any(abs(x - round(x)) > 1e-6 for _, x in used):
                continue
            need = self.classes[k].demand[a][1]
            u = self.values.get(self.unplaced[k], 0.0)
            for t in sorted({rate for rate, x in used if abs(x - round(x)) > 1e-6}):
                if (k, a, t) in self._cover_cut_rows:
                    continue
                rhs = math.ceil(need / t - 1e-9)
                lhs = sum(math.ceil(rate / t - 1e-9) * x for rate, x in used) + rhs * u
                if lhs < rhs - 1e-6:
                    self._add_cover_cut(k, a, t)
                    added += 1
        return added

    def _add_cover_cut(self, k: int, a: int, t: float) -> None:
        rhs = math.ceil(self.classes[k].demand[a][1] / t - 1e-9)
        name = f"cover_cut{k}_{a}_{len(self._cover_cut_rows)}"
        row = self.model.add_linear_constraint(lb=float(rhs), name=name)
        row.set_coefficient(self.unplaced[k], float(rhs))
        for rate, var in self._columns_of_area.get((k, a), []):
            row.set_coefficient(var, float(math.ceil(rate / t - 1e-9)))
        self._cover_cut_rows[(k, a, t)] = row

    def copy_cuts_from(self, other: Master, *, roundings: bool = True) -> None:
        """Start with the cuts another model found (before any column is added); without
        ``roundings``, only its serving cover cuts."""
        if roundings:
            for pool, d in sorted(other._cut_rows):
                cap = int(self.pools.capacity[pool])
                self._cut_rows[(pool, d)] = self.model.add_linear_constraint(
                    ub=float(cap // d), name=f"cut{pool}_{d}"
                )
                self._cuts_of.setdefault(pool, []).append(d)
            for q, d in sorted(other._quota_cut_rows):
                limit = float(self.problem.quotas[q].limit)
                self._quota_cut_rows[(q, d)] = self.model.add_linear_constraint(
                    ub=float(limit // d), name=f"qcut{q}_{d}"
                )
                self._quota_cuts_of.setdefault(q, []).append(d)
        for k, a, t in sorted(other._cover_cut_rows):
            self._add_cover_cut(k, a, t)

    # --- solving --------------------------------------------------------------------

    def solve_lp(self) -> tuple[float, Duals | None]:
        """The LP optimum and its duals; duals are None when the solver returns none (an
        empty model, with no rows, has nothing to price against)."""
        solved = solve_lp(self.model, quiet_parameters())
        self.values = solved.values
        if solved.duals is None:
            self.duals = None
            return solved.objective, None
        dual = solved.duals
        n_pools = len(self.problem.pools)
        pool = np.zeros(n_pools)
        for p, row in self._pool_rows.items():
            pool[p] = dual[row]
        quota = np.zeros(len(self.problem.quotas))
        for q, row in self._quota_rows.items():
            quota[q] = dual[row]
        provider = np.zeros(len(self.pools.providers))
        for v, row in self._provider_rows.items():
            provider[v] = dual[row]
        duals = Duals(
            cls_row={k: dual[row] for k, row in self._cls_rows.items()},
            cover={k: dual[row] for k, row in self._cover_rows.items()},
            replicas={k: dual[row] for k, row in self._replica_rows.items()},
            pool=pool,
            quota=quota,
            budget={t: dual[row] for t, row in self._budget_rows.items()},
            total=dual[self._total_row] if self._total_row is not None else 0.0,
            provider=provider,
        )
        if len(quota):
            duals.quota_by_pool = _pool_quota_sums(self.pools, quota)
        for (p, d), row in sorted(self._cut_rows.items()):
            duals.cuts.setdefault(p, []).append((d, dual[row]))
        for (q, d), row in sorted(self._quota_cut_rows.items()):
            duals.quota_cuts.setdefault(q, []).append((d, dual[row]))
        for (k, a, t), row in sorted(self._cover_cut_rows.items()):
            duals.cover_cuts.setdefault(k, []).append((a, t, dual[row]))
        self.duals = duals
        return solved.objective, duals

    def solve_mip(
        self,
        solver: str,
        *,
        time_limit: float,
        relative_gap: float,
        seed: int,
        nodes: int,
        hint: dict[tuple[int, int], int] | None = None,
        root_bound: bool = False,
        target: float | None = None,
        solutions: int | None = None,
        cutoff: float | None = None,
    ) -> MipResult:
        """Integer solve limited by work (``nodes`` branch-and-bound nodes for HiGHS; for
        CP-SAT, one deterministic second per hundred nodes), so that the result does not
        depend on the machine's speed or load; ``time_limit`` is only a safety stop, and
        the result says when it fired. The solve runs in a child process that is killed
        ``hard_stop_grace`` past it, since HiGHS does not always stop at its own limit
        (``solver_process``); a killed solve found nothing. The best units found and the
        proven bound.

        ``root_bound`` (HiGHS): only the root node's cutting planes, for their bound; no
        presolve, primal heuristics or restarts, which on a large model take several times
        as long as the cuts and do not raise the bound. ``target`` (HiGHS): stop at the
        first solution whose objective is at most this. ``solutions`` and ``cutoff``
        (HiGHS): stop at this many solutions, each with an objective below ``cutoff``.
        ``hint`` (CP-SAT only): units per column to start from. HiGHS is not given it:
        started from one, it searched near it and found less (L catalog with the
        placement fixed: nothing better in 90 nodes, where without it a plan 5 % cheaper
        came at the root)."""
        import datetime
        import math

        from ortools.math_opt.python import mathopt

        kind = mathopt.SolverType.CP_SAT if solver == "cpsat" else mathopt.SolverType.HIGHS
        params = quiet_parameters(
            time_limit=datetime.timedelta(seconds=max(time_limit, 0.5)),
            relative_gap_tolerance=relative_gap,
            random_seed=seed,
        )
        if kind == mathopt.SolverType.CP_SAT:
            params.threads = 1
            params.cp_sat.max_deterministic_time = max(nodes / 100.0, 1.0)
        else:
            params.node_limit = 1 if root_bound else nodes
            params.highs.int_options["threads"] = 1
            if target is not None:
                params.highs.double_options["objective_target"] = target
            if solutions is not None:
                params.highs.int_options["mip_max_improving_sols"] = solutions
            if cutoff is not None:
                params.highs.double_options["objective_bound"] = cutoff
            if root_bound:
                params.highs.string_options["presolve"] = "off"
                params.highs.double_options["mip_heuristic_effort"] = 0.0
                for option in ROOT_BOUND_OFF:
                    params.highs.bool_options[option] = False
        model_params = None
        if hint and kind == mathopt.SolverType.CP_SAT:
            values = {var: float(hint.get(key, 0)) for key, var in self.columns.items()}
            model_params = mathopt.ModelSolveParameters(
                solution_hints=[mathopt.SolutionHint(variable_values=values)]
            )

        def work() -> MipResult:
            result = mathopt.solve(self.model, kind, params=params, model_params=model_params)
            bound = float(result.termination.objective_bounds.dual_bound)
            found = MipResult(
                units=None,
                status=result.termination.reason.name.lower(),
                bound=bound if math.isfinite(bound) else None,
                clock_stop=result.termination.limit == mathopt.Limit.TIME,
            )
            if result.has_primal_feasible_solution():
                found.units = self._units(result.variable_values())
            return found

        found = run_in_child(work, seconds=max(time_limit, 0.5) + hard_stop_grace(time_limit))
        if found is None:
            return MipResult(units=None, status="no_solution_found", bound=None, clock_stop=True)
        return found

    def _units(self, values: dict[Any, float]) -> dict[tuple[int, int], int]:
        """Units per column of a solution, over the named columns and the bulk-written
        ones."""
        units = {k: round(values[v]) for k, v in self.columns.items() if values[v] > 0.5}
        if self._bulk is not None:
            by_id = {var.id: x for var, x in values.items() if x > 0.5}
            units.update(
                ((int(k), int(cand)), round(by_id[int(i)]))
                for i, k, cand in zip(*self._bulk, strict=True)
                if int(i) in by_id
            )
        return units


# HiGHS switches a root-bound-only solve turns off (see Master.solve_mip)
ROOT_BOUND_OFF = (
    "mip_allow_restart",
    "mip_heuristic_run_feasibility_jump",
    "mip_heuristic_run_rins",
    "mip_heuristic_run_rens",
    "mip_heuristic_run_root_reduced_cost",
    "mip_heuristic_run_zi_round",
    "mip_heuristic_run_shifting",
)


@dataclass
class MipResult:
    """An integer solve's outcome: units per column (None: none found), the solver's
    termination, and its proven dual bound (None: none proven)."""

    units: dict[tuple[int, int], int] | None
    status: str
    bound: float | None
    clock_stop: bool = False  # the wall-clock safety stop ended it (not the work limit)


def hard_stop_grace(time_limit: float) -> float:
    """Seconds a solve's process may run past the solver's own time limit before it is
    killed: the model's copy into the solver is outside that limit."""
    return 2.0 + 0.1 * max(time_limit, 0.0)


def quiet_parameters(**settings: Any) -> Any:
    """MathOpt parameters with the solver's own log off (on where ``solver_log()``):
    a native solver printing on standard output would break a JSON document there."""
    from ortools.math_opt.python import mathopt

    log = solver_log()
    params = mathopt.SolveParameters(enable_output=log, **settings)
    params.highs.bool_options["output_flag"] = log
    params.highs.bool_options["log_to_console"] = log
    return params


def reduced_costs(
    problem: Problem,
    pools: PoolIndex,
    cls: JobClass,
    duals: Duals,
    *,
    linking_only: bool = False,
    cost_weight: float = 1.0,
) -> np.ndarray:
    """Reduced cost of every candidate of the class's shape (inf where it cannot fit).

    ``linking_only`` prices against the rows shared between classes only (pools, quotas,
    budgets, share, rounding cuts), leaving out the class's own rows (Lagrangian bound).
    ``cost_weight``: the candidates' cost in the objective (``Master.cost_weight``)."""
    c = problem.candidates
    rows = c.of_shape(cls.shape)
    sl = slice(rows.start, rows.stop)
    pool = c.pool[sl]
    nodes = c.nodes[sl]
    gpus = c.gpus[sl].astype(np.float64)
    cost = c.cost[sl]
    rc = cost * (cost_weight - duals.budget.get(cls.team, 0.0))
    rc = rc - duals.pool[pool] * nodes
    if duals.quota_by_pool is not None:
        rc = rc - duals.quota_by_pool[pool] * gpus
    if problem.share_cap is not None:
        weight = gpus if problem.share_on == "gpus" else cost
        rc = rc - weight * (duals.total + duals.provider[pools.provider[pool]])
    if linking_only:
        pass
    elif cls.kind == INFERENCE:
        area = c.area[sl].astype(np.int64)
        cover = np.array([duals.cover.get((cls.index, a), 0.0) for a in range(len(cls.demand))])
        if len(cover):
            rc = rc - cover[area] * c.rate[sl]
        rc = rc - duals.replicas.get(cls.index, 0.0) * c.replicas[sl]
        for a, t, value in duals.cover_cuts.get(cls.index, ()):
            mine = area == a
            rc[mine] -= value * np.ceil(c.rate[sl][mine] / t - 1e-9)
    else:
        rc = rc - duals.cls_row.get(cls.index, 0.0)
    if duals.cuts:
        # every (candidate, cut of its pool) pair at once, each candidate's cuts in order
        cut_pool, cut_d, cut_value = duals.pool_cuts()
        first = np.searchsorted(cut_pool, pool, side="left")
        count = np.searchsorted(cut_pool, pool, side="right") - first
        at = np.repeat(np.arange(len(pool)), count)
        k = np.repeat(first - np.cumsum(count) + count, count) + np.arange(len(at))
        coefficient = rounding_coefficients(nodes[at], cut_d[k], pools.capacity[cut_pool[k]])
        np.subtract.at(rc, at, cut_value[k] * coefficient)
    for q, quota_cuts in duals.quota_cuts.items():
        mine = pools.in_quota[q][pool]
        limit = float(problem.quotas[q].limit)
        for d, value in quota_cuts:
            rc[mine] -= value * rounding_coefficients(gpus[mine], d, limit)
    return np.where(pools.fits(problem, cls), rc, math.inf)


def rounding_coefficients(a: Any, d: Any, rhs: Any) -> Any:
    """Coefficients of the mixed-integer rounding of a row sum a_i y_i <= rhs over integers
    y >= 0 with divisor d: sum (floor(a_i/d) + max(0, r_i - r) / (d - r)) y_i <= floor(rhs/d),
    where r_i and r are the remainders of a_i and rhs modulo d. It holds for every integer
    plan, and is at least as strong as the plain rounding floor(a_i/d): a pool of 4 nodes
    takes one 3-node gang, or two 2-node ones, so (1/2) y_2 + y_3 <= 1. On L catalog these
    cuts of pool and quota rows raise the LP of placing the plan's jobs by 3.2 %. ``d`` and
    ``rhs`` may be arrays of ``a``'s shape: one cut for each entry."""
    a = np.asarray(a, dtype=np.float64)
    r = rhs % d
    return a // d + np.maximum(a % d - r, 0.0) / (d - r)


def _pool_quota_sums(pools: PoolIndex, quota_duals: np.ndarray) -> np.ndarray:
    out = np.zeros(len(pools.quotas_of))
    for p, qs in enumerate(pools.quotas_of):
        if qs:
            out[p] = float(sum(quota_duals[q] for q in qs))
    return out
