"""The LP read off MathOpt's result message gives what ``mathopt.solve`` gives, and pricing
over every pool's rounding cuts at once gives what pricing candidate by candidate gives."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.lp_solution import ById, solve_lp
from scheduler.model import Duals, PoolIndex, build_classes, reduced_costs, rounding_coefficients
from tests.unit.test_scheduler_limits import _fleet


def _model() -> tuple[Any, list[Any], list[Any]]:
    """A small LP (a mathopt.Model) with its variables and rows."""
    from ortools.math_opt.python import mathopt

    model = mathopt.Model()
    x = model.add_variable(lb=0.0, ub=4.0, name="x")
    y = model.add_variable(lb=0.0, name="y")
    z = model.add_variable(lb=0.0, ub=1.0, name="z")  # unused by any row
    rows = [
        model.add_linear_constraint(x + y >= 3.0, name="cover"),
        model.add_linear_constraint(x - 2.0 * y <= 1.0, name="mix"),
        model.add_linear_constraint(y <= 5.0, name="slack"),
    ]
    model.minimize(2.0 * x + 3.0 * y + z)
    return model, [x, y, z], rows


def test_values_and_duals_match_those_mathopt_parses() -> None:
    from ortools.math_opt.python import mathopt

    model, variables, rows = _model()
    params = mathopt.SolveParameters(enable_output=False)
    ours = solve_lp(model, params)
    theirs = mathopt.solve(model, mathopt.SolverType.HIGHS, params=params)
    assert ours.objective == pytest.approx(theirs.objective_value())
    assert ours.objective == pytest.approx(2.0 * 7 / 3 + 3.0 * 2 / 3)  # x = 7/3, y = 2/3
    values, duals = theirs.variable_values(), theirs.dual_values()
    for v in variables:
        assert ours.values[v] == pytest.approx(values[v])
    assert ours.duals is not None
    for row in rows:
        assert ours.duals[row] == pytest.approx(duals[row])
    assert ours.duals[rows[0]] > 0.0 and ours.duals[rows[2]] == 0.0


def test_an_infeasible_lp_names_how_it_ended() -> None:
    from ortools.math_opt.python import mathopt

    model = mathopt.Model()
    x = model.add_variable(lb=0.0, ub=1.0)
    model.add_linear_constraint(x >= 2.0)
    model.minimize(x)
    with pytest.raises(RuntimeError, match="LP relaxation ended INFEASIBLE"):
        solve_lp(model, mathopt.SolveParameters(enable_output=False))


def test_an_id_the_solution_leaves_out_reads_as_zero() -> None:
    class Var:
        def __init__(self, id: int) -> None:
            self.id = id

    values = ById([0, 3], [1.5, -2.0])
    assert values[Var(3)] == -2.0 and values[Var(1)] == 0.0
    assert values.get(Var(9), 7.0) == 7.0  # past the largest id
    assert ById([], []).get(Var(0)) == 0.0


def _priced_one_by_one(problem, pools, cls, duals: Duals) -> np.ndarray:
    """Pricing with no cut duals, less each candidate's cuts taken in turn."""
    plain = replace(duals, cuts={}, _pool_cuts=None)
    rc = reduced_costs(problem, pools, cls, plain)
    rows = problem.candidates.of_shape(cls.shape)
    pool = problem.candidates.pool[rows.start : rows.stop]
    nodes = problem.candidates.nodes[rows.start : rows.stop]
    for i in range(len(rc)):
        for d, value in duals.cuts.get(int(pool[i]), ()):
            rc[i] -= value * float(rounding_coefficients(nodes[i], d, pools.capacity[pool[i]]))
    return rc


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.integers(0, 11),
        st.lists(st.tuples(st.integers(2, 5), st.floats(0.0, 50.0)), min_size=1, max_size=3),
        max_size=8,
    )
)
def test_cut_duals_priced_at_once_equal_those_priced_one_by_one(
    cuts: dict[int, list[tuple[int, float]]],
) -> None:
    problem = _fleet(6, 12, seed=4)
    classes, pools = build_classes(problem), PoolIndex.of(problem)
    duals = Duals.zero(problem, pools)
    duals.pool = np.linspace(0.0, 3.0, len(problem.pools))
    duals.cuts = cuts
    for cls in classes:
        at_once = reduced_costs(problem, pools, cls, duals)
        assert np.array_equal(at_once, _priced_one_by_one(problem, pools, cls, duals))
