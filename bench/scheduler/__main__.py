"""Run the scheduler benchmark: ``python -m bench.scheduler --size S|M|L|XL [--kind ...]``.

Prints one table per fleet: the solver's plan and the three baselines, with cost, cost over
the full-space LP bound, placed fraction, constraint violations, time to the first
feasible plan and to a 1 % gap, and peak RSS; then the price of a 35 % provider share cap.
Writes the rows as JSON next to the printout when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.scheduler.generate import SIZES, Config, adversarial, catalog, synthetic
from scheduler.baselines import first_come, greedy_regret, per_job_cheapest, units_to_plan
from scheduler.model import build_classes
from scheduler.problem import Plan, Problem
from scheduler.solve import solve
from scheduler.validate import capacity_violations, check, provider_shares

CATALOGS = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cloud-catalogs"
TIME_LIMITS = {"S": 30.0, "M": 30.0, "L": 30.0, "XL": 120.0}
GAPS = {"S": 0.001, "M": 0.001, "L": 0.01, "XL": 0.02}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def row(name: str, problem: Problem, plan: Plan, bound: float, seconds: float,
        first: float | None, to_1pct: float | None) -> dict:
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
        "to_1pct_gap_s": None if to_1pct is None else round(to_1pct, 2),
    }


def run_fleet(label: str, problem: Problem, size: str, solver: str) -> list[dict]:
    limit, gap = TIME_LIMITS[size], GAPS[size]
    start = time.perf_counter()
    plan = solve(problem, solver=solver, time_limit=limit, relative_gap=gap, explain=False)
    bound = plan.lp_bound or 0.0
    to_1pct = plan.solve_seconds if (plan.gap or 0) <= 0.01 else None
    rows = [row(f"{solver} MIP", problem, plan, bound, time.perf_counter() - start,
                plan.timings.get("first_feasible"), to_1pct)]
    rows[0]["gap"] = round(plan.gap or 0.0, 5)
    rows[0]["lp_bound"] = round(bound, 2)
    rows[0]["peak_rss_mib"] = round(peak_rss_mib(), 1)
    classes = build_classes(problem)
    for name, rule in (("per-job cheapest", per_job_cheapest), ("first-come failover", first_come),
                       ("greedy regret", greedy_regret)):
        t0 = time.perf_counter()
        units = rule(problem, classes)
        base = units_to_plan(problem, classes, units, solver=name)
        took = time.perf_counter() - t0
        rows.append(row(name, problem, base, bound, took, took, None))
    for r in rows:
        r["fleet"] = label
    return rows


def price_of_cap(problem: Problem, size: str, solver: str, base_cost: float) -> dict:
    problem.max_provider_share = 0.35
    capped = solve(problem, solver=solver, time_limit=TIME_LIMITS[size],
                   relative_gap=GAPS[size], explain=False)
    problem.max_provider_share = None
    return {"cap": 0.35, "cost": round(capped.cost, 2),
            "extra": round(capped.cost / base_cost - 1.0, 4) if base_cost else None,
            "placed": round(1 - len(capped.unplaced) / len(problem.jobs), 4),
            "gap": round(capped.gap or 0.0, 5), "seconds": round(capped.solve_seconds, 1),
            "violations": len(check(problem, capped))}


def print_table(rows: list[dict]) -> None:
    cols = ["fleet", "plan", "cost", "cost_over_lp", "placed", "violations", "overbooked_pools",
            "top_provider_share", "first_feasible_s", "to_1pct_gap_s", "seconds"]
    widths = {c: max(len(c), *(len(str(r.get(c))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c)).ljust(widths[c]) for c in cols))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler")
    parser.add_argument("--size", choices=sorted(SIZES), default="S")
    parser.add_argument("--kind", choices=["synthetic", "catalog", "adversarial", "all"],
                        default="all")
    parser.add_argument("--solver", choices=["highs", "cpsat"], default="highs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-cap", action="store_true", help="skip the 35 %% share cap run")
    parser.add_argument("--capacity-scale", type=float, default=1.0,
                        help="multiply every pool's capacity (below 1: capacity-tight)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    jobs, offers = SIZES[args.size]
    cfg = Config(jobs=jobs, offers=offers, seed=args.seed, capacity_scale=args.capacity_scale)
    kinds = ["synthetic", "catalog", "adversarial"] if args.kind == "all" else [args.kind]
    print(f"# scheduler bench size {args.size} ({jobs} jobs x {offers} offers), seed {args.seed},"
          f" capacity x{args.capacity_scale},"
          f" {platform.machine()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    rows: list[dict] = []
    extras: dict = {}
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
        print(f"{kind}: {len(problem.jobs)} jobs, {len(problem.pools)} pools, "
              f"{len(problem.candidates)} candidates, generated in {gen:.1f} s", flush=True)
        fleet = run_fleet(kind, problem, args.size, args.solver)
        rows.extend(fleet)
        if kind == "synthetic" and not args.no_cap:
            extras["price_of_35pct_cap"] = price_of_cap(problem, args.size, args.solver,
                                                        fleet[0]["cost"])
    print_table(rows)
    mip = [r for r in rows if r["plan"].endswith("MIP")]
    for r in mip:
        print(f"{r['fleet']}: gap {r['gap']:.3%}, LP bound {r['lp_bound']}, "
              f"peak RSS {r['peak_rss_mib']} MiB")
        fc = next(x for x in rows if x["fleet"] == r["fleet"] and x["plan"].startswith("first"))
        if fc["cost"] > 0:
            print(f"{r['fleet']}: {1 - r['cost'] / fc['cost']:.1%} cheaper than first-come "
                  f"failover (placed {r['placed']:.1%} vs {fc['placed']:.1%})")
    if "price_of_35pct_cap" in extras:
        print("price of a 35 % provider cap:", extras["price_of_35pct_cap"])
    if args.out:
        args.out.write_text(json.dumps({"size": args.size, "rows": rows, **extras}, indent=2))
    return 1 if any(r["violations"] for r in mip) else 0


if __name__ == "__main__":
    sys.exit(main())
