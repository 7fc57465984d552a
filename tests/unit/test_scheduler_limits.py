"""Bounds that hold however early pricing stops, plans fixed by work limits, refused caps."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bench.scheduler.generate import Config, synthetic
from broker.errors import Infeasible
from scheduler.baselines import first_come, greedy_regret, units_to_plan
from scheduler.bound import _training, relaxed_bound, share_prices
from scheduler.model import Duals, PoolIndex, build_classes, reduced_costs, unit_bounds
from scheduler.problem import Candidates, Job, Plan, Pool, Problem
from scheduler.solve import (
    WorkLimits,
    _capped_by_prices,
    _column_generation,
    _ColumnGeneration,
    _cost_polish,
    _enrich,
    _integer_master,
    _left_out_by_class,
    _placement_lp,
    _training_resolve,
    solve,
)
from scheduler.validate import check
from tests.unit.test_scheduler_core import (
    _brute_force,
    _pool,
    _problem,
    _valid_plans,
    small_problems,
)

NO_FULL_SPACE = WorkLimits(full_space_columns=0, full_space_capped_columns=0, root_bound_columns=0)


def _fleet(
    jobs: int,
    pools: int,
    seed: int,
    *,
    providers: tuple[str, ...] = ("aws", "gcp", "oci"),
    share: float | None = None,
    share_on: str = "gpus",
) -> Problem:
    """``jobs`` training jobs, each its own shape, with 1- and 2-node options on many pools."""
    rng = np.random.default_rng(seed)
    fleet = [
        Pool(
            providers[i % len(providers)],
            "r",
            f"z{i % 3}",
            f"t{i}",
            "on_demand",
            "H100-80GB",
            8,
            float(rng.choice([10.0, 11.0, 12.5, 14.0])),
            int(rng.integers(1, 4)),
            400.0,
            "efa",
        )
        for i in range(pools)
    ]
    rows, out = [], []
    for shape in range(jobs):
        hours = float(rng.choice([1.0, 2.0, 3.0]))
        for p in rng.choice(pools, size=min(pools, 12), replace=False):
            for nodes in (1, 2):
                h = hours / nodes * 1.1 ** (nodes - 1)
                rows.append(
                    (
                        shape,
                        int(p),
                        nodes,
                        h,
                        fleet[p].price_per_hour * nodes * h,
                        8 * nodes,
                        -1,
                        0.0,
                        0,
                        0.0,
                    )
                )
        out.append(Job(id=shape + 1, name=f"j{shape}", team="a", priority=shape % 2, shape=shape))
    return Problem(
        jobs=out,
        pools=fleet,
        candidates=Candidates.from_rows(rows, jobs),
        n_shapes=jobs,
        max_provider_share=share,
        share_on=share_on,
    )  # type: ignore[arg-type]


def test_an_unfinished_column_generation_keeps_a_bound_between_zero_and_the_plan() -> None:
    """Many jobs with distinct shapes and one pricing round: summing every negative reduced
    cost without one gang per job drove the bound far below zero."""
    problem = _fleet(40, 30, seed=1)
    stopped = solve(
        problem,
        time_limit=30,
        explain=False,
        work=WorkLimits(cg_rounds=1, full_space_columns=0, root_bound_columns=0),
    )
    full = solve(problem, time_limit=30, relative_gap=1e-9, explain=False)
    assert check(problem, stopped) == [] and check(problem, full) == []
    assert stopped.timings["cg_rounds"] == 1
    assert stopped.lp_bound is not None and full.lp_bound is not None
    assert 0.0 < stopped.lp_bound <= full.objective + 1e-6
    assert stopped.lp_bound > 0.5 * full.objective  # one gang per job keeps it close
    assert full.lp_bound <= full.objective + 1e-6
    # every job placed: the bound is a yardstick of cost, though pricing did not converge
    assert not stopped.unplaced and not full.unplaced
    assert stopped.cost_gap == pytest.approx(stopped.gap)
    assert stopped.cost * (1.0 - stopped.cost_gap) <= full.cost + 1e-6


def test_the_per_round_bound_is_never_negative_even_at_poor_multipliers() -> None:
    problem = _fleet(10, 8, seed=2)
    classes, pools = build_classes(problem), PoolIndex.of(problem)
    duals = Duals.zero(problem, pools)
    duals.pool = np.full(len(problem.pools), -1e6)  # absurdly dear capacity
    rcs = {cls.index: reduced_costs(problem, pools, cls, duals) for cls in classes}
    assert relaxed_bound(problem, classes, pools, duals, rcs) == 0.0
    zero = Duals.zero(problem, pools)
    rcs = {cls.index: reduced_costs(problem, pools, cls, zero) for cls in classes}
    cheapest = sum(
        float(problem.candidates.cost[problem.candidates.of_shape(j.shape)].min())
        for j in problem.jobs
    )
    assert relaxed_bound(problem, classes, pools, zero, rcs) == pytest.approx(cheapest)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 5), st.floats(0.0, 1.0))
def test_a_training_class_in_the_per_round_bound_fills_its_cheapest_units(
    seed: int, copies: int, unfit: float
) -> None:
    """The class's part of the per-round bound is the least cost of ``count`` units: each
    candidate offers as many as it can hold at its reduced cost, "unplaced" any number at
    the penalty. Reduced costs are drawn at random, finite also on candidates that hold
    no unit (share ``unfit``), so the cheapest ones are not always usable."""
    problem = _fleet(4, 6, seed=seed)
    problem.jobs = [
        replace(job, id=job.id * 10 + i, name=f"{job.name}-{i}")
        for job in problem.jobs
        for i in range(copies)
    ]
    classes, pools = build_classes(problem), PoolIndex.of(problem)
    rng = np.random.default_rng(seed)
    for cls in classes:
        rows = problem.candidates.of_shape(cls.shape)
        bounds = unit_bounds(problem, pools, cls, np.arange(rows.start, rows.stop))
        rc = rng.uniform(-50.0, 1.5 * cls.penalty, len(rows))
        rc[(bounds > 0) & (rng.random(len(rows)) < 0.2)] = np.inf
        rc[(bounds == 0) & (rng.random(len(rows)) >= unfit)] = np.inf
        units = sorted(
            [float(r) for r, b in zip(rc, bounds, strict=True) if r < cls.penalty for _ in range(b)]
            + [cls.penalty] * cls.count
        )
        expected = sum(units[: cls.count])
        assert _training(problem, pools, cls, rc) == pytest.approx(expected, rel=1e-12, abs=1e-9)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems(), st.integers(1, 2))
def test_early_bounds_never_pass_the_optimum(problem: Problem, rounds: int) -> None:
    hosts = {problem.pools[int(p)].provider for p in problem.candidates.pool}
    if problem.share_cap is not None and hosts and problem.share_cap < 1 / len(hosts):
        return
    plan = solve(
        problem,
        time_limit=5,
        explain=False,
        work=WorkLimits(
            cg_rounds=rounds,
            full_space_columns=0,
            root_bound_columns=0,
            full_space_capped_columns=0,
        ),
    )
    assert check(problem, plan) == []
    assert plan.lp_bound is not None
    assert 0.0 <= plan.lp_bound <= _brute_force(problem) + 1e-6


def test_work_limits_fix_the_plan_even_beside_a_busy_process() -> None:
    """Limits small enough to bind (node limit reached): the plan depends on them alone."""
    tight = WorkLimits(cg_rounds=3, mip_nodes=5, full_space_nodes=5)
    quiet = solve(_fleet(60, 40, seed=3), time_limit=60, explain=False, work=tight)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        loaded = solve(_fleet(60, 40, seed=3), time_limit=60, explain=False, work=tight)
    finally:
        busy.kill()
        busy.wait()
    assert not quiet.clock_stop and not loaded.clock_stop
    assert quiet.assignments == loaded.assignments
    assert (quiet.objective, quiet.lp_bound) == (loaded.objective, loaded.lp_bound)


def test_a_safety_stop_that_fires_says_so() -> None:
    plan = solve(_fleet(30, 20, seed=4), time_limit=1e-6, explain=False)
    problem = _fleet(30, 20, seed=4)
    assert check(problem, plan) == []
    assert plan.clock_stop and "safety time limit" in plan.status


def test_a_cap_no_plan_can_meet_is_infeasible_with_the_smallest_cap() -> None:
    problem = _fleet(6, 6, seed=5, providers=("aws", "gcp"), share=0.35)
    with pytest.raises(Infeasible, match="smallest cap that can hold is 50%"):
        solve(problem, time_limit=5)
    problem.max_provider_share = 0.5
    plan = solve(problem, time_limit=5, explain=False)
    assert check(problem, plan) == [] and len(plan.unplaced) < len(problem.jobs)


@pytest.mark.parametrize("share_on", ["gpus", "spend"])
def test_small_capped_models_get_the_exact_full_space_step(share_on: str) -> None:
    """A capped plan is as good as the brute-force optimum, and the full-space step proves
    it (its bound meets the plan)."""
    pools = [_pool(i, ["aws", "gcp", "oci"][i % 3], 1 + i % 2, 10.0 + 3 * i) for i in range(6)]
    jobs = [
        ("a", i % 2, [(p, 1 + (i + p) % 2, 1.0 + (i * p) % 3) for p in range(6)]) for i in range(5)
    ]
    problem = _problem(pools, jobs, share=0.4)
    problem.share_on = share_on  # type: ignore[assignment]
    plan = solve(problem, time_limit=10, relative_gap=1e-9)
    assert check(problem, plan) == []
    assert plan.objective == pytest.approx(_brute_force(problem))
    assert plan.gap == pytest.approx(0.0, abs=1e-6)
    without = solve(problem, time_limit=10, relative_gap=1e-9, work=NO_FULL_SPACE)
    assert without.objective >= plan.objective - 1e-6


def test_placement_and_cost_gap_are_reported_apart() -> None:
    """Three jobs, room for two: the LP places two, the plan places two, and the cost gap
    is over those two alone (the third job's penalty does not swamp it)."""
    pools = [_pool(0, "aws", 2, 10.0)]
    problem = _problem(
        pools, [("a", 0, [(0, 1, 1.0)]), ("a", 0, [(0, 1, 2.0)]), ("a", 0, [(0, 1, 3.0)])]
    )
    plan = solve(problem, time_limit=5)
    assert len(plan.unplaced) == 1 and plan.placed_weight == plan.most_placeable == 2
    assert plan.cost == 30.0 and plan.cost_gap == pytest.approx(0.0, abs=1e-9)
    assert plan.gap is not None and plan.gap < 1e-6


def test_the_most_placeable_is_what_a_plan_can_place_not_what_the_lp_places() -> None:
    """Twelve one-node jobs fill a cheap pool; a twelve-node gang fits only there. Placing
    it moves the twelve to a pool at 120 times the price, which costs more than the gang's
    penalty (ten times the dearest single placement), so the plan, and the LP with costs,
    leave it out. The figure is the most any plan can place: all 13 jobs, as a plan that
    values the gang above that cost shows."""
    pools = [_pool(0, "aws", 12, 1.0), _pool(1, "aws", 12, 12.0)]
    small = ("a", 0, [(0, 1, 0.1), (1, 1, 1.0)])

    def fleet(gang_priority: int) -> Problem:
        return _problem(pools, [("a", gang_priority, [(0, 12, 1.0)]), *[small] * 12])

    plan = solve(fleet(0), time_limit=10, relative_gap=1e-9)
    assert list(plan.unplaced) == [1]
    assert plan.placed_weight == 12 and plan.most_placeable == 13
    everything = solve(fleet(100), time_limit=10, relative_gap=1e-9)
    assert check(fleet(0), everything) == [] and not everything.unplaced


def _most_weight_brute_force(problem: Problem) -> int:
    """The most priority weight of any valid plan, by enumeration."""
    return max(problem.placed_weight(plan) for plan in _valid_plans(problem))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_the_most_placeable_holds_and_is_exact_on_small_models(problem: Problem) -> None:
    """Against enumeration: no valid plan places more weight than the figure, from the LP
    alone or proven in integers, and the integer step finds it exactly."""
    hosts = {problem.pools[int(p)].provider for p in problem.candidates.pool}
    assume(problem.share_cap is None or not hosts or problem.share_cap >= 1 / len(hosts))
    most = _most_weight_brute_force(problem)
    plan = solve(problem, time_limit=10)
    assert plan.placed_weight <= most
    assert plan.most_placeable == most
    lp = solve(problem, time_limit=10, work=NO_FULL_SPACE)
    assert lp.most_placeable is not None and lp.most_placeable >= most


def test_small_models_prove_the_most_placeable_in_integers() -> None:
    """S synthetic leaves out one job: the LP with costs out allows weight 75, whole gangs
    and nodes allow 74, which the plan places; the integer model over every candidate
    proves it. Without that step the figure is the LP's."""
    problem = synthetic(Config(jobs=50, offers=500, seed=7))
    plan = solve(problem, time_limit=30, relative_gap=0.001, explain=False)
    assert check(problem, plan) == [] and len(plan.unplaced) == 1
    assert plan.placed_weight == plan.most_placeable == 74
    looser = solve(problem, time_limit=30, relative_gap=0.001, explain=False, work=NO_FULL_SPACE)
    assert looser.placed_weight == 74 and looser.most_placeable == 75


def test_the_cost_yardstick_is_the_least_cost_of_placing_the_plans_jobs() -> None:
    """A budget of 15 holds one of two jobs (the LP places 1.3): the plan places the
    priority job at 12 over the other at 10. The yardstick for its cost is the least cost
    of placing that job, 12, not of placing any one job, 10 (which would read 17 %)."""
    pools = [_pool(0, "aws", 2, 10.0)]
    problem = _problem(
        pools, [("a", 1, [(0, 1, 1.2)]), ("a", 0, [(0, 1, 1.0)])], budgets={"a": 15.0}
    )
    plan = solve(problem, time_limit=5)
    assert check(problem, plan) == []
    assert list(plan.unplaced) == [2] and plan.cost == pytest.approx(12.0)
    # the weight LP places the priority job and 0.3 of the other: 2.3, so at most 2
    assert plan.placed_weight == plan.most_placeable == 2
    assert plan.cost_gap == pytest.approx(0.0, abs=1e-9)
    classes, pools_index = build_classes(problem), PoolIndex.of(problem)
    lp = _column_generation(
        problem, classes, pools_index, {}, rounds=60, deadline=time.perf_counter() + 10
    ).master
    for left_out, cost in (([0, 1], 12.0), ([1, 0], 10.0)):
        floor = _placement_lp(
            problem,
            classes,
            pools_index,
            lp,
            left_out,
            {},
            rounds=60,
            deadline=time.perf_counter() + 10,
        )
        assert floor.converged and floor.lp_objective == pytest.approx(cost)


def test_the_cost_polish_runs_where_the_lp_places_more_and_the_cost_is_unsettled() -> None:
    """Capacity for fewer jobs than asked, and an integer solve held to one node: the LP
    places more jobs than the plan, so the root cuts (a bound over cost and penalties)
    give way to the solve with the placement fixed, which keeps each class's placement.
    Asked for the default gap, which the plan's cost is already within, it does not run.
    (With seed 4, the yardstick with serving jobs whole proves the one-node plan's cost.)"""
    problem = synthetic(Config(jobs=60, offers=600, seed=1, capacity_scale=0.6))
    held = WorkLimits(mip_nodes=1, full_space_columns=0, full_space_capped_columns=0)
    polished = solve(problem, time_limit=30, relative_gap=1e-5, explain=False, work=held)
    plain = solve(
        problem,
        time_limit=30,
        relative_gap=1e-5,
        explain=False,
        work=replace(held, polish_solutions=0),
    )
    assert check(problem, polished) == [] and polished.unplaced
    assert "cost_polish" in polished.timings and "root_bound" not in polished.timings
    assert "cost_polish" not in plain.timings
    classes = build_classes(problem)
    assert _left_out_by_class(classes, polished) == _left_out_by_class(classes, plain)
    assert polished.cost <= plain.cost + 1e-6
    settled = solve(problem, time_limit=30, explain=False, work=held)
    assert settled.cost_gap is not None and settled.cost_gap <= 0.005
    assert "placement_cost_bound" in settled.timings and "cost_polish" not in settled.timings


@dataclass
class _Polished:
    """The first-come plan of a fleet, its jobs left out per class, the LP of placing
    them, and the cost polish's plan from it."""

    start: Plan
    left_out: list[int]
    placement: _ColumnGeneration
    plan: Plan


def _polish_first_come(problem: Problem) -> _Polished:
    classes, pools = build_classes(problem), PoolIndex.of(problem)
    deadline = time.perf_counter() + 30
    lp = _column_generation(problem, classes, pools, {}, rounds=60, deadline=deadline)
    units = first_come(problem, classes)
    start = units_to_plan(problem, classes, units, solver="first-come")
    left_out = _left_out_by_class(classes, start)
    placement = _placement_lp(
        problem, classes, pools, lp.master, left_out, units, rounds=60, deadline=deadline
    )
    assert placement.converged
    polished = _cost_polish(
        problem,
        classes,
        pools,
        placement,
        left_out,
        units,
        start.cost,
        work=WorkLimits(),
        time_limit=30,
        seed=problem.seed,
    )
    assert polished.units is not None and not polished.clock_stop
    plan = units_to_plan(problem, classes, polished.units, solver="polish")
    return _Polished(start, left_out, placement, plan)


def test_the_cost_polish_buys_the_same_placement_for_less() -> None:
    """From the first-come plan on a fleet with room for fewer jobs than asked, the solve
    with the placement fixed, over the columns the placement LP ranks best, finds a plan
    below the cut-off that places as many jobs of each class."""
    problem = synthetic(Config(jobs=60, offers=600, seed=4, capacity_scale=0.6))
    polished = _polish_first_come(problem)
    plan, floor = polished.plan, polished.placement.lp_objective
    assert check(problem, plan) == []
    assert _left_out_by_class(build_classes(problem), plan) == polished.left_out
    assert floor - 1e-6 <= plan.cost < polished.start.cost - 1.0


@pytest.mark.parametrize("share_on", ["gpus", "spend"])
def test_the_cost_polish_under_a_share_cap_keeps_the_cap(share_on: str) -> None:
    """Under a 35 % cap the polish goes by way of the cap priced at the placement LP's
    duals, then the capped model over that plan's columns and the start's: what it returns
    keeps the cap and the placement, and buys it for less than the first-come plan."""
    problem = synthetic(Config(jobs=60, offers=600, seed=1, capacity_scale=0.6))
    problem.max_provider_share, problem.share_on = 0.35, share_on
    polished = _polish_first_come(problem)
    duals = polished.placement.master.duals
    assert duals is not None
    prices = share_prices(problem, PoolIndex.of(problem), duals)
    assert prices is not None and np.any(prices.rate != 0)  # the cap binds: priced
    plan, floor = polished.plan, polished.placement.lp_objective
    assert check(problem, polished.start) == [] and check(problem, plan) == []  # the cap held
    assert _left_out_by_class(build_classes(problem), plan) == polished.left_out
    assert floor - 1e-6 <= plan.cost < 0.95 * polished.start.cost


def test_the_training_resolve_rebuys_the_gangs_around_the_serving_units() -> None:
    """From the first-come plan of a fleet with serving and training jobs, with one
    serving unit more than it needs, the gangs' model with every serving column held
    where the plan has it buys the training jobs for less: the serving units (the spare
    one too) and each class's placement stay as they were."""
    problem = synthetic(Config(jobs=60, offers=600, seed=1))
    classes, pools = build_classes(problem), PoolIndex.of(problem)
    assert {cls.kind for cls in classes} == {"training", "inference"}
    lp = _column_generation(
        problem, classes, pools, {}, rounds=60, deadline=time.perf_counter() + 30
    )
    plain = first_come(problem, classes)
    units = next(
        {**plain, key: n + 1}
        for key, n in sorted(plain.items())
        if classes[key[0]].kind == "inference"
        and check(problem, units_to_plan(problem, classes, {**plain, key: n + 1})) == []
    )
    start = units_to_plan(problem, classes, units, solver="first-come")
    left_out = _left_out_by_class(classes, start)
    resolved = _training_resolve(
        problem,
        classes,
        pools,
        lp,
        units,
        left_out,
        start.cost,
        work=WorkLimits(),
        time_limit=30,
        seed=problem.seed,
    )
    assert resolved.units is not None and not resolved.clock_stop
    plan = units_to_plan(problem, classes, resolved.units, solver="re-solve")
    assert check(problem, plan) == []
    assert _left_out_by_class(classes, plan) == left_out

    def serving(found: dict[tuple[int, int], int]) -> dict[tuple[int, int], int]:
        return {key: n for key, n in found.items() if n and classes[key[0]].kind == "inference"}

    assert serving(resolved.units) == serving(units)
    assert plan.cost < start.cost - 1.0


def test_a_large_capped_model_goes_by_way_of_the_cap_priced() -> None:
    """The integer solve over the kept columns by way of the cap priced: the relaxed plan
    breaks the cap, the merge with the greedy plan's columns keeps it, close to the capped
    model's own optimum over those columns, and the bound it reports (the priced model's,
    plus the prices' constant) does not pass that optimum."""
    problem = synthetic(Config(jobs=60, offers=600, seed=1, capacity_scale=0.6))
    problem.max_provider_share = 0.35
    classes, pools = build_classes(problem), PoolIndex.of(problem)
    greedy = greedy_regret(problem, classes)
    lp = _column_generation(
        problem, classes, pools, greedy, rounds=60, deadline=time.perf_counter() + 30
    )
    assert lp.master.duals is not None
    prices = share_prices(problem, pools, lp.master.duals)
    assert prices is not None and np.any(prices.rate != 0)
    columns = _enrich(problem, classes, pools, lp.rcs, greedy)
    near, found = _capped_by_prices(
        problem,
        classes,
        pools,
        columns,
        prices,
        greedy,
        cuts_from=lp.master,
        relative_gap=0.0,
        work=WorkLimits(),
        time_limit=30,
        seed=problem.seed,
    )
    assert near is not None and near.units is not None and found.units is not None
    assert any(
        "above cap" in p for p in check(problem, units_to_plan(problem, classes, near.units))
    )
    plan = units_to_plan(problem, classes, found.units)
    assert check(problem, plan) == []
    capped = _integer_master(
        problem, classes, pools, columns, solver="highs", cuts_from=lp.master, roundings=False
    )
    exact = capped.solve_mip(
        "highs", time_limit=60, relative_gap=0.0, seed=problem.seed, nodes=100_000
    )
    assert exact.status == "optimal" and exact.bound is not None and found.bound is not None
    assert found.bound <= exact.bound + 1e-6 <= plan.objective + 2e-6
    assert plan.objective <= exact.bound * 1.0001


def test_node_limits_shrink_as_the_model_grows() -> None:
    work = WorkLimits(node_columns=1_000_000)
    assert work.nodes(2_000, 300) == 2_000
    assert work.nodes(2_000, 11_337) == 88
    assert work.nodes(1_000, 10**8) == 1


def test_pricing_volume_limits_the_rounds_on_large_fleets() -> None:
    """Every round prices every candidate: the rounds a fleet gets shrink with its size, so
    a very large one ends by work before the safety stop, and both solves agree."""
    problem = _fleet(40, 30, seed=1)
    size = len(problem.candidates)
    work = WorkLimits(cg_priced=2 * size, full_space_columns=0, root_bound_columns=0)
    first = solve(problem, time_limit=30, explain=False, work=work)
    again = solve(problem, time_limit=30, explain=False, work=work)
    assert first.timings["cg_rounds"] == 2 and not first.clock_stop
    assert [(a.job, a.candidate, a.count) for a in first.assignments] == [
        (a.job, a.candidate, a.count) for a in again.assignments
    ]
    assert check(problem, first) == []
