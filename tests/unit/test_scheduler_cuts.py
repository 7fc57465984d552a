"""Rounding cuts of pool and quota rows: valid for every integer plan, and stronger than
the plain rounding where whole gangs cannot fill a row."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.model import Master, PoolIndex, build_classes, rounding_coefficients
from scheduler.problem import Quota
from tests.unit.test_scheduler_core import _brute_force, _pool, _problem


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=4),
    st.integers(0, 24),
    st.integers(2, 9),
)
def test_a_rounding_cut_holds_for_every_integer_point_of_its_row(
    sizes: list[int], rhs: int, d: int
) -> None:
    cut = rounding_coefficients(np.array(sizes), d, float(rhs))
    assert (cut >= np.array(sizes) // d).all()  # at least the plain rounding
    for y in itertools.product(*(range(rhs // a + 1) for a in sizes)):
        if sum(a * n for a, n in zip(sizes, y, strict=True)) <= rhs:
            assert float(cut @ np.array(y)) <= rhs // d + 1e-9


def test_a_pool_of_four_nodes_takes_one_three_node_gang_or_two_two_node_ones() -> None:
    # plain rounding by 3 drops the 2-node gangs: y3 <= 1; this cut is (1/2) y2 + y3 <= 1
    assert rounding_coefficients(np.array([1, 2, 3]), 3, 4.0).tolist() == [0.0, 0.5, 1.0]
    assert float(rounding_coefficients(4, 2, 4.0)) == 2.0  # d divides the row: the row / d


def test_a_quota_cut_keeps_the_lp_from_splitting_a_node_across_two_pools() -> None:
    """Two pools of 8-GPU nodes under a 12-GPU quota and two one-node jobs: each column may
    hold one node, so the LP places one job and half of the other across the two pools.
    Only one fits whole; the quota's rounding cut by 8 makes the LP say so."""
    pools = [_pool(0, "aws", 1, 10.0), _pool(1, "aws", 1, 12.0)]
    jobs = [("a", 0, [(0, 1, 1.0), (1, 1, 1.0)]), ("a", 0, [(0, 1, 1.0), (1, 1, 1.0)])]
    problem = _problem(pools, jobs)
    problem.quotas = [Quota(provider="aws", limit=12.0)]
    classes, index = build_classes(problem), PoolIndex.of(problem)
    lp = Master(problem, classes, index, integer=False)
    for cls in classes:
        rows = problem.candidates.of_shape(cls.shape)
        lp.add_columns(cls, np.arange(rows.start, rows.stop))
    split, _ = lp.solve_lp()
    assert lp.add_rounding_cuts() == 1
    assert list(lp._quota_cut_rows) == [(0, 8)]
    whole, _ = lp.solve_lp()
    assert split < whole == pytest.approx(_brute_force(problem))
