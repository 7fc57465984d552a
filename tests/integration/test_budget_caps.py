"""Budgets: set/list/remove, the CLI, and a stream of jobs and price changes under a cap."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from broker.db.engine import Database
from broker.db.models import (
    AllocationRow,
    BudgetRow,
    InstanceRow,
    JobRow,
    PlanRow,
    UsageRow,
)
from broker.domain import AllocationState, InstanceState, JobState
from broker.errors import NotFound, UserError
from broker.services import budgets

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
GPUBROKER = str(Path(sys.executable).with_name("gpubroker"))


def test_set_list_remove(database) -> None:  # type: ignore[no-untyped-def]
    view = budgets.set_budget(database, "research", "1250.50", "week", at=NOW)
    assert view.amount == Decimal("1250.50") and view.remaining == Decimal("1250.50")
    assert view.period_start == datetime(2026, 11, 16, tzinfo=UTC)
    assert view.period_end == datetime(2026, 11, 23, tzinfo=UTC)
    budgets.set_budget(database, "research", 900, "month", at=NOW)  # replaces
    budgets.set_budget(database, "infra", 10, "month", at=NOW)
    listed = budgets.list_budgets(database, at=NOW)
    assert [(b.team, b.amount, b.period) for b in listed] == [
        ("infra", Decimal("10"), "month"),
        ("research", Decimal("900"), "month"),
    ]
    assert listed[1].period_end == datetime(2026, 12, 1, tzinfo=UTC)
    for team, amount, period, field in (
        ("", 1, "month", "team"),
        ("x", "lots", "month", "amount"),
        ("x", -5, "month", "amount"),
        ("x", "NaN", "month", "amount"),
        ("x", 5, "year", "period"),
    ):
        with pytest.raises(UserError, match=rf"^{field}:"):
            budgets.set_budget(database, team, amount, period)
    budgets.remove_budget(database, "infra")
    assert [b.team for b in budgets.list_budgets(database)] == ["research"]
    with pytest.raises(NotFound):
        budgets.remove_budget(database, "infra")


def test_budget_cli(home: Path) -> None:
    ok = subprocess.run(
        [GPUBROKER, "budget", "set", "research", "5000", "--period", "week"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "research" in ok.stdout and "5000" in ok.stdout
    db = Database(f"sqlite:///{home / 'broker.db'}")
    assert [(b.team, b.amount, b.period) for b in budgets.list_budgets(db)] == [
        ("research", Decimal("5000"), "week")
    ]
    db.dispose()
    bad = subprocess.run(
        [GPUBROKER, "budget", "set", "research", "five"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: amount:") and "Traceback" not in bad.stderr


# --- the cap under a stream of jobs and price changes -------------------------------------
#
# The stream drives a planner and an executor written against the budget contract: the
# planner admits a job only if its estimate fits ``remaining`` (the scheduler's hard
# constraint) and the executor re-prices at launch and refuses if the team's committed plus
# metered spend would pass the budget (execution's check). Jobs may finish early; the
# ledger charges the price at launch.

events = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(["a", "b"]), st.integers(1, 40)),
        st.tuples(st.just("price"), st.sampled_from(["1.5", "2.75", "4", "0.9"]), st.just(0)),
        st.tuples(st.just("plan"), st.just(""), st.just(0)),
        st.tuples(st.just("launch"), st.just(""), st.integers(0, 5)),
        st.tuples(st.just("finish"), st.just(""), st.integers(0, 5)),
        st.tuples(st.just("clock"), st.just(""), st.integers(1, 72)),
    ),
    max_size=40,
)


class Fleet:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.price = Decimal("2")
        self.now = NOW
        self.pending: list[tuple[str, int]] = []

    def _committed_and_metered(self, team: str) -> Decimal:
        with self.db.session() as s:
            row = s.scalar(select(BudgetRow).where(BudgetRow.team == team))
            return budgets.spent(s, team, budgets.period_start(row.period, self.now))

    def plan(self) -> None:
        with self.db.session() as s:
            plan = PlanRow(solver="test", status="optimal")
            s.add(plan)
            s.flush()
            keep = []
            for team, hours in self.pending:
                est = self.price * hours
                left = budgets.remaining_in(s, team, self.now)
                if left is not None and est > left:
                    keep.append((team, hours))
                    continue
                job = JobRow(name="j", kind="training", spec={}, team=team, state="PLANNED")
                s.add(job)
                s.flush()
                s.add(
                    AllocationRow(
                        plan_id=plan.id,
                        job_id=job.id,
                        provider="fake",
                        region="r",
                        instance_type="t",
                        pricing="on_demand",
                        nodes=1,
                        price_at_plan=self.price,
                        est_hours=float(hours),
                        est_cost=est,
                        state=AllocationState.PLANNED.value,
                    )
                )
                s.flush()
            self.pending = keep

    def launch(self, index: int) -> None:
        with self.db.session() as s:
            planned = s.scalars(
                select(AllocationRow)
                .where(AllocationRow.state == "PLANNED")
                .order_by(AllocationRow.id)
            ).all()
            if not planned:
                return
            alloc = planned[index % len(planned)]
            job = s.get(JobRow, alloc.job_id)
            new_est = self.price * Decimal(str(alloc.est_hours))
            row = s.scalar(select(BudgetRow).where(BudgetRow.team == job.team))
            spent = budgets.spent(s, job.team, budgets.period_start(row.period, self.now))
            if spent - alloc.est_cost + new_est > row.amount:
                alloc.state = AllocationState.FAILED.value  # refused: would overrun
                job.state = JobState.FAILED.value
                return
            alloc.est_cost, alloc.price_at_plan = new_est, self.price
            alloc.state = AllocationState.ACTIVE.value
            s.add(
                InstanceRow(
                    allocation_id=alloc.id,
                    provider="fake",
                    region="r",
                    instance_type="t",
                    pricing="on_demand",
                    request_id=f"r{alloc.id}",
                    state=InstanceState.RUNNING.value,
                    price_per_hour=self.price,
                    launched_at=self.now,
                )
            )

    def finish(self, index: int) -> None:
        with self.db.session() as s:
            active = s.scalars(
                select(AllocationRow)
                .where(AllocationRow.state == "ACTIVE")
                .order_by(AllocationRow.id)
            ).all()
            if not active:
                return
            alloc = active[index % len(active)]
            job = s.get(JobRow, alloc.job_id)
            inst = s.scalar(select(InstanceRow).where(InstanceRow.allocation_id == alloc.id))
            hours = Decimal(str(alloc.est_hours)) * Decimal("0.75")  # finished early
            end = inst.launched_at + timedelta(hours=float(hours))
            inst.state, inst.terminated_at = InstanceState.TERMINATED.value, end
            alloc.state = AllocationState.RELEASED.value
            s.add(
                UsageRow(
                    instance_id=inst.id,
                    job_id=job.id,
                    team=job.team,
                    provider="fake",
                    region="r",
                    instance_type="t",
                    pricing="on_demand",
                    gpus=1,
                    start=inst.launched_at,
                    end=end,
                    price_per_hour=inst.price_per_hour,
                    cost=inst.price_per_hour * hours,
                )
            )

    def check(self) -> None:
        for team, amount in (("a", Decimal("100")), ("b", Decimal("60"))):
            with self.db.session() as s:
                row = s.scalar(select(BudgetRow).where(BudgetRow.team == team))
                start = budgets.period_start(row.period, self.now)
                metered = s.scalar(
                    select(func.coalesce(func.sum(UsageRow.cost), 0)).where(
                        UsageRow.team == team, UsageRow.start >= start
                    )
                )
                live = s.scalar(
                    select(func.coalesce(func.sum(AllocationRow.est_cost), 0))
                    .join(JobRow, AllocationRow.job_id == JobRow.id)
                    .where(
                        JobRow.team == team,
                        AllocationRow.state.in_(["PLANNED", "PROVISIONING", "ACTIVE"]),
                    )
                )
            used = Decimal(str(metered)) + Decimal(str(live))
            assert used <= amount, f"team {team} over budget: {used} > {amount}"
            left = budgets.remaining(self.db, team, self.now)
            assert left == max(amount - used, Decimal(0))


@pytest.fixture(scope="module")
def stream_db(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('budget') / 'broker.db'}")
    db.ensure_schema()
    yield db
    db.dispose()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(stream=events)
@example(  # admitted at $2/h, the price doubles before launch: the launch must be refused
    stream=[("submit", "b", 30), ("plan", "", 0), ("price", "4", 0), ("launch", "", 0)]
)
def test_the_cap_is_never_exceeded(stream_db: Database, stream: list) -> None:
    db = stream_db
    with db.session() as s:
        for table in (UsageRow, InstanceRow, AllocationRow, PlanRow, JobRow, BudgetRow):
            s.execute(delete(table))
        s.add(BudgetRow(team="a", amount=Decimal("100"), period="week"))
        s.add(BudgetRow(team="b", amount=Decimal("60"), period="month"))
    fleet = Fleet(db)
    for kind, arg, number in stream:
        if kind == "submit":
            fleet.pending.append((arg, number))
        elif kind == "price":
            fleet.price = Decimal(arg)
        elif kind == "plan":
            fleet.plan()
        elif kind == "launch":
            fleet.launch(number)
        elif kind == "finish":
            fleet.finish(number)
        else:
            fleet.now += timedelta(hours=number)
        fleet.check()
