"""The LP rounded into a plan: always a valid one, and the plan that stands where every
integer solve is cut short before it finds one."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from bench.scheduler.generate import Config, synthetic
from scheduler.baselines import first_come, greedy_regret, lp_rounding, units_to_plan
from scheduler.model import Master, MipResult, PoolIndex, build_classes
from scheduler.problem import Problem
from scheduler.solve import _column_generation, solve
from scheduler.validate import check
from tests.unit.test_scheduler_core import small_problems
from tests.unit.test_scheduler_limits import NO_FULL_SPACE


def _rounded(problem: Problem) -> tuple[Any, float]:
    """The converged LP rounded into a plan, and the LP's optimum."""
    classes, pools = build_classes(problem), PoolIndex.of(problem)
    cg = _column_generation(problem, classes, pools, {}, rounds=10_000, deadline=1e18)
    master = cg.master
    values = {key: master.values[var] for key, var in master.columns.items()}
    return units_to_plan(problem, classes, lp_rounding(problem, classes, values)), cg.lp_objective


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_the_lp_rounded_is_a_valid_plan_no_dearer_than_the_lp_allows(problem: Problem) -> None:
    plan, lp = _rounded(problem)
    assert check(problem, plan) == []
    assert plan.objective >= lp - 1e-6 * max(1.0, lp)


def test_where_every_integer_solve_finds_nothing_the_lp_rounded_stands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 35 % cap on GPUs: greedy leaves a job out, the LP rounded places all 40."""
    problem = synthetic(Config(jobs=40, offers=150, seed=2))
    problem.max_provider_share, problem.share_on = 0.35, "gpus"
    classes = build_classes(problem)
    greedy = min(
        (
            units_to_plan(problem, classes, rule(problem, classes))
            for rule in (greedy_regret, first_come)
        ),
        key=lambda plan: plan.objective,
    )
    assert len(greedy.unplaced) == 1
    nothing = MipResult(None, "stopped", None, clock_stop=True)
    monkeypatch.setattr(Master, "solve_mip", lambda self, *args, **kwargs: nothing)
    plan = solve(problem, time_limit=30, explain=False, work=NO_FULL_SPACE)
    assert check(problem, plan) == [] and not plan.unplaced
    assert plan.objective < greedy.objective
    assert "(LP rounding kept)" in plan.status and plan.clock_stop
