"""4-week replay of a 500-job mixed fleet over the shared catalogs and spot traces.

    python -m bench.simulate [--seeds N] [--ray] [--skip-cap] [--days D] [--providers P,...]

Imports ../shared/datasets/cloud-catalogs/<provider>_vms.csv of each provider (AWS, GCP,
Azure and Lambda unless --providers says otherwise) into a fresh database, replays
bench/simulate/fleet.yaml (trace-driven spot) under every policy, then the gpubroker
policy again under a 35 % provider cap, and prints the tables with the wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench.simulate.catalogs import CATALOGS, catalog_database

SCENARIO = Path(__file__).with_name("fleet.yaml")
PROVIDERS = ("aws", "gcp", "azure", "lambda")  # three of them sell spot


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--ray", action="store_true")
    parser.add_argument("--skip-cap", action="store_true")
    parser.add_argument("--cap-only", action="store_true", help="only the 35 %% cap replay")
    parser.add_argument(
        "--days", type=float, default=None, help="replay only this many days (a slice)"
    )
    parser.add_argument(
        "--providers", default=",".join(PROVIDERS), help="catalogs to import, comma-separated"
    )
    parser.add_argument("--policy", action="append", help="replay only this policy (repeatable)")
    args = parser.parse_args()
    if not CATALOGS.is_dir():
        print(f"missing dataset: {CATALOGS}", file=sys.stderr)
        return 1

    from broker.services import simulate
    from broker.services.simulate.scenario import LoadedScenario

    began = time.perf_counter()
    work, settings, db = catalog_database(args.providers.split(","), "bench-simulate-")
    imported = time.perf_counter() - began
    loaded = simulate.load(SCENARIO)
    if args.days is not None:  # a slice: same mix per day, a drain in proportion
        scenario = loaded.scenario
        drain = scenario.drain_days * args.days / scenario.days
        sliced = scenario.model_copy(update={"days": args.days, "drain_days": drain})
        loaded = LoadedScenario(sliced, loaded.path, loaded.specs, loaded.trace_dir)
    if args.cap_only:
        _capped(db, settings, loaded, args, work, None)
        db.dispose()
        return 0
    cpu = time.process_time()
    began = time.perf_counter()
    summaries = simulate.simulate(
        db,
        settings,
        loaded,
        policies=args.policy,
        seeds=args.seeds,
        ledger_dir=work / "ledgers",
        parallel=args.ray,
    )
    replay = time.perf_counter() - began
    _table([(s, "") for s in summaries])
    base = {s.policy: s for s in summaries}
    for other in ("single-cloud-on-demand", "per-job-cheapest", "spot-greedy"):
        if "gpubroker" in base and other in base:
            saving = 1 - base["gpubroker"].cost / base[other].cost
            print(f"gpubroker vs {other}: {saving:.1%} cheaper")
    print(
        f"catalog import {imported:.1f} s; replay of {len(summaries)} policies x "
        f"{args.seeds} seed(s) {replay:.1f} s wall; this process's CPU "
        f"{time.process_time() - cpu:.1f} s (Ray tasks not counted)"
    )
    if not args.skip_cap and "gpubroker" in base:
        _capped(db, settings, loaded, args, work, base["gpubroker"])
    db.dispose()
    print(f"ledgers under {work}")
    return 0


def _table(rows: list[tuple[Any, str]]) -> None:
    print(
        f"{'policy':<30}{'cost USD':>12}{'GPU-h':>10}{'jobs':>6}{'done':>6}{'ddl':>5}"
        f"{'missed':>7}{'preempt':>8}{'wait h':>8}{'p95 h':>7}{'plans':>7}{'run s':>7}  shares"
    )
    for s, tag in rows:
        shares = ", ".join(f"{p} {v:.0%}" for p, v in s.provider_shares.items())
        plans = sum(r["plans"] for r in s.runs) / len(s.runs)
        seconds = sum(r["wall_seconds"] for r in s.runs) / len(s.runs)
        print(
            f"{s.policy + tag:<30}{s.cost:>12,.2f}{s.gpu_hours:>10,.1f}{s.jobs:>6.0f}"
            f"{s.completed:>6.0f}{s.deadline_jobs:>5.0f}{s.deadline_misses:>7.1f}"
            f"{s.preemptions:>8.1f}{s.mean_wait_hours:>8.2f}{s.p95_wait_hours:>7.2f}"
            f"{plans:>7.0f}{seconds:>7.0f}  {shares}"
        )


def _capped(db: Any, settings: Any, loaded: Any, args: Any, work: Path, free: Any) -> None:
    """The gpubroker policy again with no provider above 35 % of the GPUs."""
    from broker.errors import BrokerError
    from broker.services import simulate
    from broker.services.simulate.scenario import LoadedScenario

    scenario = loaded.scenario
    planner = scenario.planner.model_copy(update={"max_provider_share": 0.35})
    capped = LoadedScenario(
        scenario.model_copy(update={"planner": planner}),
        loaded.path,
        loaded.specs,
        loaded.trace_dir,
    )
    began = time.perf_counter()
    try:
        cap = simulate.simulate(
            db,
            settings,
            capped,
            policies=["gpubroker"],
            seeds=args.seeds,
            ledger_dir=work / "ledgers-cap35",
            parallel=args.ray,
        )
    except BrokerError as exc:
        print(f"35% provider cap: {exc}")
        return
    _table([(s, " cap35") for s in cap])
    extra = "" if free is None else f"costs {cap[0].cost / free.cost - 1:+.1%}, "
    print(
        f"35% provider cap: {extra}{cap[0].refused_plans:.0f} plans refused as infeasible "
        f"({time.perf_counter() - began:.1f} s wall)"
    )
    for database in cap[0].databases:
        plans, empty, held, jobs = _held_by_cap(database)
        print(
            f"  {database}: {plans} plans stored, {empty} placed nothing; {held} times a job "
            f"was left waiting for the provider share cap ({jobs} distinct jobs)"
        )


def _held_by_cap(database: str) -> tuple[int, int, int, int]:
    """(plans, plans with no allocation, job-plans left out for the share cap, jobs)."""
    from sqlalchemy import func, select

    from broker.db.engine import Database
    from broker.db.models import AllocationRow, PlanRow

    db = Database(f"sqlite:///{database}")
    try:
        with db.session() as session:
            placed = dict(
                session.execute(
                    select(AllocationRow.plan_id, func.count()).group_by(AllocationRow.plan_id)
                ).all()
            )
            details = session.execute(select(PlanRow.id, PlanRow.detail)).all()
    finally:
        db.dispose()
    held = [
        job
        for _, detail in details
        for job, reason in (detail or {}).get("unplaced", {}).items()
        if "share cap" in str(reason)
    ]
    empty = sum(1 for plan_id, _ in details if not placed.get(plan_id))
    return len(details), empty, len(held), len(set(held))


if __name__ == "__main__":
    sys.exit(main())
