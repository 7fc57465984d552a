"""The integer model over every candidate: written column-wise at once, and solved.

``write_every_column`` writes every candidate of every class into a ``Master`` straight
from the candidate arrays (the model's own protocol buffer, rows and columns sorted), where
``Master.add_columns`` would take seconds per 10^5 columns. ``solve_full_space`` runs HiGHS
on that model in one of the modes ``solve`` picks: branch and bound, its root cuts alone
for their bound, or either with the share cap moved into the objective at the LP's duals
(a Lagrangian relaxation, ``bound.share_prices``): its bound holds for the capped problem,
and its solution is a plan wherever it keeps the cap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from scheduler.baselines import Units
from scheduler.bound import share_prices
from scheduler.model import Duals, JobClass, Master, PoolIndex, rounding_coefficients, unit_bounds
from scheduler.problem import INFERENCE, Problem

ROOT_MODES = ("root", "priced root")  # full-space steps that run for their bound alone
PRICED_MODES = ("priced", "priced root")  # the share cap priced into the objective


@dataclass
class FullSpace:
    """The full-space step's proven bound and best solution (None: none; a priced mode's
    may break the cap), and whether the wall-clock safety stop ended it."""

    bound: float | None = None
    units: Units | None = None
    clock_stop: bool = False


def solve_full_space(
    problem: Problem,
    classes: list[JobClass],
    pools: PoolIndex,
    lp_model: Master,
    mode: str | None,
    *,
    dense_share: bool,
    nodes: int,
    deadline: float,
    relative_gap: float,
    seed: int,
    cost_weight: float = 1.0,
) -> FullSpace:
    """HiGHS on the integer model over every candidate, with ``lp_model``'s cuts, limited
    to ``nodes`` branch-and-bound nodes; nothing when ``mode`` is None. A priced mode
    prices the share rows with ``lp_model``'s duals (zero where it has none: the cap
    simply left out). ``cost_weight``: the candidates' cost in the objective
    (``Master.cost_weight``)."""
    if mode is None:
        return FullSpace()
    if deadline - time.perf_counter() <= 0.5:
        return FullSpace(clock_stop=True)
    priced = mode in PRICED_MODES
    prices = None
    if priced:
        prices = share_prices(problem, pools, lp_model.duals or Duals.zero(problem, pools))
        if prices is None:
            return FullSpace()  # the Lagrangian is unbounded below at these duals

    full = Master(
        problem,
        classes,
        pools,
        integer=True,
        capped=not priced,
        dense_share=dense_share,
        cost_weight=cost_weight,
    )
    full.copy_cuts_from(lp_model)
    write_every_column(
        full,
        [problem.candidates.of_shape(cls.shape) for cls in classes],
        prices=None if prices is None else prices.of,
    )
    left = deadline - time.perf_counter()
    if left <= 0.5:
        return FullSpace(clock_stop=True)
    result = full.solve_mip(
        "highs",
        time_limit=left,
        relative_gap=relative_gap,
        seed=seed,
        nodes=nodes,
        root_bound=mode in ROOT_MODES,
    )
    bound = result.bound
    if bound is not None and prices is not None:
        bound += prices.constant
    return FullSpace(bound, result.units, result.clock_stop)


def write_every_column(
    master: Master,
    ranges: list[range],
    *,
    prices: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Every candidate of each class (``ranges[k]`` for class k) at once, written
    column-wise from the candidate arrays into a fresh copy of the model: at 10^5
    columns this takes a fraction of a second where ``add_columns`` takes seconds.
    Only for a model that starts empty of columns and is then solved as it is (no
    more columns or cuts). ``prices`` adds to each candidate's cost in the objective
    (its cost there weighed by ``master.cost_weight``)."""
    from ortools.math_opt.python import mathopt

    assert not master.columns, "write_every_column: the model already has columns"
    c = master.problem.candidates
    for cls, rows in zip(master.classes, ranges, strict=True):
        for p in np.unique(c.pool[rows.start : rows.stop]):
            master._pool_row(int(p))
        if cls.team in master.problem.budgets and len(rows):
            master._budget_row(cls.team)
    for q in range(len(master.problem.quotas)):
        master._quota_row(q)
    proto = master.model.export_model()
    first = max(proto.variables.ids, default=-1) + 1
    var_ids: list[np.ndarray] = []
    of_class: list[np.ndarray] = []
    cands_all: list[np.ndarray] = []
    upper: list[np.ndarray] = []
    objective: list[np.ndarray] = []
    entry_rows: list[np.ndarray] = []
    entry_cols: list[np.ndarray] = []
    entry_values: list[np.ndarray] = []
    placed = 0
    for cls, rows in zip(master.classes, ranges, strict=True):
        if len(rows) == 0:
            continue
        cands = np.arange(rows.start, rows.stop)
        ub = unit_bounds(master.problem, master.pools, cls, cands)
        cands, ub = cands[ub > 0], ub[ub > 0]
        ids = first + placed + np.arange(len(cands))
        placed += len(cands)
        var_ids.append(ids)
        of_class.append(np.full(len(cands), cls.index))
        cands_all.append(cands)
        upper.append(ub.astype(np.float64))
        cost = c.cost[cands] * master.cost_weight
        objective.append(cost if prices is None else cost + prices(cands))
        for row_id, values in _column_entries(master, cls, cands):
            keep = values != 0
            entry_rows.append(np.broadcast_to(np.asarray(row_id, dtype=np.int64), len(cands))[keep])
            entry_cols.append(ids[keep])
            entry_values.append(np.asarray(values, dtype=np.float64)[keep])
    if not var_ids:
        return
    ids = np.concatenate(var_ids)
    proto.variables.ids.extend(ids.tolist())
    proto.variables.lower_bounds.extend([0.0] * len(ids))
    proto.variables.upper_bounds.extend(np.concatenate(upper).tolist())
    proto.variables.integers.extend([bool(master.integer)] * len(ids))
    if len(proto.variables.names):
        proto.variables.names.extend([""] * len(ids))
    proto.objective.linear_coefficients.ids.extend(ids.tolist())
    proto.objective.linear_coefficients.values.extend(
        np.concatenate(objective).astype(np.float64).tolist()
    )
    matrix = proto.linear_constraint_matrix
    rows_all = np.concatenate([np.asarray(matrix.row_ids, dtype=np.int64), *entry_rows])
    cols_all = np.concatenate([np.asarray(matrix.column_ids, dtype=np.int64), *entry_cols])
    vals_all = np.concatenate([np.asarray(matrix.coefficients, dtype=np.float64), *entry_values])
    order = np.lexsort((cols_all, rows_all))
    del matrix.row_ids[:], matrix.column_ids[:], matrix.coefficients[:]
    matrix.row_ids.extend(rows_all[order].tolist())
    matrix.column_ids.extend(cols_all[order].tolist())
    matrix.coefficients.extend(vals_all[order].tolist())
    master.model = model = mathopt.Model.from_model_proto(proto)
    master._bulk = (ids, np.concatenate(of_class), np.concatenate(cands_all))
    # the new model keeps every id: point the rows and variables kept here at it
    row_maps: list[dict[Any, Any]] = [  # their keys differ in type
        master._cls_rows,
        master._cover_rows,
        master._replica_rows,
        master._pool_rows,
        master._cut_rows,
        master._quota_rows,
        master._budget_rows,
        master._provider_rows,
        master._cover_cut_rows,
        master._quota_cut_rows,
    ]
    for rows_of in row_maps:
        for key, row in rows_of.items():
            rows_of[key] = model.get_linear_constraint(row.id)
    if master._total_row is not None:
        master._total_row = model.get_linear_constraint(master._total_row.id)
    master.unplaced = [model.get_variable(u.id) for u in master.unplaced]
    if master._total is not None:
        master._total = model.get_variable(master._total.id)


def _column_entries(
    master: Master, cls: JobClass, cands: np.ndarray
) -> Iterator[tuple[Any, np.ndarray]]:
    """(row id or array of row ids, coefficients) of the class's candidates ``cands``
    in every row, as ``add_columns`` writes them one by one."""
    c = master.problem.candidates
    pool, nodes = c.pool[cands], c.nodes[cands].astype(np.int64)
    gpus, cost = c.gpus[cands].astype(np.float64), c.cost[cands]
    if cls.kind == INFERENCE:
        area, rate = c.area[cands].astype(np.int64), c.rate[cands]
        cover_ids = np.array(
            [master._cover_rows[(cls.index, a)].id for a in range(len(cls.demand))], dtype=np.int64
        )
        yield cover_ids[area], rate
        for (k, a, t), row in sorted(master._cover_cut_rows.items()):
            if k == cls.index:
                yield row.id, np.where(area == a, np.ceil(rate / t - 1e-9), 0.0)
        if cls.index in master._replica_rows:
            yield master._replica_rows[cls.index].id, c.replicas[cands].astype(np.float64)
    else:
        yield master._cls_rows[cls.index].id, np.ones(len(cands))
    pool_ids = np.zeros(len(master.pools.capacity), dtype=np.int64)
    for p, row in master._pool_rows.items():
        pool_ids[p] = row.id
    yield pool_ids[pool], nodes.astype(np.float64)
    for (p, d), row in sorted(master._cut_rows.items()):
        cap = float(master.pools.capacity[p])
        yield row.id, np.where(pool == p, rounding_coefficients(nodes, d, cap), 0.0)
    for q, row in sorted(master._quota_rows.items()):
        yield row.id, np.where(master.pools.in_quota[q][pool], gpus, 0.0)
    for (q, d), row in sorted(master._quota_cut_rows.items()):
        limit = float(master.problem.quotas[q].limit)
        cut = rounding_coefficients(gpus, d, limit)
        yield row.id, np.where(master.pools.in_quota[q][pool], cut, 0.0)
    if cls.team in master.problem.budgets:
        yield master._budget_rows[cls.team].id, cost
    share = master.problem.share_cap if master.capped else None
    if share is not None:
        weight = gpus if master.problem.share_on == "gpus" else cost
        own = master.pools.provider[pool]
        for v, row in sorted(master._provider_rows.items()):
            if master.dense_share:
                yield row.id, weight * ((own == v) - share)
            else:
                yield row.id, np.where(own == v, weight, 0.0)
        if not master.dense_share:
            assert master._total_row is not None
            yield master._total_row.id, weight
