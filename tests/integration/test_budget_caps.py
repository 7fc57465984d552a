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
from sqlalchemy import func, select, update

from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow, JobRow, OfferRow, UsageRow
from broker.domain import AllocationState, InstanceState, JobState, utcnow
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
    assert "research" in ok.stdout and "$5,000.00" in ok.stdout
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
# The stream drives the real planning service (``planning.schedule``, which must treat what
# is left of each team's budget as a hard limit) over the bundled catalog, changes every
# offer's price between rounds, and launches and finishes what was planned the way
# execution does: at the price of the plan, finishing on time or early. After every event,
# metered spend in the period plus live allocations' estimates stays within the budget,
# and ``budgets.remaining`` says exactly what is left.

BUDGETS = {"a": Decimal("60"), "b": Decimal("25")}

events = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(["a", "b"]), st.integers(1, 12)),
        st.tuples(st.just("price"), st.sampled_from(["0.5", "0.8", "1.25", "2"]), st.just(0)),
        st.tuples(st.just("plan"), st.just(""), st.just(0)),
        st.tuples(st.just("launch"), st.just(""), st.integers(0, 5)),
        st.tuples(st.just("finish"), st.sampled_from(["0.5", "1"]), st.integers(0, 5)),
    ),
    min_size=1,
    max_size=12,
)


def _spec(team: str, billions: int, n: int) -> dict:
    return {
        "kind": "training",
        "name": f"{team}-{n}",
        "team": team,
        "model": {"preset": "gpt-125m"},
        "tokens": billions * 1_000_000_000,
        "global_batch": 64,
        "precision": "bf16",
        "parallelism": "ddp",
        "checkpoint_every": 200,
        "constraints": {"gpus": ["L4", "A100-80GB", "H100-80GB"], "spot": False},
    }


@pytest.fixture(scope="module")
def catalog_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database with the bundled catalog loaded, copied for every example."""
    from broker.config import load_settings
    from broker.services.offers.bootstrap import ensure_catalog

    folder = tmp_path_factory.mktemp("budget-template")
    settings = load_settings({"GPUBROKER_HOME": str(folder)})
    db = Database(f"sqlite:///{folder / 'broker.db'}")
    ensure_catalog(db, settings)
    db.dispose()
    return folder / "broker.db"


def _check(db: Database, now: datetime) -> None:
    live = [s.value for s in AllocationState if s.live]
    for team, amount in BUDGETS.items():
        with db.session() as s:
            start = budgets.period_start("month", now)
            metered = s.scalar(
                select(func.coalesce(func.sum(UsageRow.cost), 0)).where(
                    UsageRow.team == team, UsageRow.start >= start
                )
            )
            committed = s.scalar(
                select(func.coalesce(func.sum(AllocationRow.est_cost), 0))
                .join(JobRow, AllocationRow.job_id == JobRow.id)
                .where(JobRow.team == team, AllocationRow.state.in_(live))
            )
        used = Decimal(str(metered)) + Decimal(str(committed))
        assert used <= amount, f"team {team} over budget: {used} > {amount}"
        assert budgets.remaining(db, team, now) == max(amount - used, Decimal(0))


def _launch(db: Database, index: int, now: datetime) -> None:
    with db.session() as s:
        planned = s.scalars(
            select(AllocationRow).where(AllocationRow.state == "PLANNED").order_by(AllocationRow.id)
        ).all()
        if not planned:
            return
        alloc = planned[index % len(planned)]
        alloc.state = AllocationState.ACTIVE.value
        for node in range(alloc.nodes):
            s.add(
                InstanceRow(
                    allocation_id=alloc.id,
                    provider=alloc.provider,
                    region=alloc.region,
                    instance_type=alloc.instance_type,
                    pricing=alloc.pricing,
                    request_id=f"r{alloc.id}",
                    node_index=node,
                    state=InstanceState.RUNNING.value,
                    price_per_hour=alloc.price_at_plan,
                    launched_at=now,
                )
            )


def _finish(db: Database, share: Decimal, index: int) -> None:
    with db.session() as s:
        active = s.scalars(
            select(AllocationRow).where(AllocationRow.state == "ACTIVE").order_by(AllocationRow.id)
        ).all()
        if not active:
            return
        alloc = active[index % len(active)]
        job = s.get(JobRow, alloc.job_id)
        hours = Decimal(str(alloc.est_hours)) * share
        alloc.state = AllocationState.RELEASED.value
        job.state = JobState.SUCCEEDED.value
        for inst in s.scalars(select(InstanceRow).where(InstanceRow.allocation_id == alloc.id)):
            end = inst.launched_at + timedelta(hours=float(hours))
            inst.state, inst.terminated_at = InstanceState.TERMINATED.value, end
            s.add(
                UsageRow(
                    instance_id=inst.id,
                    job_id=job.id,
                    team=job.team,
                    provider=inst.provider,
                    region=inst.region,
                    instance_type=inst.instance_type,
                    pricing=inst.pricing,
                    gpus=alloc.gpus_per_node,
                    start=inst.launched_at,
                    end=end,
                    price_per_hour=inst.price_per_hour,
                    cost=(inst.price_per_hour * hours).quantize(Decimal("0.000001")),
                )
            )


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(stream=events)
@example(  # planned at one price, then prices double: the plan's price is what is charged
    stream=[
        ("submit", "b", 3),
        ("plan", "", 0),
        ("price", "2", 0),
        ("submit", "b", 3),
        ("plan", "", 0),
        ("launch", "", 0),
        ("finish", "1", 0),
        ("plan", "", 0),
    ]
)
def test_planning_never_exceeds_the_cap(
    catalog_template: Path, tmp_path: Path, stream: list
) -> None:
    import shutil
    import uuid

    from broker.config import load_settings
    from broker.services.jobs import store as jobs
    from broker.services.planning.schedule import schedule
    from workloads.spec import parse_spec

    path = tmp_path / f"{uuid.uuid4().hex}.db"
    shutil.copyfile(catalog_template, path)
    db = Database(f"sqlite:///{path}")
    settings = load_settings({"GPUBROKER_HOME": str(tmp_path), "GPUBROKER_SOLVER_TIME_LIMIT": "5"})
    for team, amount in BUDGETS.items():
        budgets.set_budget(db, team, amount, "month")
    now = utcnow()
    try:
        for n, (kind, arg, number) in enumerate(stream):
            if kind == "submit":
                jobs.submit(db, parse_spec(_spec(arg, number, n)))
            elif kind == "price":
                with db.session() as s:
                    s.execute(
                        update(OfferRow).values(
                            price_per_hour=OfferRow.price_per_hour * Decimal(arg)
                        )
                    )
            elif kind == "plan":
                if jobs.list_jobs(db, ["PENDING"]):  # nothing pending: nothing to plan
                    schedule(db, settings)
            elif kind == "launch":
                _launch(db, number, now)
            else:
                _finish(db, Decimal(arg), number)
            _check(db, now)
    finally:
        db.dispose()
        path.unlink()
