"""What no policy can beat on this supply: linear floors under the month's demand.

    python -m bench.simulate.floors [--seed S] [--cap 0.35] [--reclaims R]

The replay's figures carry everything a replay adds (pools that fill and empty, reclaims,
arrivals nobody foresees). These floors leave all of that out: every job of
``bench/simulate/fleet.yaml`` (seed S) is known at once, every pool has room, and a job may
be split over its candidates. The candidates are the planner's own
(``scheduler.candidates.build_problem``, spot priced at R reclaims per node-hour, by
default the rate the replay measured), so each floor is the least any plan over them can
cost:
- the month as it is (deadlines kept);
- with no provider above ``cap`` of the GPU-hours: a cap held on the GPUs in use at every
  moment, as the planner holds it, also holds on the period's GPU-hours, so no capped
  schedule costs less;
- with the deadlines dropped: what a rule that ignores them can reach.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from bench.simulate.__main__ import PROVIDERS, SCENARIO
from bench.simulate.catalogs import CATALOGS, catalog_database

MEASURED_RECLAIMS = 0.27  # per spot node-hour, the gpubroker replay's ledger (RESULTS.md)


def floor(problem: Any, cap: float | None) -> tuple[float, dict[str, float]]:
    """The LP's least cost, and each provider's share of its GPU-hours."""
    from ortools.linear_solver import pywraplp

    c = problem.candidates
    solver = pywraplp.Solver.CreateSolver("GLOP")
    providers = problem.providers
    work: dict[str, Any] = dict.fromkeys(providers, 0)
    cost: Any = 0
    for job in problem.jobs:
        rows = c.of_shape(job.shape)
        if len(rows) == 0:
            raise RuntimeError(f"job {job.id} has no candidate")
        shares = [solver.NumVar(0.0, 1.0, "") for _ in rows]
        solver.Add(sum(shares) == 1)
        for x, i in zip(shares, rows, strict=True):
            work[problem.pools[int(c.pool[i])].provider] += float(c.gpus[i] * c.hours[i]) * x
            cost += float(c.cost[i]) * x
    total = sum(work.values())
    if cap is not None:
        for provider in providers:
            solver.Add(work[provider] <= cap * total)
    solver.Minimize(cost)
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        raise RuntimeError("the relaxation has no optimum")
    hours = {p: float(work[p].solution_value()) for p in providers}
    whole = sum(hours.values()) or 1.0
    return float(solver.Objective().Value()), {p: h / whole for p, h in hours.items() if h}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cap", type=float, default=0.35)
    parser.add_argument("--reclaims", type=float, default=MEASURED_RECLAIMS)
    args = parser.parse_args()
    if not CATALOGS.is_dir():
        print(f"missing dataset: {CATALOGS}", file=sys.stderr)
        return 1

    from broker.services import simulate
    from broker.services.offers.upsert import upsert_offers
    from broker.services.planning.inputs import available_pools
    from broker.services.simulate.scenario import arrivals
    from broker.services.simulate.supply import offers_from
    from scheduler.candidate_rules import CandidateSettings
    from scheduler.candidates import build_problem
    from workloads.spec import parse_spec

    _, settings, db = catalog_database(PROVIDERS, "bench-floors-")
    loaded = simulate.load(SCENARIO)
    # the scenario's supply, each provider's offers replaced by it with no capacity limit
    offers = [replace(o, capacity_nodes=None) for o in offers_from(db, loaded)]
    for name in PROVIDERS:
        upsert_offers(db, [o for o in offers if o.provider == name], provider=name, full=True)
    with db.session() as session:
        pools = available_pools(session, settings)
    db.dispose()

    start = loaded.scenario.start
    jobs = arrivals(loaded, args.seed)
    knobs = CandidateSettings(preemptions_per_hour=args.reclaims)

    def problem(deadlines: bool) -> Any:
        specs = []
        for index, arrival in enumerate(jobs, start=1):
            spec = dict(arrival.spec)
            spec.pop("deadline", None)
            if deadlines and arrival.deadline is not None:  # as far ahead as when it came
                spec["deadline"] = (start + (arrival.deadline - arrival.at)).isoformat()
            specs.append((index, parse_spec(spec)))
        return build_problem(specs, pools, now=start, knobs=knobs)

    month, free = problem(True), problem(False)
    rows = [
        ("the month, deadlines kept", *floor(month, None)),
        (f"no provider above {args.cap:.0%} of GPU-hours", *floor(month, args.cap)),
        ("deadlines dropped", *floor(free, None)),
    ]
    print(
        f"{len(jobs)} jobs (seed {args.seed}), {len(pools)} pools with no capacity limit, spot "
        f"at {args.reclaims} reclaims per node-hour: LP floors"
    )
    base = rows[0][1]
    print(f"{'floor':<34}{'USD':>12}{'vs month':>10}  GPU-hour shares")
    for label, cost, shares in rows:
        split = ", ".join(f"{p} {s:.0%}" for p, s in sorted(shares.items()))
        print(f"{label:<34}{cost:>12,.2f}{cost / base - 1:>+10.1%}  {split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
