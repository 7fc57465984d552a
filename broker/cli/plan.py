"""``gpubroker plan``: show the plan for the pending jobs; ``plan --commit`` stores it.

``gpubroker schedule`` is the former name of ``plan --commit``, hidden and kept for one
release.
"""

from __future__ import annotations

from typing import Any

import typer

from broker.cli.output import FORMAT_HELP, Format, dump_json, money, render
from broker.services.planning.columns import ALLOCATION_KEYS

SOLVER_HELP = "Solver: highs (default) or cpsat."
TIME_HELP = "Solver time limit in seconds (default: the solver_time_limit setting)."
SHARE_HELP = "Cap on any one provider's share of the planned GPUs, in (0, 1]."
COLUMNS = [*ALLOCATION_KEYS, "binding"]


def _broker() -> Any:
    from broker.sdk import Broker

    return Broker()


def _check(solver: str | None, share: float | None, limit: float | None) -> None:
    from broker.errors import ConfigError

    if solver is not None and solver.lower() not in ("highs", "cpsat"):
        raise ConfigError(f"--solver: must be highs or cpsat, not {solver!r}")
    if share is not None and not 0 < share <= 1:
        raise ConfigError("--max-provider-share: must be in (0, 1]")
    if limit is not None and not limit > 0:
        raise ConfigError("--time-limit: must be > 0 seconds")


def plan(
    solver: str = typer.Option(None, "--solver", help=SOLVER_HELP),
    time_limit: float = typer.Option(None, "--time-limit", help=TIME_HELP),
    max_provider_share: float = typer.Option(None, "--max-provider-share", help=SHARE_HELP),
    commit: bool = typer.Option(
        False, "--commit", help="Store the plan: jobs PENDING -> PLANNED, ready to run."
    ),
    fmt: Format = typer.Option(
        Format.table, "--format", help="table, json (the whole plan) or csv (its allocations)."
    ),
) -> None:
    """Plan the pending jobs against current offers, without launching anything (with
    --commit, store it so that `gpubroker daemon` runs it)."""
    if commit:
        schedule(solver, time_limit, max_provider_share, fmt)
        return
    _check(solver, max_provider_share, time_limit)
    with _broker() as broker:
        report = broker.plan(
            solver=solver, time_limit=time_limit, max_provider_share=max_provider_share
        )
    if fmt is Format.json:
        typer.echo(dump_json(report.to_dict()))
        return
    rows = [
        dict(a, binding=report.explain.get(a["job"], {}).get("binding")) for a in report.allocations
    ]
    if fmt is Format.csv:
        render(rows, COLUMNS, fmt)
        return
    if rows:
        render(rows, COLUMNS, Format.table, title="plan")
    elif not report.unplaced:
        typer.echo("No pending jobs to plan. Submit one: `gpubroker submit SPEC`.")
        return
    if report.unplaced:
        render(report.unplaced, ["job", "reason"], Format.table, title="unplaced")
    gap = "-" if report.gap is None else f"{report.gap:.3%}"
    typer.echo(
        f"objective {money(report.objective)}  LP bound {money(report.lp_bound)}  gap {gap}  "
        f"{report.solver} {report.solve_seconds:.2f} s  validated: "
        f"{'yes' if report.validated else 'no'}"
    )
    if report.most_placeable is not None:
        placed = len({a["job"] for a in report.allocations})
        cost_gap = "-" if report.cost_gap is None else f"{report.cost_gap:.3%}"
        typer.echo(
            f"placed {placed} of {placed + len(report.unplaced)} jobs, weight "
            f"{report.placed_weight} of at most {report.most_placeable} (a job weighs "
            f"1 + its priority)  cost gap over them {cost_gap}"
        )
    if report.clock_stop:
        typer.echo(
            "note: the solver's safety time limit cut a step short; on a busier or "
            "slower machine the plan may differ (raise --time-limit)"
        )


def schedule(
    solver: str = typer.Option(None, "--solver", help=SOLVER_HELP),
    time_limit: float = typer.Option(None, "--time-limit", help=TIME_HELP),
    max_provider_share: float = typer.Option(None, "--max-provider-share", help=SHARE_HELP),
    fmt: Format = typer.Option(Format.table, "--format", help=FORMAT_HELP),
) -> None:
    """Plan the pending jobs and commit the plan (jobs PENDING -> PLANNED); now
    `gpubroker plan --commit`."""
    _check(solver, max_provider_share, time_limit)
    with _broker() as broker:
        result = broker.schedule(
            solver=solver, time_limit=time_limit, max_provider_share=max_provider_share
        )
    data = {
        "plan_id": result.plan_id,
        "allocation_ids": result.allocation_ids,
        "unplaced": [{"job": j, "reason": r} for j, r in result.unplaced.items()],
    }
    if fmt is Format.json:
        typer.echo(dump_json(data))
        return
    if fmt is Format.csv:
        render(data["unplaced"], ["job", "reason"], fmt)
        return
    if not result.allocation_ids and not result.unplaced:
        typer.echo(f"plan {result.plan_id}: no pending jobs to plan")
        return
    typer.echo(f"plan {result.plan_id}: {len(result.allocation_ids)} allocations stored")
    if result.unplaced:
        render(data["unplaced"], ["job", "reason"], Format.table, title="unplaced")


def register(root: typer.Typer) -> None:
    root.command("plan")(plan)
    root.command("schedule", hidden=True)(schedule)
