"""A running job is stopped at the metering tick after its team's spend crosses the
budget: state and reason recorded, overshoot at most about one tick's spend."""

from __future__ import annotations

import time
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

import pytest

from broker.config import load_settings
from broker.db.engine import Database
from broker.db.models import AllocationRow
from broker.domain import JobState
from broker.services import budgets
from broker.services.execution import monitor, provision, runners
from broker.services.execution.executor import run_allocation
from broker.services.jobs import store as jobs
from tests.support.execution import plan_allocation, submit

PRICE = Decimal("3600")  # USD per node-hour: one dollar per node-second
NODES = 2
BUDGET = Decimal("12")  # crossed about 6 s after both nodes run, once training has begun
TICK_S = 0.05


def test_a_running_job_stops_within_one_tick_of_its_team_budget(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitor, "POLL_S", TICK_S)
    monkeypatch.setattr(provision, "POLL_S", 0.01)
    settings = load_settings({"GPUBROKER_HOME": str(home)})
    database = Database(settings.database_url)
    # Enough steps to outlast the budget several times over on a fast, quiet machine (a
    # step of the tiny model can take 1 ms), few enough to end if not stopped.
    job_id = submit(database, steps=30000, checkpoint_every=30000)
    alloc_id = plan_allocation(database, job_id, nodes=NODES, price=PRICE)
    with database.session() as session:  # the estimate fits the budget; the run will not
        allocation = session.get(AllocationRow, alloc_id)
        assert allocation is not None
        allocation.est_cost = Decimal("0.5")
    budgets.set_budget(database, "default", BUDGET, "month")
    team = jobs.get(database, job_id).team
    if team != "default":
        budgets.set_budget(database, team, BUDGET, "month")

    pytest.importorskip("workloads.train")  # torch loads now, not in the run's first tick
    ticks: list[tuple[Decimal, bool]] = []  # (team spend, crossed) at each metering tick
    rule = budgets.crossed

    def observed(amount: Decimal, metered: Decimal, running: Iterable[Decimal]) -> Decimal | None:
        running = list(running)
        found = rule(amount, metered, running)
        ticks.append((metered + sum(running, Decimal(0)), found is not None))
        return found

    monkeypatch.setattr(budgets, "crossed", observed)
    started = time.monotonic()
    state = run_allocation(database, settings, alloc_id, runner=runners.inprocess_runner)
    elapsed = time.monotonic() - started

    view = jobs.get(database, job_id)
    assert state is JobState.CANCELLED and view.state is JobState.CANCELLED
    assert view.message and "budget" in view.message
    (stop,) = [e for e in jobs.events(database, job_id) if e.kind == "budget_stop"]
    overshoot = Decimal(stop.payload["spent"]) - BUDGET
    # Stopped at the first tick that saw the budget crossed, and none before it: the
    # overshoot is at most what was spent since the tick before.
    assert len(ticks) >= 2 and [c for _, c in ticks] == [False] * (len(ticks) - 1) + [True]
    one_tick = ticks[-1][0] - ticks[-2][0]
    assert Decimal(0) <= overshoot <= one_tick, (overshoot, one_tick)
    # A tick is TICK_S plus one step of the tiny model: far less than a second's spend.
    assert one_tick < NODES * Decimal(1), one_tick
    assert elapsed < 30
    database.dispose()
