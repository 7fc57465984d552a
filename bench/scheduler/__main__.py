"""Run the scheduler benchmark: ``python -m bench.scheduler --size S|M|L|XL [--kind ...]``.

Prints one table per fleet: the solver's plan (uncapped, and under a 35 % provider share
cap on GPUs and on spend) and the three baselines, with cost, jobs placed, their weight
(1 + priority each) against the most weight any plan can place (an LP bound), the cost gap
over the jobs placed, the overall gap, constraint violations, time to the first feasible
plan, whether the wall-clock safety stop fired, and the peak memory of the planner and its
solver processes together (PSS, see ``bench/scheduler/memory.py``). Writes the rows as
JSON next to the printout when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.scheduler.generate import SIZES, Config, adversarial, catalog, synthetic
from bench.scheduler.memory import PeakMemory
from broker.errors import Infeasible
from scheduler.baselines import first_come, greedy_regret, per_job_cheapest, units_to_plan
from scheduler.model import build_classes
from scheduler.problem import Plan, Problem
from scheduler.solve import solve
from scheduler.validate import capacity_violations, check, provider_shares

CATALOGS = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cloud-catalogs"
TIME_LIMITS = {"S": 30.0, "M": 30.0, "L": 30.0, "XL": 120.0}
GAPS = {"S": 0.001, "M": 0.001, "L": 0.01, "XL": 0.02}


def row(
    name: str, problem: Problem, plan: Plan, bound: float, seconds: float, first: float | None
) -> dict:
    violations = check(problem, plan)
    placed = 1.0 - len(plan.unplaced) / max(len(problem.jobs), 1)
    shares = provider_shares(problem, plan)
    return {
        "plan": name,
        "cost": round(plan.cost, 2),
        "cost_over_lp": round(plan.objective / bound, 5) if bound > 0 else None,
        "placed": round(placed, 4),
        "violations": len(violations),
        "overbooked_pools": capacity_violations(problem, plan),
        "top_provider_share": round(max(shares.values(), default=0.0), 3),
        "seconds": round(seconds, 2),
        "first_feasible_s": None if first is None else round(first, 2),
    }


def run_fleet(label: str, problem: Problem, size: str, solver: str, caps: list[str]) -> list[dict]:
    limit, gap = TIME_LIMITS[size], GAPS[size]
    rows: list[dict] = []
    for cap in caps:
        problem.max_provider_share = None if cap == "none" else 0.35
        problem.share_on = "spend" if cap == "spend" else "gpus"
        name = f"{solver} MIP" + ("" if cap == "none" else f", 35% cap on {cap}")
        start = time.perf_counter()
        try:
            with PeakMemory() as memory:
                plan = solve(
                    problem, solver=solver, time_limit=limit, relative_gap=gap, explain=False
                )
        except Infeasible as exc:
            rows.append({"fleet": label, "plan": name, "status": str(exc)})
            continue
        bound = plan.lp_bound or 0.0
        r = row(
            name,
            problem,
            plan,
            bound,
            time.perf_counter() - start,
            plan.timings.get("first_feasible"),
        )
        r.update(
            {
                "gap": round(plan.gap or 0.0, 5),
                "cost_gap": None if plan.cost_gap is None else round(plan.cost_gap, 5),
                "placed_jobs": len(problem.jobs) - len(plan.unplaced),
                "placed_weight": plan.placed_weight,
                "most_placeable": plan.most_placeable,
                "lp_bound": round(bound, 2),
                "clock_stop": plan.clock_stop,
                "cg_rounds": int(plan.timings.get("cg_rounds", 0)),
                "peak_memory_mib": round(memory.mib, 1),
                "status": plan.status,
            }
        )
        rows.append(r)
    problem.max_provider_share = None
    problem.share_on = "gpus"
    bound = next((r["lp_bound"] for r in rows if r["plan"] == f"{solver} MIP"), 0.0)
    classes = build_classes(problem)
    for name, rule in (
        ("per-job cheapest", per_job_cheapest),
        ("first-come failover", first_come),
        ("greedy regret", greedy_regret),
    ):
        t0 = time.perf_counter()
        units = rule(problem, classes)
        base = units_to_plan(problem, classes, units, solver=name)
        took = time.perf_counter() - t0
        rows.append(row(name, problem, base, bound, took, took))
        rows[-1]["placed_jobs"] = len(problem.jobs) - len(base.unplaced)
        rows[-1]["placed_weight"] = problem.placed_weight(base)
    for r in rows:
        r["fleet"] = label
    return rows


def print_table(rows: list[dict]) -> None:
    cols = [
        "fleet",
        "plan",
        "cost",
        "placed_jobs",
        "placed_weight",
        "most_placeable",
        "cost_gap",
        "gap",
        "violations",
        "overbooked_pools",
        "top_provider_share",
        "first_feasible_s",
        "seconds",
        "clock_stop",
        "cg_rounds",
        "peak_memory_mib",
    ]
    widths = {c: max(len(c), *(len(str(r.get(c, "-"))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "-")).ljust(widths[c]) for c in cols))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler")
    parser.add_argument("--size", choices=sorted(SIZES), default="S")
    parser.add_argument(
        "--kind", choices=["synthetic", "catalog", "adversarial", "all"], default="all"
    )
    parser.add_argument("--solver", choices=["highs", "cpsat"], default="highs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--caps",
        default="none,gpus,spend",
        help="comma-separated runs: none, gpus, spend (a 35 %% share cap)",
    )
    parser.add_argument(
        "--capacity-scale",
        type=float,
        default=1.0,
        help="multiply every pool's capacity (below 1: capacity-tight)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    jobs, offers = SIZES[args.size]
    cfg = Config(jobs=jobs, offers=offers, seed=args.seed, capacity_scale=args.capacity_scale)
    kinds = ["synthetic", "catalog", "adversarial"] if args.kind == "all" else [args.kind]
    caps = [c.strip() for c in args.caps.split(",") if c.strip()]
    if not set(caps) <= {"none", "gpus", "spend"}:
        parser.error("--caps: each must be one of none, gpus, spend")
    print(
        f"# scheduler bench size {args.size} ({jobs} jobs x {offers} offers), seed {args.seed},"
        f" capacity x{args.capacity_scale},"
        f" {platform.machine()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    rows: list[dict] = []
    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "synthetic":
            problem = synthetic(cfg)
        elif kind == "adversarial":
            problem = adversarial(cfg)
        else:
            problem = catalog(cfg, CATALOGS)
            if problem is None:
                print(f"catalog replay skipped: {CATALOGS} not present")
                continue
        gen = time.perf_counter() - t0
        print(
            f"{kind}: {len(problem.jobs)} jobs, {len(problem.pools)} pools, "
            f"{len(problem.candidates)} candidates, generated in {gen:.1f} s",
            flush=True,
        )
        rows.extend(run_fleet(kind, problem, args.size, args.solver, caps))
    print_table(rows)
    mip = [r for r in rows if "MIP" in r["plan"]]
    for r in mip:
        if "status" in r and "cost" not in r:
            print(f"{r['fleet']}, {r['plan']}: {r['status']}")
    if args.out:
        args.out.write_text(json.dumps({"size": args.size, "rows": rows}, indent=2))
    return 1 if any(r.get("violations") for r in mip) else 0


if __name__ == "__main__":
    sys.exit(main())
