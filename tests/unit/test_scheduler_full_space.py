"""The full-space step: every column written at once, the root-cut bound, a quiet solver."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import scheduler.solve as solve_module
from bench.scheduler.generate import Config, adversarial, synthetic
from bench.scheduler.memory import children
from scheduler.baselines import Units
from scheduler.full_space import FullSpace, write_every_column
from scheduler.model import JobClass, Master, PoolIndex, build_classes
from scheduler.problem import Problem
from scheduler.solve import WorkLimits, lp_bound, solve
from scheduler.validate import check
from tests.unit.test_scheduler_core import _brute_force, _pool, _problem, small_problems

ROOT_ONLY = WorkLimits(full_space_columns=0, full_space_capped_columns=0)


def _fleet(kind: str, seed: int, cap: str | None) -> Problem:
    make = synthetic if kind == "synthetic" else adversarial
    problem = make(Config(jobs=30, offers=200, seed=seed))
    if cap is not None:
        problem.max_provider_share, problem.share_on = 0.35, cap  # type: ignore[assignment]
    return problem


def _two_ways(problem: Problem, *, integer: bool, dense: bool) -> tuple[Master, Master]:
    """The model over every candidate, one column at a time and all at once, both with the
    rounding cuts an LP over every candidate finds."""
    classes, pools = build_classes(problem), PoolIndex.of(problem)
    ranges = [problem.candidates.of_shape(cls.shape) for cls in classes]
    lp = Master(problem, classes, pools, integer=False)
    for cls, rows in zip(classes, ranges, strict=True):
        lp.add_columns(cls, np.arange(rows.start, rows.stop))
    lp.solve_lp()
    while lp.add_rounding_cuts() + lp.add_cover_cuts():
        lp.solve_lp()
    one, bulk = (
        Master(problem, classes, pools, integer=integer, dense_share=dense) for _ in range(2)
    )
    for model in (one, bulk):
        model.copy_cuts_from(lp)
    for cls, rows in zip(classes, ranges, strict=True):
        one.add_columns(cls, np.arange(rows.start, rows.stop))
    write_every_column(bulk, ranges)
    return one, bulk


@pytest.mark.parametrize(
    ("kind", "seed", "cap", "dense"),
    [
        ("synthetic", 1, None, False),
        ("synthetic", 2, "gpus", False),
        ("synthetic", 3, "spend", True),
        ("adversarial", 4, None, False),
        ("adversarial", 5, "spend", False),
        ("adversarial", 6, "gpus", True),
    ],
)
def test_every_column_at_once_is_the_model_built_one_column_at_a_time(
    kind: str,
    seed: int,
    cap: str | None,
    dense: bool,
) -> None:
    problem = _fleet(kind, seed, cap)
    one, bulk = _two_ways(problem, integer=False, dense=dense)
    assert one.model.get_num_variables() == bulk.model.get_num_variables()
    assert one.solve_lp()[0] == pytest.approx(bulk.solve_lp()[0], rel=1e-9)
    one, bulk = _two_ways(problem, integer=True, dense=dense)
    exact = {"time_limit": 60.0, "relative_gap": 0.0, "seed": 1, "nodes": 100_000}
    a, b = one.solve_mip("highs", **exact), bulk.solve_mip("highs", **exact)  # type: ignore[arg-type]
    assert a.status == b.status == "optimal"
    assert a.bound == pytest.approx(b.bound, rel=1e-9)
    assert b.units  # the units read back name (class, candidate) columns
    cost = sum(float(problem.candidates.cost[cand]) * n for (_, cand), n in b.units.items())
    assert cost <= (b.bound or 0.0) + 1e-6


def test_a_gang_packing_gap_the_integer_solve_settles_skips_the_full_space_step() -> None:
    """3- and 2-node gangs, a cheap pool of 4 nodes: the LP bound is 60, the optimum 70.
    The integer model holds every column, so its proven bound settles the plan and the
    root cuts are not run."""
    pools = [_pool(0, "aws", 4, 10.0), _pool(1, "gcp", 8, 20.0)]
    jobs = [("a", 0, [(0, 3, 1.0), (1, 3, 1.0)]), ("a", 0, [(0, 2, 1.0), (1, 2, 1.0)])]
    plan = solve(_problem(pools, jobs), time_limit=5, work=ROOT_ONLY)
    assert check(_problem(pools, jobs), plan) == []
    assert plan.objective == 70.0 and plan.lp_bound == 70.0
    assert "root_bound" not in plan.timings and plan.timings["full_space_skipped"] == 1.0
    assert not plan.clock_stop


def test_a_full_space_step_not_wanted_is_killed_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The full-space step starts beside the integer solve over the kept columns; where
    that solve settles the plan, the step's process is killed: the plan does not wait
    for it, and nothing of it is left running."""

    def slow_step(*args: object, **kwargs: object) -> FullSpace:
        time.sleep(60)
        return FullSpace()

    monkeypatch.setattr(solve_module, "solve_full_space", slow_step)
    pools = [_pool(0, "aws", 4, 10.0), _pool(1, "gcp", 8, 20.0)]
    jobs = [("a", 0, [(0, 3, 1.0), (1, 3, 1.0)]), ("a", 0, [(0, 2, 1.0), (1, 2, 1.0)])]
    before = set(children(os.getpid()))
    began = time.monotonic()
    plan = solve(_problem(pools, jobs), time_limit=120, work=ROOT_ONLY)
    assert time.monotonic() - began < 30
    assert plan.objective == 70.0 and plan.timings["full_space_skipped"] == 1.0
    assert set(children(os.getpid())) <= before


def test_a_full_space_step_wanted_is_answered_from_its_own_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the integer solve over the kept columns does not settle the plan, the
    full-space step's answer, worked out in a process of its own, raises the bound."""
    problem = _fleet("adversarial", 6, None)
    work = WorkLimits(full_space_columns=0, full_space_capped_columns=0, mip_nodes=1)
    parent = os.getpid()
    real = solve_module.solve_full_space

    def elsewhere(*args: object, **kwargs: object) -> FullSpace:
        found = real(*args, **kwargs)  # type: ignore[arg-type]
        assert os.getpid() != parent
        return found

    monkeypatch.setattr(solve_module, "solve_full_space", elsewhere)
    with_step = solve(problem, time_limit=30, relative_gap=1e-9, explain=False, work=work)
    monkeypatch.setattr(solve_module, "solve_full_space", lambda *a, **k: FullSpace())
    without = solve(problem, time_limit=30, relative_gap=1e-9, explain=False, work=work)
    assert "root_bound" in with_step.timings
    assert with_step.lp_bound is not None and without.lp_bound is not None
    assert with_step.lp_bound > without.lp_bound


def test_root_cuts_run_where_the_integer_solve_has_not_settled_the_plan() -> None:
    """An adversarial fleet whose integer solve, held to one node, does not settle the
    plan within the (tiny) gap asked for, and whose plan places as many jobs as the LP:
    the root cuts run, and the bound stays valid."""
    problem = _fleet("adversarial", 6, None)
    work = WorkLimits(full_space_columns=0, full_space_capped_columns=0, mip_nodes=1)
    plan = solve(problem, time_limit=30, relative_gap=1e-9, explain=False, work=work)
    assert check(problem, plan) == []
    assert "root_bound" in plan.timings and "full_space_skipped" not in plan.timings
    assert plan.lp_bound is not None and 0.0 <= plan.lp_bound <= plan.objective


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_the_root_bound_never_passes_the_optimum(problem: Problem) -> None:
    hosts = {problem.pools[int(p)].provider for p in problem.candidates.pool}
    if problem.share_cap is not None and hosts and problem.share_cap < 1 / len(hosts):
        return
    plan = solve(problem, time_limit=5, explain=False, work=ROOT_ONLY)
    assert check(problem, plan) == []
    assert plan.lp_bound is not None
    assert 0.0 <= plan.lp_bound <= _brute_force(problem) + 1e-6


def test_the_solvers_print_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    """No native solver output reaches standard output (a JSON plan there stays whole),
    nor, with the solvers' logs off, standard error on these fleets."""
    problem = _fleet("synthetic", 1, None)
    for solver in ("highs", "cpsat"):
        solve(problem, solver=solver, time_limit=20, explain=False)
    solve(problem, time_limit=20, explain=False, work=ROOT_ONLY)
    solve(_fleet("synthetic", 2, "spend"), time_limit=20, explain=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


PRICED_ONLY = WorkLimits(full_space_capped_columns=0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_the_bound_with_the_cap_priced_in_never_passes_the_capped_optimum(
    problem: Problem,
) -> None:
    hosts = {problem.pools[int(p)].provider for p in problem.candidates.pool}
    if problem.share_cap is not None and hosts and problem.share_cap < 1 / len(hosts):
        return
    plan = solve(problem, time_limit=5, explain=False, work=PRICED_ONLY)
    assert check(problem, plan) == []
    assert plan.lp_bound is not None
    assert 0.0 <= plan.lp_bound <= _brute_force(problem) + 1e-6


def test_a_cap_that_does_not_bind_is_proven_by_the_priced_bound() -> None:
    """Where the 35 % cap does not bind, the LP prices its rows at zero: the priced model
    is the one without the cap, and it proves the plan optimal."""
    problem = _fleet("adversarial", 7, None)
    free = solve(problem, time_limit=30, explain=False)
    problem.max_provider_share, problem.share_on = 0.35, "gpus"
    capped = solve(problem, time_limit=30, explain=False, work=PRICED_ONLY)
    assert check(problem, capped) == []
    assert capped.objective == pytest.approx(free.objective)
    assert capped.gap == pytest.approx(0.0, abs=1e-6) and not capped.clock_stop


@pytest.mark.parametrize(("seed", "cap"), [(1, "spend"), (7, "spend"), (3, "gpus")])
def test_a_binding_cap_priced_in_bounds_above_the_lp_and_any_plan_without_the_cap(
    seed: int, cap: str
) -> None:
    """The share rows priced at the LP's duals: the bound lies between the capped LP bound
    and the capped optimum, and above the cheapest plan without the cap, which is as
    far as leaving the cap out could ever bound it."""
    problem = _fleet("synthetic", seed, cap)
    exact = solve(problem, time_limit=60, explain=False)
    assert exact.gap is not None and exact.gap < 1e-3
    priced = solve(problem, time_limit=60, explain=False, work=PRICED_ONLY)
    assert check(problem, priced) == [] and not priced.clock_stop
    lp = lp_bound(problem)
    problem.max_provider_share = None
    free = solve(problem, time_limit=60, explain=False)
    assert priced.lp_bound is not None
    assert lp - 1e-6 <= priced.lp_bound <= exact.objective + 1e-6
    assert priced.lp_bound > free.objective


def test_the_priced_models_plan_is_taken_where_it_keeps_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the integer solve over the kept columns finding nothing, the plan can only come
    from the greedy start or the priced full-space model. Where the cap does not bind the
    priced model is the uncapped one, and its optimum keeps the cap: it is the plan.
    Where the cap binds, its solution breaks the cap and is dropped without a word."""
    original = Master.solve_mip

    def nothing_over_kept_columns(self: Master, *args: object, **kwargs: object) -> object:
        result = original(self, *args, **kwargs)  # type: ignore[arg-type]
        if self.columns:  # the kept-column model; the full-space one is written in bulk
            result.units = None
        return result

    problem = _fleet("adversarial", 7, None)
    free = solve(problem, time_limit=30, explain=False)
    monkeypatch.setattr(Master, "solve_mip", nothing_over_kept_columns)
    problem.max_provider_share, problem.share_on = 0.35, "gpus"
    capped = solve(problem, time_limit=30, explain=False, work=PRICED_ONLY)
    assert check(problem, capped) == []
    assert capped.objective == pytest.approx(free.objective)
    assert "kept" not in capped.status  # neither greedy's plan nor the LP rounded
    binding = _fleet("synthetic", 1, "spend")
    plan = solve(binding, time_limit=30, explain=False, work=PRICED_ONLY)
    assert check(binding, plan) == []
    assert "refused" not in plan.status


def _greedy_only(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    rcs: object,
    greedy: Units,
    *,
    hold: float = 2.0,
) -> dict[int, np.ndarray]:
    """Kept columns (``solve._enrich``): only the greedy plan's."""
    return {
        cls.index: np.asarray(sorted({c for k, c in greedy if k == cls.index}), dtype=np.int64)
        for cls in classes
    }


@pytest.mark.parametrize(("seed", "cap"), [(1, "gpus"), (4, "spend")])
def test_the_priced_plans_columns_join_the_capped_integer_solve_unless_the_bound_settles_it(
    monkeypatch: pytest.MonkeyPatch, seed: int, cap: str
) -> None:
    """With only the greedy plan's columns kept, the capped integer solve cannot do better
    than greedy; the priced model's plan, found over every candidate, brings the columns
    that let it (its own plan breaks the cap). Where the full-space step's bound already
    settles the plan (here one reported at the plan's own cost), that solve is not run."""
    monkeypatch.setattr(solve_module, "_enrich", _greedy_only)
    # nor the LP rounded, which comes within the gap asked for here and ends the solve
    monkeypatch.setattr(solve_module, "lp_rounding", lambda *args: {})
    problem = _fleet("synthetic", seed, cap)
    joined = solve(problem, time_limit=30, explain=False, work=PRICED_ONLY)
    assert check(problem, joined) == [] and "integer_priced_columns" in joined.timings
    assert joined.lp_bound is not None and joined.lp_bound <= joined.objective

    with monkeypatch.context() as fault:
        fault.setattr(solve_module, "_add_units", lambda *args: 0)
        alone = solve(problem, time_limit=30, explain=False, work=PRICED_ONLY)
    assert joined.objective < alone.objective - 1.0

    real_step = solve_module.solve_full_space

    def settling(*args: object, **kwargs: object) -> FullSpace:
        found = real_step(*args, **kwargs)  # type: ignore[arg-type]
        return FullSpace(alone.objective, found.units, found.clock_stop)

    monkeypatch.setattr(solve_module, "solve_full_space", settling)
    settled = solve(problem, time_limit=30, explain=False, work=PRICED_ONLY)
    assert "integer_priced_columns" not in settled.timings
    assert settled.objective == pytest.approx(alone.objective)


def test_a_solver_plan_the_checker_rejects_is_refused_not_returned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A solution handed back over capacity (as HiGHS once did over a share row) is kept
    out of the plan, and the status says why."""
    pools = [_pool(0, "aws", 1, 10.0), _pool(1, "gcp", 4, 20.0)]
    jobs = [("a", 0, [(0, 1, 1.0), (1, 1, 1.0)]), ("a", 0, [(0, 1, 1.0), (1, 1, 1.0)])]
    problem = _problem(pools, jobs)
    original = Master.solve_mip

    def overbooked(self: Master, *args: object, **kwargs: object) -> object:
        result = original(self, *args, **kwargs)  # type: ignore[arg-type]
        if self.integer and self.columns:
            result.units = {key: 1 for key in self.columns if key[1] in (0, 2)}
        return result

    monkeypatch.setattr(Master, "solve_mip", overbooked)
    plan = solve(problem, time_limit=5, explain=False)
    assert check(problem, plan) == []
    assert "refused by the checker" in plan.status
