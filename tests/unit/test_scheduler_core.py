"""The placement core on small problems: optimality, validity, determinism, reasons."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scheduler.solve as solve_module
from broker.errors import Infeasible
from scheduler.baselines import (
    Units,
    first_come,
    greedy_regret,
    per_job_cheapest,
    units_to_plan,
)
from scheduler.model import JobClass, build_classes
from scheduler.problem import INFERENCE, Assignment, Candidates, Job, Plan, Pool, Problem
from scheduler.solve import WorkLimits, lp_bound, solve
from scheduler.validate import capacity_violations, check


def _pool(i: int, provider: str, capacity: int, price: float, gpn: int = 8) -> Pool:
    return Pool(
        provider,
        "us-east-1",
        f"us-east-1{'abcd'[i % 4]}",
        f"type{i}",
        "on_demand",
        "H100-80GB",
        gpn,
        price,
        capacity,
        400.0,
        "efa",
    )


def _problem(pools, jobs_spec, budgets=None, share=None) -> Problem:
    """jobs_spec: per job (team, priority, [(pool, nodes, hours)])."""
    rows, jobs = [], []
    for shape, (team, priority, cands) in enumerate(jobs_spec):
        for p, nodes, hours in cands:
            pool = pools[p]
            rows.append(
                (
                    shape,
                    p,
                    nodes,
                    hours,
                    pool.price_per_hour * nodes * hours,
                    nodes * pool.gpus_per_node,
                    -1,
                    0.0,
                    0,
                    0.0,
                )
            )
        jobs.append(Job(id=shape + 1, name=f"j{shape}", team=team, priority=priority, shape=shape))
    return Problem(
        jobs=jobs,
        pools=pools,
        candidates=Candidates.from_rows(rows, len(jobs_spec)),
        n_shapes=len(jobs_spec),
        budgets=budgets or {},
        max_provider_share=share,
    )


def _valid_plans(problem: Problem) -> Iterator[Plan]:
    """Every plan of one candidate or none per job that the checker accepts."""
    c = problem.candidates
    options = [[None, *c.of_shape(job.shape)] for job in problem.jobs]
    for combo in itertools.product(*options):
        assignments = [
            Assignment(job.id, cand)
            for job, cand in zip(problem.jobs, combo, strict=True)
            if cand is not None
        ]
        unplaced = {
            job.id: "x" for job, cand in zip(problem.jobs, combo, strict=True) if cand is None
        }
        cost = sum(float(c.cost[a.candidate]) for a in assignments)
        objective = cost + sum(problem.penalty(j) for j in problem.jobs if j.id in unplaced)
        plan = Plan(assignments, unplaced, objective, cost)
        if not check(problem, plan):
            yield plan


def _brute_force(problem: Problem) -> float:
    return min((plan.objective for plan in _valid_plans(problem)), default=float("inf"))


@st.composite
def small_problems(draw):
    n_pools = draw(st.integers(1, 3))
    pools = [
        _pool(
            i,
            draw(st.sampled_from(["aws", "gcp"])),
            draw(st.integers(1, 3)),
            draw(st.sampled_from([10.0, 12.5, 20.0])),
        )
        for i in range(n_pools)
    ]
    jobs = []
    for _ in range(draw(st.integers(1, 4))):
        cands = []
        for p in range(n_pools):
            for nodes in draw(st.lists(st.integers(1, 2), max_size=2, unique=True)):
                cands.append((p, nodes, draw(st.sampled_from([1.0, 2.0, 3.5])) / nodes))
        jobs.append((draw(st.sampled_from(["a", "b"])), draw(st.integers(0, 1)), cands))
    budgets = {"a": draw(st.sampled_from([50.0, 1000.0]))} if draw(st.booleans()) else {}
    share = draw(st.sampled_from([None, None, 0.6]))
    return _problem(pools, jobs, budgets, share)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_solver_is_valid_and_optimal_against_brute_force(problem: Problem) -> None:
    hosts = {problem.pools[int(p)].provider for p in problem.candidates.pool}
    if problem.share_cap is not None and hosts and problem.share_cap < 1 / len(hosts):
        # no plan with a job in it meets the cap: refused, not "optimal" with none placed
        with pytest.raises(Infeasible, match="smallest cap that can hold is"):
            solve(problem, time_limit=5)
        empty = sum(problem.penalty(job) for job in problem.jobs)
        assert _brute_force(problem) == pytest.approx(empty)
        return
    plan = solve(problem, time_limit=5, relative_gap=1e-9)
    assert check(problem, plan) == []
    assert abs(plan.objective - _brute_force(problem)) <= 1e-6 * max(1.0, plan.objective)
    assert plan.lp_bound is not None and plan.lp_bound <= plan.objective + 1e-6


@settings(max_examples=20, deadline=None)
@given(small_problems())
def test_capacity_aware_baselines_pass_the_validator(problem: Problem) -> None:
    classes = build_classes(problem)
    for rule in (first_come, greedy_regret):
        assert check(problem, units_to_plan(problem, classes, rule(problem, classes))) == []


def test_joint_plan_beats_first_come_and_cheapest_overbooks() -> None:
    # Job 1 (first to arrive) can use either pool; job 2 only the cheap one (capacity 1).
    pools = [_pool(0, "aws", 1, 10.0), _pool(1, "gcp", 1, 11.0)]
    problem = _problem(pools, [("a", 0, [(0, 1, 1.0), (1, 1, 1.0)]), ("a", 0, [(0, 1, 1.0)])])
    classes = build_classes(problem)
    greedy = units_to_plan(problem, classes, first_come(problem, classes))
    assert len(greedy.unplaced) == 1
    plan = solve(problem, time_limit=5)
    assert plan.unplaced == {} and plan.cost == 21.0
    cheapest = units_to_plan(problem, classes, per_job_cheapest(problem, classes))
    assert capacity_violations(problem, cheapest) == 1
    assert any("above capacity" in v for v in check(problem, cheapest))


def test_identical_input_and_seed_give_identical_plan() -> None:
    pools = [_pool(i, ["aws", "gcp"][i % 2], 2, 10.0 + i) for i in range(4)]
    jobs = [("a", i % 2, [(p, 1, 1.0 + (i + p) % 3) for p in range(4)]) for i in range(6)]
    first = solve(_problem(pools, jobs), time_limit=5)
    again = solve(_problem(pools, jobs), time_limit=5)
    assert first.assignments == again.assignments
    assert first.objective == again.objective


def test_a_large_fleets_first_come_start_is_worked_out_beside_greedy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a large fleet first-come failover runs in a child process while greedy by regret
    runs here; the plan is the one worked out all in one process."""
    pools = [_pool(i, ["aws", "gcp"][i % 2], 2, 10.0 + i) for i in range(4)]
    jobs = [("a", i % 2, [(p, 1, 1.0 + (i + p) % 3) for p in range(4)]) for i in range(6)]
    here = solve(_problem(pools, jobs), time_limit=5)
    parent, real = os.getpid(), solve_module.first_come

    def elsewhere(problem: Problem, classes: list[JobClass] | None = None) -> Units:
        assert os.getpid() != parent
        return real(problem, classes)

    monkeypatch.setattr(solve_module, "first_come", elsewhere)
    monkeypatch.setattr(solve_module, "WARM_START_CHILD_CANDIDATES", 0)
    beside = solve(_problem(pools, jobs), time_limit=5)
    assert beside.assignments == here.assignments and beside.objective == here.objective


def test_team_budget_and_pool_full_are_named() -> None:
    pools = [_pool(0, "aws", 1, 10.0)]
    problem = _problem(
        pools,
        [("a", 0, [(0, 1, 5.0)]), ("b", 0, [(0, 1, 1.0)]), ("b", 1, [(0, 1, 1.0)])],
        budgets={"a": 20.0},
    )
    plan = solve(problem, time_limit=5)
    assert plan.unplaced[1].startswith("budget of team a has $20.00 left")
    assert "full" in plan.unplaced[2]
    assert plan.explain[3]["binding"] == "cheapest viable placement"


def test_share_cap_spreads_gpus() -> None:
    pools = [_pool(0, "aws", 4, 10.0), _pool(1, "gcp", 4, 15.0)]
    jobs = [("a", 0, [(0, 1, 1.0), (1, 1, 1.0)]) for _ in range(4)]
    capped = solve(_problem(pools, jobs, share=0.5), time_limit=5)
    assert capped.unplaced == {} and capped.cost == 2 * 10.0 + 2 * 15.0
    assert check(_problem(pools, jobs, share=0.5), capped) == []


def test_inference_mixes_pools_to_cover_each_area() -> None:
    pools = [
        _pool(0, "aws", 3, 10.0, gpn=1),
        Pool("gcp", "europe-west4", "europe-west4-a", "g", "on_demand", "L4", 1, 4.0, 5),
    ]
    rows = [(0, 0, 1, 24.0, 240.0, 1, 0, 10.0, 1, 0.0), (0, 1, 1, 24.0, 96.0, 1, 1, 3.0, 1, 0.0)]
    job = Job(
        id=1,
        name="serve",
        team="a",
        priority=0,
        shape=0,
        kind=INFERENCE,
        demand=(("us", 25.0), ("europe", 7.0)),
        min_replicas=2,
    )
    problem = Problem(jobs=[job], pools=pools, candidates=Candidates.from_rows(rows, 1), n_shapes=1)
    plan = solve(problem, time_limit=5)
    units = {
        problem.pools[int(problem.candidates.pool[a.candidate])].provider: a.count
        for a in plan.assignments
    }
    assert units == {"aws": 3, "gcp": 3}
    assert check(problem, plan) == []


def test_validator_rejects_a_broken_plan() -> None:
    pools = [_pool(0, "aws", 1, 10.0)]
    problem = _problem(pools, [("a", 0, [(0, 1, 1.0)]), ("a", 0, [(0, 1, 1.0)])])
    both = Plan([Assignment(1, 0), Assignment(2, 1)], {}, 20.0, 20.0)
    assert any("above capacity" in v for v in check(problem, both))
    wrong_cost = Plan([Assignment(1, 0)], {2: "x"}, 5.0, 5.0)
    assert any("!= recomputed" in v for v in check(problem, wrong_cost))


def test_cpsat_reaches_the_same_optimum_as_highs() -> None:
    pools = [_pool(i, ["aws", "gcp", "oci"][i % 3], 2 + i % 2, 10.0 + 2 * i) for i in range(5)]
    jobs = [
        ("ab"[i % 2], i % 3, [(p, 1 + (i + p) % 2, 1.0 + (i * p) % 4) for p in range(5)])
        for i in range(7)
    ]
    highs = solve(
        _problem(pools, jobs, budgets={"a": 400.0}, share=0.5), time_limit=10, relative_gap=1e-9
    )
    problem = _problem(pools, jobs, budgets={"a": 400.0}, share=0.5)
    cpsat = solve(problem, solver="cpsat", time_limit=10, relative_gap=1e-9)
    assert check(problem, cpsat) == []
    assert abs(cpsat.objective - highs.objective) <= 1e-6 * highs.objective


@st.composite
def serving_problems(draw):
    pools = [
        Pool(
            ["aws", "gcp"][i % 2],
            "r",
            f"z{i}",
            f"t{i}",
            "on_demand",
            "L4",
            1,
            draw(st.sampled_from([1.0, 1.5, 2.5])),
            draw(st.integers(1, 3)),
        )
        for i in range(draw(st.integers(1, 3)))
    ]
    rows, jobs = [], []
    for shape in range(draw(st.integers(1, 2))):
        areas = draw(st.integers(1, 2))
        for p, pool in enumerate(pools):
            area = draw(st.integers(0, areas - 1))
            rate = draw(st.sampled_from([2.0, 5.0, 9.0]))
            rows.append(
                (
                    shape,
                    p,
                    1,
                    24.0,
                    pool.price_per_hour * 24.0,
                    1,
                    area,
                    rate,
                    draw(st.integers(1, 2)),
                    0.0,
                )
            )
        demand = tuple((f"a{a}", draw(st.sampled_from([3.0, 8.0, 12.0]))) for a in range(areas))
        jobs.append(serving_job(shape + 1, shape, demand, draw(st.integers(0, 3))))
    return Problem(
        jobs=jobs, pools=pools, candidates=Candidates.from_rows(rows, len(jobs)), n_shapes=len(jobs)
    )


def _serving_plans(problem: Problem) -> Iterator[Plan]:
    """Every plan of whole units per candidate (up to its pool's capacity), or none, per
    serving job that the checker accepts."""
    c = problem.candidates
    per_job = []
    for job in problem.jobs:
        rows = list(c.of_shape(job.shape))
        ranges = [range(problem.pools[int(c.pool[i])].capacity + 1) for i in rows]
        per_job.append(
            [None]
            + [
                tuple(zip(rows, counts, strict=True))
                for counts in itertools.product(*ranges)
                if any(counts)
            ]
        )
    for combo in itertools.product(*per_job):
        assignments = [
            Assignment(job.id, i, n)
            for job, pick in zip(problem.jobs, combo, strict=True)
            if pick
            for i, n in pick
            if n
        ]
        unplaced = {job.id: "x" for job, pick in zip(problem.jobs, combo, strict=True) if not pick}
        cost = sum(float(c.cost[a.candidate]) * a.count for a in assignments)
        objective = cost + sum(problem.penalty(j) for j in problem.jobs if j.id in unplaced)
        plan = Plan(assignments, unplaced, objective, cost)
        if not check(problem, plan):
            yield plan


def _brute_force_serving(problem: Problem) -> float:
    return min((plan.objective for plan in _serving_plans(problem)), default=float("inf"))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(serving_problems())
def test_serving_plans_are_optimal_and_the_bound_holds(problem: Problem) -> None:
    from scheduler.bound import lagrangian_bound
    from scheduler.model import PoolIndex
    from scheduler.solve import _column_generation

    exact = _brute_force_serving(problem)
    plan = solve(problem, time_limit=5, relative_gap=1e-9)
    assert check(problem, plan) == []
    assert abs(plan.objective - exact) <= 1e-6 * max(1.0, exact)
    classes, pools = build_classes(problem), PoolIndex.of(problem)
    cg = _column_generation(problem, classes, pools, {}, rounds=10_000, deadline=1e18)
    lp, master = cg.bound, cg.master
    strong = lagrangian_bound(problem, classes, pools, master.duals, deadline=1e18)
    assert lp <= exact + 1e-6 * max(1.0, exact)
    assert strong is None or strong <= exact + 1e-6 * max(1.0, exact)


def _serving_fleet(alike_shape: int) -> Problem:
    """Two L4 pools; serving jobs on shape 0, on ``alike_shape`` (shape 2 repeats shape 0's
    candidates) and on shape 1, each asking 8 of two areas' traffic."""
    pools = [
        Pool("aws", "r", "z0", "t0", "on_demand", "L4", 1, 1.0, 3),
        Pool("gcp", "r", "z1", "t1", "on_demand", "L4", 1, 2.5, 3),
    ]
    rows = []
    for shape, source in ((0, 0), (1, 1), (2, 0)):
        for p, pool in enumerate(pools):
            rate = (5.0, 9.0)[(p + source) % 2]
            rows.append((shape, p, 1, 24.0, pool.price_per_hour * 24.0, 1, p, rate, 1, 0.0))
    demand = (("a0", 8.0), ("a1", 8.0))
    jobs = [
        serving_job(i + 1, shape, demand, min_replicas=1)
        for i, shape in enumerate((0, alike_shape, 1))
    ]
    return Problem(jobs=jobs, pools=pools, candidates=Candidates.from_rows(rows, 3), n_shapes=3)


def serving_job(
    job_id: int, shape: int, demand: tuple[tuple[str, float], ...], min_replicas: int = 0
) -> Job:
    return Job(
        id=job_id,
        name=f"s{job_id - 1}",
        team="a",
        priority=0,
        shape=shape,
        kind=INFERENCE,
        demand=demand,
        min_replicas=min_replicas,
    )


def test_alike_serving_jobs_share_one_covering_problem(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Two serving jobs alike in shape, demand and penalty: the Lagrangian bound solves
    their covering problem once, and the bound is the one where each is solved apart."""
    import scheduler.bound as bound_module
    from scheduler.model import PoolIndex

    calls: list[int] = []
    serving = bound_module._serving

    def counted(problem, pools, cls, *args):  # type: ignore[no-untyped-def]
        calls.append(cls.index)
        return serving(problem, pools, cls, *args)

    monkeypatch.setattr(bound_module, "_serving", counted)
    bounds = []
    for alike_shape in (0, 2):
        problem = _serving_fleet(alike_shape)
        calls.clear()
        bounds.append(
            bound_module.lagrangian_bound(
                problem, build_classes(problem), PoolIndex.of(problem), None, deadline=1e18
            )
        )
        assert len(calls) == (2 if alike_shape == 0 else 3)
        assert bounds[-1] is not None
        assert bounds[-1] <= _brute_force_serving(problem) + 1e-6
    assert bounds[0] == pytest.approx(bounds[1], rel=1e-12)


def test_no_jobs_is_an_empty_validated_plan() -> None:
    pools = [_pool(0, "aws", 2, 10.0)]
    problem = Problem(jobs=[], pools=pools, candidates=Candidates.from_rows([], 0), n_shapes=0)
    for solver in ("highs", "cpsat"):
        plan = solve(problem, solver=solver, time_limit=5)
        assert (plan.assignments, plan.unplaced) == ([], {})
        assert (plan.objective, plan.lp_bound, plan.gap) == (0.0, 0.0, 0.0)
        assert check(problem, plan) == []


def test_a_solve_without_duals_keeps_a_valid_bound(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from scheduler.bound import lagrangian_bound
    from scheduler.model import Master, PoolIndex

    solve_lp = Master.solve_lp

    def without_duals(self):  # type: ignore[no-untyped-def]
        objective, _ = solve_lp(self)
        self.duals = None
        return objective, None

    monkeypatch.setattr(Master, "solve_lp", without_duals)
    # both jobs' cheapest pool holds one of them: the optimum is 21, zero multipliers give 20
    pools = [_pool(0, "aws", 1, 10.0), _pool(1, "gcp", 1, 11.0)]
    problem = _problem(pools, [("a", 0, [(0, 1, 1.0), (1, 1, 1.0)]), ("a", 0, [(0, 1, 1.0)])])
    # the fallback alone
    plan = solve(problem, time_limit=5, work=WorkLimits(full_space_columns=0, root_bound_columns=0))
    assert check(problem, plan) == []
    assert plan.objective == 21.0 and plan.lp_bound == 20.0
    assert abs(plan.gap - 1 / 21) < 1e-9
    bound = lagrangian_bound(
        problem, build_classes(problem), PoolIndex.of(problem), None, deadline=1e18
    )
    assert bound == 20.0


def test_the_full_space_integer_bound_closes_an_integrality_gap() -> None:
    """A 3-node and a 2-node gang, a cheap pool of 4 nodes: only one fits there, but the LP
    puts half of the 2-node gang beside the 3-node one (60). The pool's rounding cut by 3,
    (1/2) y2 + y3 <= 1, raises that to 65: half of each in the pool. The integer model
    over the full candidate space proves the optimum, 70; so does the integer model over
    the kept columns, since no candidate is left out of it."""
    pools = [_pool(0, "aws", 4, 10.0), _pool(1, "gcp", 8, 20.0)]
    jobs = [("a", 0, [(0, 3, 1.0), (1, 3, 1.0)]), ("a", 0, [(0, 2, 1.0), (1, 2, 1.0)])]
    plan = solve(_problem(pools, jobs), time_limit=5)
    assert check(_problem(pools, jobs), plan) == []
    assert plan.objective == 70.0
    assert plan.lp_bound == 70.0 and plan.gap == 0.0
    assert lp_bound(_problem(pools, jobs)) == pytest.approx(65.0)
    without = solve(
        _problem(pools, jobs),
        time_limit=5,
        work=WorkLimits(full_space_columns=0, root_bound_columns=0),
    )
    assert without.lp_bound == 70.0 and without.timings["cheapest_excluded_rc"] == math.inf
