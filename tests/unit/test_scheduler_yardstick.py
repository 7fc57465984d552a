"""Serving jobs in whole nodes in the plan's figures: the cost gap's yardstick where a plan
leaves jobs out (the least cost of placing what the plan places, as an LP and as a
Lagrangian bound), and the most weight any plan can place."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.model import PoolIndex, build_classes
from scheduler.problem import (
    Candidates,
    Pool,
    Problem,
    placement_weight,
)
from scheduler.solve import WorkLimits, _column_generation, _most_placeable, _placement_lp
from tests.unit.test_scheduler_core import _serving_plans, serving_job, serving_problems


def _cheapest_with(problem: Problem, left_out: set[int]) -> float:
    """The least cost of a valid plan that leaves out exactly the jobs ``left_out``, by
    enumeration (inf where none)."""
    return min(
        (plan.cost for plan in _serving_plans(problem) if set(plan.unplaced) == left_out),
        default=math.inf,
    )


def _yardstick(problem: Problem, left: list[int]) -> tuple[float, float]:
    """(LP, integer bound) of placing all but ``left[k]`` of class k's jobs."""
    classes, pools = build_classes(problem), PoolIndex.of(problem)
    cg = _column_generation(problem, classes, pools, {}, rounds=10_000, deadline=1e18)
    placement = _placement_lp(
        problem,
        classes,
        pools,
        cg.master,
        left,
        {},
        rounds=10_000,
        deadline=1e18,
        serving_nodes=2_000,
    )
    assert placement.converged
    return placement.lp_objective, placement.integer_bound


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(serving_problems(), st.data())
def test_the_yardstick_never_exceeds_the_cheapest_plan_with_that_placement(
    problem: Problem, data: st.DataObject
) -> None:
    # one serving job a class; leaving every job out is always a placement some plan has
    costs = {
        left: _cheapest_with(
            problem, {job.id for job, n in zip(problem.jobs, left, strict=True) if n}
        )
        for left in itertools.product((0, 1), repeat=len(problem.jobs))
    }
    left = data.draw(st.sampled_from(sorted(k for k, cost in costs.items() if cost < math.inf)))
    exact = costs[left]
    lp, whole = _yardstick(problem, list(left))
    tolerance = 1e-6 * max(1.0, exact)
    assert lp <= exact + tolerance and whole <= exact + tolerance


def test_whole_serving_nodes_raise_the_yardstick_above_the_lp() -> None:
    """A demand of 3 and three one-node pools: two serve 2 at 24 a day, one serves 5 at
    36. The LP, cover cuts and all, buys half of the big node and half a small one (30);
    a plan buys the big node (36), and the Lagrangian bound, which solves the serving
    job's covering problem in whole nodes, proves it."""
    pools = [
        Pool(provider, "r", f"z{i}", f"t{i}", "on_demand", "L4", 1, price, 1)
        for i, (provider, price) in enumerate((("aws", 1.0), ("gcp", 1.5), ("aws", 1.0)))
    ]
    rows = [
        (0, p, 1, 24.0, pools[p].price_per_hour * 24.0, 1, 0, rate, 1, 0.0)
        for p, rate in ((0, 2.0), (2, 2.0), (1, 5.0))
    ]
    job = serving_job(1, 0, (("a0", 3.0),))
    problem = Problem(jobs=[job], pools=pools, candidates=Candidates.from_rows(rows, 1), n_shapes=1)
    lp, whole = _yardstick(problem, [0])
    assert lp == pytest.approx(30.0)
    assert whole == pytest.approx(36.0) and _cheapest_with(problem, set()) == 36.0


def _most(problem: Problem) -> int:
    classes, pools = build_classes(problem), PoolIndex.of(problem)
    lp = _column_generation(problem, classes, pools, {}, rounds=10_000, deadline=1e18).master
    found = _most_placeable(
        problem, classes, pools, lp, work=WorkLimits(), exact=False, deadline=1e18, seed=0
    )
    assert not found.clock_stop
    return found.weight


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(serving_problems())
def test_the_most_placeable_is_never_below_what_a_plan_places(problem: Problem) -> None:
    placeable = [
        sum(
            placement_weight(job.priority)
            for job, n in zip(problem.jobs, left, strict=True)
            if not n
        )
        for left in itertools.product((0, 1), repeat=len(problem.jobs))
        if _cheapest_with(problem, {job.id for job, n in zip(problem.jobs, left, strict=True) if n})
        < math.inf
    ]
    assert _most(problem) >= max(placeable)


def test_serving_jobs_no_pool_mix_can_cover_are_not_counted_placeable() -> None:
    """Two serving jobs of 8 each and two one-node pools: each pool serves 5 of one job
    and 2 of the other, so neither job can be covered even with both. The weight LP, with
    each job half covered by its better node, still reads "at most 1"; with the serving
    jobs in whole nodes the bound proves 0."""
    pools = [
        Pool(provider, "r", f"z{i}", f"t{i}", "on_demand", "L4", 1, 1.0, 1)
        for i, provider in enumerate(("aws", "gcp"))
    ]
    rows = [
        (shape, p, 1, 24.0, 24.0, 1, 0, rate, 1, 0.0)
        for shape, p, rate in ((0, 0, 5.0), (0, 1, 2.0), (1, 0, 2.0), (1, 1, 5.0))
    ]
    jobs = [serving_job(k + 1, k, (("a0", 8.0),)) for k in range(2)]
    problem = Problem(jobs=jobs, pools=pools, candidates=Candidates.from_rows(rows, 2), n_shapes=2)
    assert _cheapest_with(problem, {2}) == _cheapest_with(problem, {1}) == math.inf
    assert _most(problem) == 0
