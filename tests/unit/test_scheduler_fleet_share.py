"""The provider share cap over the whole fleet: what live allocations hold counts."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.errors import Infeasible
from scheduler.baselines import first_come, greedy_regret, units_to_plan
from scheduler.model import build_classes
from scheduler.problem import Problem
from scheduler.solve import solve
from scheduler.validate import check
from tests.unit.test_scheduler_core import _brute_force, _pool, _problem, small_problems


def _one_job(share: float, held: dict[str, float]) -> Problem:
    """One 1-node job (8 GPUs): $10/h on aws, $20/h on gcp."""
    pools = [_pool(0, "aws", 2, 10.0), _pool(1, "gcp", 2, 20.0)]
    problem = _problem(pools, [("a", 0, [(0, 1, 1.0), (1, 1, 1.0)])], share=share)
    problem.held = held
    return problem


def _provider_of(problem: Problem, plan_candidate: int) -> str:
    return problem.pools[int(problem.candidates.pool[plan_candidate])].provider


def test_what_the_fleet_holds_lets_a_lone_new_job_under_a_cap_the_old_rule_refused() -> None:
    """Two providers and a 35 % cap: counted over the new placements alone no plan can
    hold a job (refused as infeasible); with 16 GPUs running on gcp, the job goes on aws
    and aws holds 8 of the fleet's 24 GPUs (33 %)."""
    with pytest.raises(Infeasible, match="smallest cap that can hold is 50%"):
        solve(_one_job(0.35, {}), time_limit=5)
    problem = _one_job(0.35, {"gcp": 16.0})
    plan = solve(problem, time_limit=5, relative_gap=1e-9)
    assert check(problem, plan) == [] and plan.unplaced == {}
    assert [_provider_of(problem, a.candidate) for a in plan.assignments] == ["aws"]
    assert plan.objective == pytest.approx(10.0) and plan.gap == pytest.approx(0.0, abs=1e-9)


def test_held_amounts_make_the_cap_bind_and_explain_names_it() -> None:
    """A 55 % cap: with aws already holding 24 of 40 running GPUs, the job cannot go on
    the cheap aws pool (32 of 48, 67 %) and takes gcp at twice the price; the same job
    beside the mirror-image fleet goes on aws."""
    bound = _one_job(0.55, {"aws": 24.0, "gcp": 16.0})
    plan = solve(bound, time_limit=5, relative_gap=1e-9)
    assert check(bound, plan) == [] and plan.unplaced == {}
    assert [_provider_of(bound, a.candidate) for a in plan.assignments] == ["gcp"]
    assert plan.objective == pytest.approx(20.0)
    assert plan.explain[1]["binding"] == "provider share cap"
    free = _one_job(0.55, {"aws": 16.0, "gcp": 24.0})
    cheap = solve(free, time_limit=5, relative_gap=1e-9)
    assert [_provider_of(free, a.candidate) for a in cheap.assignments] == ["aws"]


def test_a_fleet_over_the_cap_already_still_takes_new_jobs_at_the_cap_share() -> None:
    """aws runs 40 of 48 GPUs (83 %) under a 50 % cap: new placements may not add to its
    excess beyond half of what is new, and the checker holds plans to exactly that."""
    pools = [_pool(0, "aws", 4, 10.0), _pool(1, "gcp", 4, 20.0)]
    jobs = [("a", 0, [(0, 1, 1.0), (1, 1, 1.0)]) for _ in range(4)]
    problem = _problem(pools, jobs, share=0.5)
    problem.held = {"aws": 40.0, "gcp": 8.0}
    plan = solve(problem, time_limit=5, relative_gap=1e-9)
    assert check(problem, plan) == [] and plan.unplaced == {}
    providers = sorted(_provider_of(problem, a.candidate) for a in plan.assignments)
    assert providers == ["aws", "aws", "gcp", "gcp"]


def test_a_cap_with_room_beside_the_fleet_is_left_to_the_model() -> None:
    """Two providers, a 30 % cap, 16 GPUs running on gcp: aws has room for 4.8 GPUs above
    its 30 % of what is new, not enough for one 8-GPU job (5.6), yet enough for two jobs
    on different providers; so no refusal, and the lone job waits for the cap. Where no
    provider has room (all 40 GPUs on aws and gcp at their share), the cap is refused."""
    problem = _one_job(0.3, {"gcp": 16.0})
    plan = solve(problem, time_limit=5)
    assert check(problem, plan) == [] and plan.unplaced == {1: "provider share cap"}
    with pytest.raises(
        Infeasible, match="beside what live allocations hold; the smallest cap that can hold is 50%"
    ):
        solve(_one_job(0.3, {"aws": 20.0, "gcp": 20.0}), time_limit=5)


@st.composite
def problems_beside_a_fleet(draw: st.DrawFn) -> Problem:
    problem: Problem = draw(small_problems())
    problem.max_provider_share = draw(st.sampled_from([0.4, 0.5, 0.6]))
    problem.held = {
        provider: float(draw(st.sampled_from([0, 8, 16, 40]))) for provider in ("aws", "gcp", "oci")
    }
    return problem


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems_beside_a_fleet())
def test_plans_beside_a_fleet_are_valid_optimal_and_their_bound_holds(problem: Problem) -> None:
    try:
        plan = solve(problem, time_limit=5, relative_gap=1e-9)
    except Infeasible:
        empty = sum(problem.penalty(job) for job in problem.jobs)
        assert _brute_force(problem) == pytest.approx(empty)
        return
    assert check(problem, plan) == []
    assert abs(plan.objective - _brute_force(problem)) <= 1e-6 * max(1.0, plan.objective)
    assert plan.lp_bound is not None and 0.0 <= plan.lp_bound <= plan.objective + 1e-6
    classes = build_classes(problem)
    for rule in (first_come, greedy_regret):
        assert check(problem, units_to_plan(problem, classes, rule(problem, classes))) == []
