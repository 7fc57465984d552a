"""Heuristic plans: the rules other tools use, and the greedy warm start of the solver.

- ``per_job_cheapest``: every job takes its cheapest candidate as if it were alone (the
  rule of per-job brokers). It ignores capacity, quotas, budgets and the share cap, so its
  plan can over-book pools; ``validate`` reports those violations.
- ``first_come``: jobs in arrival order, each takes its cheapest candidate that still fits
  (capacity-aware failover).
- ``greedy_regret``: the job that would lose most by waiting (second-best minus best)
  goes first; higher priority before lower.
- ``lp_rounding``: an LP solution rounded, and greedy by regret around it (the solver's
  plan where the integer solve finds none).

All work on job classes (identical jobs share one candidate list) and return units per
(class, candidate). The plan is made to respect the provider share cap by moving or
dropping placements of any provider above it.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from scheduler.model import JobClass, PoolIndex, build_classes
from scheduler.problem import INFERENCE, Assignment, Plan, Problem

Units = dict[tuple[int, int], int]


class _Ledger:
    """What is still free: pool nodes, quota GPUs, team dollars."""

    def __init__(self, problem: Problem, pools: PoolIndex) -> None:
        self.problem = problem
        self.pools = pools
        self.cap = pools.capacity.astype(np.int64).copy()
        self.quota = np.array([q.limit for q in problem.quotas], dtype=np.float64)
        self.budget = dict(problem.budgets)
        self.provider_left: np.ndarray | None = None  # share-cap allowance per provider

    def max_units(self, cand: int, team: str) -> int:
        c = self.problem.candidates
        pool = int(c.pool[cand])
        units = int(self.cap[pool] // max(int(c.nodes[cand]), 1))
        gpus = int(c.gpus[cand])
        if gpus > 0:
            for q in self.pools.quotas_of[pool]:
                units = min(units, math.floor(self.quota[q] / gpus + 1e-9))
        if team in self.budget and c.cost[cand] > 0:
            units = min(units, math.floor(self.budget[team] / c.cost[cand] + 1e-9))
        if self.provider_left is not None:
            weight = _weight(self.problem, cand)
            left = self.provider_left[self.pools.provider[pool]]
            if weight > 0 and math.isfinite(left):
                units = min(units, math.floor(left / weight + 1e-9))
        return max(units, 0)

    def take(self, cand: int, team: str, units: int = 1) -> None:
        c = self.problem.candidates
        pool = int(c.pool[cand])
        self.cap[pool] -= int(c.nodes[cand]) * units
        for q in self.pools.quotas_of[pool]:
            self.quota[q] -= int(c.gpus[cand]) * units
        if team in self.budget:
            self.budget[team] -= float(c.cost[cand]) * units
        if self.provider_left is not None:
            self.provider_left[self.pools.provider[pool]] -= _weight(self.problem, cand) * units


def per_job_cheapest(problem: Problem, classes: list[JobClass] | None = None) -> Units:
    classes = classes if classes is not None else build_classes(problem)
    c = problem.candidates
    units: Units = {}
    for cls in classes:
        rows = c.of_shape(cls.shape)
        if len(rows) == 0:
            continue
        if cls.kind != INFERENCE:
            units[(cls.index, rows.start)] = cls.count
            continue
        ledger = None  # capacity is ignored on purpose
        _serve(problem, cls, rows, units, ledger)
    return units


def first_come(problem: Problem, classes: list[JobClass] | None = None) -> Units:
    return _greedy(problem, classes, regret=False)


def greedy_regret(problem: Problem, classes: list[JobClass] | None = None) -> Units:
    return _greedy(problem, classes, regret=True)


def _greedy(
    problem: Problem,
    classes: list[JobClass] | None,
    *,
    regret: bool,
    allowance: np.ndarray | None = None,
    start: Units | None = None,
) -> Units:
    """Greedy placement, around the units of ``start`` where given (in regret order
    only). Under a share cap, a first pass without it estimates the total weight T, and
    the second pass gives each provider at most share x T (then repairs)."""
    if start and not regret:
        raise ValueError("start: only in regret order")
    classes = classes if classes is not None else build_classes(problem)
    pools = PoolIndex.of(problem)
    if problem.share_cap is not None and allowance is None:
        first = _greedy(
            problem,
            classes,
            regret=regret,
            allowance=np.full(len(pools.providers), np.inf),
            start=start,
        )
        total = sum(_weight(problem, cand) * n for (_, cand), n in first.items())
        allowance = 0.98 * problem.share_cap * total + _rooms(problem, pools)
        return _greedy(problem, classes, regret=regret, allowance=allowance, start=start)
    ledger = _Ledger(problem, pools)
    if allowance is not None:
        ledger.provider_left = allowance.astype(np.float64).copy()
    c = problem.candidates
    units: Units = {}
    for (k, i), n in sorted((start or {}).items()):
        ledger.take(i, classes[k].team, n)
        units[(k, i)] = n
    ptr = {cls.index: c.of_shape(cls.shape).start for cls in classes}

    def first_fit(cls: JobClass) -> int | None:
        stop = c.of_shape(cls.shape).stop
        i = ptr[cls.index]
        while i < stop and ledger.max_units(i, cls.team) < 1:
            i += 1
        ptr[cls.index] = i
        return i if i < stop else None

    def second_cost(cls: JobClass, first: int) -> float:
        stop = c.of_shape(cls.shape).stop
        for i in range(first + 1, min(stop, first + 64)):
            if c.pool[i] != c.pool[first] and ledger.max_units(i, cls.team) >= 1:
                return float(c.cost[i])
        return cls.penalty

    def place(cls: JobClass, cand: int) -> None:
        ledger.take(cand, cls.team)
        units[(cls.index, cand)] = units.get((cls.index, cand), 0) + 1

    started = {k for k, _ in units}
    serving = [cls for cls in classes if cls.kind == INFERENCE and cls.index not in started]
    training = [cls for cls in classes if cls.kind != INFERENCE]
    for cls in sorted(serving, key=lambda k: (-k.priority, k.jobs[0])) if regret else []:
        _serve(problem, cls, c.of_shape(cls.shape), units, ledger)
    if not regret:
        by_id = {cls.jobs[0]: cls for cls in serving}
        order = sorted((job_id, cls) for cls in training for job_id in cls.jobs)
        events = sorted(
            [(j, "t", cls) for j, cls in order] + [(j, "s", cls) for j, cls in by_id.items()],
            key=lambda e: e[0],
        )
        for _, what, cls in events:
            if what == "s":
                _serve(problem, cls, c.of_shape(cls.shape), units, ledger)
                continue
            cand = first_fit(cls)
            if cand is not None:
                place(cls, cand)
    else:
        held = _per_class(units)
        left = {cls.index: cls.count - held.get(cls.index, 0) for cls in training}
        heap: list[tuple[float, float, int, int]] = []

        def push(cls: JobClass) -> None:
            cand = first_fit(cls)
            if cand is None:
                return
            gap = second_cost(cls, cand) - float(c.cost[cand])
            heapq.heappush(heap, (-cls.priority, -gap, cls.jobs[0], cls.index))

        for cls in training:
            if left[cls.index] > 0:
                push(cls)
        while heap:
            _, _, _, k = heapq.heappop(heap)
            cls = classes[k]
            cand = first_fit(cls)
            if cand is None:
                continue
            gap = second_cost(cls, cand) - float(c.cost[cand])
            if heap and (-cls.priority, -gap) > heap[0][:2]:
                heapq.heappush(heap, (-cls.priority, -gap, cls.jobs[0], k))
                continue
            place(cls, cand)
            left[k] -= 1
            if left[k] > 0:
                push(cls)
    if problem.share_cap is not None and allowance is not None and np.isfinite(allowance).all():
        ledger.provider_left = None
        _repair_share(problem, classes, pools, ledger, units)
    return units


def lp_rounding(
    problem: Problem, classes: list[JobClass], values: dict[tuple[int, int], float]
) -> Units:
    """A plan from an LP's units per (class, candidate) ``values``: each rounded down (a
    serving job's kept only where they still cover its demand), then, largest fraction
    first, a training column's one more unit where its class has a job left and the
    pools, quotas, budgets and (at the LP's own total) the share cap have room; greedy
    by regret places what is left and repairs the share cap.

    Next to the greedy plan it is the first plan the solver has: where the safety stop
    cuts the integer solve short, it is what stands. On L catalog with a 35 % spend cap,
    in 0.2 s: 80 jobs left out, where greedy leaves 436 and rounding down alone 175."""
    pools = PoolIndex.of(problem)
    whole = {key: math.floor(v + 1e-6) for key, v in values.items()}
    units = {key: n for key, n in whole.items() if n > 0}
    serving: dict[int, list[tuple[int, int]]] = {}
    for (k, cand), n in units.items():
        if classes[k].kind == INFERENCE:
            serving.setdefault(k, []).append((cand, n))
    for k, got in serving.items():
        if not covers(problem, classes[k], got):
            for cand, _ in got:
                del units[(k, cand)]
    ledger = _Ledger(problem, pools)
    if problem.share_cap is not None:
        total = sum(_weight(problem, cand) * v for (_, cand), v in values.items())
        ledger.provider_left = problem.share_cap * total + _rooms(problem, pools)
    for (k, cand), n in units.items():
        ledger.take(cand, classes[k].team, n)
    held = _per_class(units)
    fractions = sorted(
        (whole[key] - v, key)
        for key, v in values.items()
        if classes[key[0]].kind != INFERENCE and v - whole[key] > 1e-6
    )
    for _, (k, cand) in fractions:
        cls = classes[k]
        if held.get(k, 0) < cls.count and ledger.max_units(cand, cls.team) >= 1:
            ledger.take(cand, cls.team)
            units[(k, cand)] = units.get((k, cand), 0) + 1
            held[k] = held.get(k, 0) + 1
    return _greedy(problem, classes, regret=True, start=units)


def _rooms(problem: Problem, pools: PoolIndex) -> np.ndarray:
    """``Problem.share_room`` of each provider, in ``pools.providers`` order."""
    return np.array([problem.share_room(v) for v in pools.providers])


def _per_class(units: Units) -> dict[int, int]:
    held: dict[int, int] = {}
    for (k, _), n in units.items():
        held[k] = held.get(k, 0) + n
    return held


def _serve(
    problem: Problem, cls: JobClass, rows: range, units: Units, ledger: _Ledger | None
) -> bool:
    """Cover each demand key with the cheapest units per request/s; all or nothing."""
    c = problem.candidates
    cand = np.arange(rows.start, rows.stop)
    taken: list[tuple[int, int]] = []
    ok = True
    replicas = 0
    for a, (_, rate) in enumerate(cls.demand):
        mine = cand[c.area[cand] == a]
        mine = mine[np.lexsort((mine, c.cost[mine] / np.maximum(c.rate[mine], 1e-12)))]
        need = rate
        for i in (int(x) for x in mine):
            if need <= 1e-9:
                break
            want = math.ceil(need / float(c.rate[i]) - 1e-9)
            got = want if ledger is None else min(want, ledger.max_units(i, cls.team))
            if got <= 0:
                continue
            if ledger is not None:
                ledger.take(i, cls.team, got)
            taken.append((i, got))
            need -= got * float(c.rate[i])
            replicas += got * int(c.replicas[i])
        if need > 1e-9:
            ok = False
            break
    if ok and replicas < cls.min_replicas:
        spare = cand[np.lexsort((cand, c.cost[cand] / np.maximum(c.replicas[cand], 1)))]
        for i in (int(x) for x in spare):
            if replicas >= cls.min_replicas:
                break
            want = math.ceil((cls.min_replicas - replicas) / max(int(c.replicas[i]), 1))
            got = want if ledger is None else min(want, ledger.max_units(i, cls.team))
            if got <= 0:
                continue
            if ledger is not None:
                ledger.take(i, cls.team, got)
            taken.append((i, got))
            replicas += got * int(c.replicas[i])
        ok = replicas >= cls.min_replicas
    if not ok:
        if ledger is not None:
            for i, got in taken:
                ledger.take(i, cls.team, -got)
        return False
    for i, got in taken:
        units[(cls.index, i)] = units.get((cls.index, i), 0) + got
    return True


def _weight(problem: Problem, cand: int) -> float:
    c = problem.candidates
    return float(c.gpus[cand]) if problem.share_on == "gpus" else float(c.cost[cand])


def _repair_share(
    problem: Problem, classes: list[JobClass], pools: PoolIndex, ledger: _Ledger, units: Units
) -> None:
    """Move (or drop) placements of any provider above the share cap until none is."""
    c = problem.candidates
    share = problem.share_cap or 1.0
    n_prov = len(pools.providers)
    load = np.zeros(n_prov)
    for (_, cand), n in units.items():
        load[pools.provider[c.pool[cand]]] += _weight(problem, cand) * n
    rooms = _rooms(problem, pools)
    for _ in range(10 * max(sum(units.values()), 1)):
        total = load.sum()
        excess = load - share * total - rooms
        over = np.flatnonzero(excess > 1e-6)
        if len(over) == 0:
            return
        v = int(over[np.argmax(excess[over])])
        # Drop the lowest-priority, heaviest placement of provider v (whole job for serving).
        keys = [k for k in units if pools.provider[c.pool[k[1]]] == v]
        key = min(keys, key=lambda k: (classes[k[0]].priority, -_weight(problem, k[1]), k))
        cls = classes[key[0]]
        if cls.kind == INFERENCE:
            for other in [k for k in units if k[0] == cls.index]:
                n = units.pop(other)
                ledger.take(other[1], cls.team, -n)
                load[pools.provider[c.pool[other[1]]]] -= _weight(problem, other[1]) * n
            continue
        units[key] -= 1
        if units[key] == 0:
            del units[key]
        ledger.take(key[1], cls.team, -1)
        load[v] -= _weight(problem, key[1])
        total = load.sum()
        for i in c.of_shape(cls.shape):
            u = int(pools.provider[c.pool[i]])
            w = _weight(problem, i)
            if u == v or load[u] + w > share * (total + w) + rooms[u] + 1e-6:
                continue
            if ledger.max_units(i, cls.team) >= 1:
                ledger.take(i, cls.team)
                units[(cls.index, i)] = units.get((cls.index, i), 0) + 1
                load[u] += w
                break


def units_to_plan(
    problem: Problem, classes: list[JobClass], units: Units, *, solver: str = ""
) -> Plan:
    """Give each class's units to its jobs (cheapest first, lowest job id first)."""
    c = problem.candidates
    assignments: list[Assignment] = []
    unplaced: dict[int, str] = {}
    by_class: dict[int, list[tuple[int, int]]] = {}
    for (k, cand), n in sorted(units.items()):
        if n > 0:
            by_class.setdefault(k, []).append((cand, n))
    cost = 0.0
    penalty = 0.0
    for cls in classes:
        got = by_class.get(cls.index, [])
        if cls.kind == INFERENCE:
            if got and covers(problem, cls, got):
                for cand, n in got:
                    assignments.append(Assignment(cls.jobs[0], cand, n))
                    cost += float(c.cost[cand]) * n
            else:
                unplaced[cls.jobs[0]] = "not placed"
                penalty += cls.penalty
            continue
        slots = [
            cand for cand, n in sorted(got, key=lambda x: (c.cost[x[0]], x[0])) for _ in range(n)
        ]
        for i, job_id in enumerate(cls.jobs):
            if i < len(slots):
                assignments.append(Assignment(job_id, slots[i], 1))
                cost += float(c.cost[slots[i]])
            else:
                unplaced[job_id] = "not placed"
                penalty += cls.penalty
    return Plan(
        assignments=assignments,
        unplaced=unplaced,
        objective=cost + penalty,
        cost=cost,
        solver=solver,
    )


def covers(problem: Problem, cls: JobClass, got: list[tuple[int, int]]) -> bool:
    """Whether units ``got`` serve every demand key of an inference class and its replicas."""
    c = problem.candidates
    served = [0.0] * len(cls.demand)
    replicas = 0
    for cand, n in got:
        served[int(c.area[cand])] += float(c.rate[cand]) * n
        replicas += int(c.replicas[cand]) * n
    enough = all(s >= rate * (1 - 1e-9) for s, (_, rate) in zip(served, cls.demand, strict=True))
    return enough and replicas >= cls.min_replicas
