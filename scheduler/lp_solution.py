"""An LP's solution read straight off MathOpt's result message, as arrays by id.

``mathopt.solve`` turns every value, dual and basis status of its result into Python
dictionaries keyed by variable and row objects. Column generation reads the duals of
every row each round and the primal values of a few: on L catalog with a 35 % spend cap,
that parsing took 4.8 s of the 22 s of 34 rounds, more than a third of HiGHS's own 8 s.
Here the same solve is read into numpy arrays indexed by the variables' and rows' ids.
ortools is imported inside ``solve_lp`` so importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class ById:
    """Values of a model's variables or rows, looked up by the object (its ``id``); 0.0
    for one the solution leaves out."""

    def __init__(self, ids: Any, values: Any) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        self._values = np.zeros(int(ids.max()) + 1 if len(ids) else 0)
        self._values[ids] = np.asarray(values, dtype=float)

    def get(self, key: Any, default: float = 0.0) -> float:
        i = key.id
        return float(self._values[i]) if i < len(self._values) else default

    def __getitem__(self, key: Any) -> float:
        return self.get(key)


@dataclass(frozen=True)
class LpSolution:
    """An optimal LP's objective, primal values and (None where the solver gave no
    feasible dual solution) duals."""

    objective: float
    values: ById
    duals: ById | None


def solve_lp(model: Any, params: Any) -> LpSolution:
    """HiGHS on ``model`` (a ``mathopt.Model``) with ``params``; RuntimeError unless it
    ends optimal."""
    from ortools.math_opt import result_pb2, solution_pb2
    from ortools.math_opt.core.python import solver
    from ortools.math_opt.python import mathopt

    proto = solver.solve(
        model.export_model(),
        mathopt.SolverType.HIGHS.value,
        mathopt.StreamableSolverInitArguments().to_proto(),
        params.to_proto(),
        mathopt.ModelSolveParameters().to_proto(),
        None,
        mathopt.CallbackRegistration().to_proto(),
        None,
        None,
    )
    reason = proto.termination.reason
    if reason != result_pb2.TERMINATION_REASON_OPTIMAL:
        name = result_pb2.TerminationReasonProto.Name(reason).removeprefix("TERMINATION_REASON_")
        raise RuntimeError(f"LP relaxation ended {name}")
    # the first solution, as ``mathopt.SolveResult`` reads it
    first = proto.solutions[0]
    primal, dual = first.primal_solution, first.dual_solution
    feasible = solution_pb2.SOLUTION_STATUS_FEASIBLE
    if not first.HasField("primal_solution") or primal.feasibility_status != feasible:
        raise RuntimeError("LP relaxation ended optimal without a feasible solution")
    has_duals = first.HasField("dual_solution") and dual.feasibility_status == feasible
    values = primal.variable_values
    return LpSolution(
        objective=float(primal.objective_value),
        values=ById(values.ids, values.values),
        duals=ById(dual.dual_values.ids, dual.dual_values.values) if has_duals else None,
    )
