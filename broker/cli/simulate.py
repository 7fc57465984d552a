"""``gpubroker simulate SCENARIO``: replay weeks of a fleet under several policies."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Any

import typer

from broker.cli.output import Format, dump_json, render


class SimFormat(enum.StrEnum):
    table = "table"
    json = "json"
    html = "html"


HEADERS = {
    "gpu_hours": "GPU-h",
    "deadline_misses": "missed",
    "preemptions": "preempt",
    "mean_wait_hours": "wait h",
    "p95_wait_hours": "p95 wait h",
    "budget_overruns": "over budget",
    "shares": "provider shares",
}


def simulate(
    scenario: Path = typer.Argument(..., help="Scenario YAML (supply, demand, policies)."),
    policy: list[str] = typer.Option(
        None,
        "--policy",
        help="Policy to replay, repeatable: gpubroker, per-job-cheapest, "
        "single-cloud-on-demand, spot-greedy (default: the scenario's).",
    ),
    seeds: int = typer.Option(1, "--seeds", help="Seeds per policy; figures are their means."),
    fmt: SimFormat = typer.Option(SimFormat.table, "--format", help="table, json or html."),
    out: Path | None = typer.Option(None, "--out", help="Write the output to this file."),
    ledgers: Path | None = typer.Option(
        None,
        "--ledgers",
        help="Folder for each run's database (default: $GPUBROKER_HOME/simulations/NAME).",
    ),
    ray: bool | None = typer.Option(
        None, "--ray/--no-ray", help="Run the seeds as Ray tasks (default: when --seeds > 1)."
    ),
    address: str | None = typer.Option(
        None, "--address", help="An existing Ray cluster to run on (implies --ray)."
    ),
) -> None:
    """Replay SCENARIO on a virtual clock with the real planner, executor and ledger
    against fake clouds; compare what each policy would have cost. SIMULATED figures."""
    from broker.errors import UserError
    from broker.sdk import Broker
    from broker.services import simulate as sim

    if seeds < 1:
        raise UserError("--seeds: must be >= 1")
    if fmt is SimFormat.table and out is not None:
        raise UserError("--out: table prints to the terminal; use --format json or html")
    if policy:
        sim.scenario.check_policies(list(policy), "--policy")
    loaded = sim.load(scenario)
    parallel = bool(address) or (seeds > 1 if ray is None else ray)
    with Broker() as broker:
        folder = ledgers or broker.settings.home / "simulations" / loaded.name
        with _bar(True) as tell:
            summaries = sim.simulate(
                broker.db,
                broker.settings,
                loaded,
                policies=list(policy) if policy else None,
                seeds=seeds,
                ledger_dir=folder,
                parallel=parallel,
                address=address,
                progress=tell,
            )
    if fmt is SimFormat.json:
        _emit(dump_json([s.to_dict() for s in summaries]), out)
    elif fmt is SimFormat.html:
        from broker.services.simulate.html import render_html

        _emit(render_html(loaded.name, summaries), out)
    else:
        _table(loaded.name, summaries)


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    from broker.services.reports.render import write_atomic

    write_atomic(out, text)
    typer.echo(f"wrote {out}")


def _table(name: str, summaries: list[Any]) -> None:
    from broker.services.simulate.results import SUMMARY_FIGURES

    rows = [
        {
            **{c: getattr(s, c) for c in SUMMARY_FIGURES},
            "shares": ", ".join(f"{p} {v:.0%}" for p, v in s.provider_shares.items()),
        }
        for s in summaries
    ]
    seeds = summaries[0].seeds if summaries else 0
    render(
        rows,
        [*SUMMARY_FIGURES, "shares"],
        Format.table,
        headers=HEADERS,
        title=f"SIMULATED {name}: means over {seeds} seed(s)",
    )
    if summaries:
        window = summaries[0].report_window
        typer.echo("Ledgers (gpubroker report reads them):")
        for s in summaries:
            typer.echo(f"  {s.policy}: {', '.join(s.databases)}")
        typer.echo(
            f"  e.g. GPUBROKER_DATABASE_URL=sqlite:///{summaries[0].databases[0]} "
            f"gpubroker report --from {window['from']} --to {window['to']}"
        )


class _bar:
    """A progress bar on stderr, when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import Progress

        self.progress = Progress(console=Console(stderr=True), transient=True)
        self.progress.start()
        return self.tell

    def tell(self, label: str, done: float) -> None:
        task = self.tasks.get(label)
        if task is None:
            task = self.tasks[label] = self.progress.add_task(label, total=1.0)
        self.progress.update(task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
