"""Execution without Ray: the in-process runner through the whole allocation lifecycle."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from broker.config import Settings, load_settings
from broker.db.engine import Database
from broker.db.models import AllocationRow, BudgetRow, InstanceRow, UsageRow
from broker.domain import AllocationState, InstanceState, JobState
from broker.errors import BudgetExceeded, ConflictError, StaleWrite
from broker.services.execution import runners
from broker.services.execution.cancel import cancel
from broker.services.execution.executor import run_allocation
from broker.services.execution.job_runs import run_job, schedule_job
from broker.services.execution.monitor import Monitor
from broker.services.execution.run_context import Outcome, RunContext
from broker.services.execution.summary import job_summary
from broker.services.jobs import store as jobs
from providers.local import LocalProvider
from tests.support.execution import plan_allocation, submit


def _settings(home: Path, database: Database) -> Settings:
    return load_settings({"GPUBROKER_HOME": str(home), "GPUBROKER_DATABASE_URL": database.url})


def _states(database: Database, job_id: int) -> list[str]:
    return [e.payload["state"] for e in jobs.events(database, job_id) if e.kind == "state"]


def test_allocation_runs_to_success_and_is_metered(database: Database, home: Path) -> None:
    settings = _settings(home, database)
    job_id = submit(database)
    alloc_id = plan_allocation(database, job_id, nodes=2, price=Decimal("1.5"))

    state = run_allocation(database, settings, alloc_id, runner=runners.inprocess_runner)

    assert state is JobState.SUCCEEDED
    assert _states(database, job_id) == [
        "PENDING",
        "PLANNED",
        "PROVISIONING",
        "RUNNING",
        "SUCCEEDED",
    ]
    with database.session() as session:
        alloc = session.get(AllocationRow, alloc_id)
        assert alloc is not None and alloc.state == AllocationState.RELEASED.value
        rows = session.scalars(select(InstanceRow).where(InstanceRow.allocation_id == alloc_id))
        instances = sorted(rows, key=lambda r: r.node_index)
        usage = list(session.scalars(select(UsageRow).where(UsageRow.job_id == job_id)))
    assert [r.node_index for r in instances] == [0, 1]
    assert {r.request_id for r in instances} == {
        f"gpubroker-{database.installation_id}-alloc-{alloc_id}"
    }
    assert all(r.state == InstanceState.TERMINATED.value for r in instances)
    assert [r.address for r in instances] == ["127.0.0.2", "127.0.0.3"]
    assert len(usage) == 2
    for row in usage:
        hours = Decimal(str((row.end - row.start).total_seconds())) / Decimal(3600)
        assert row.price_per_hour == Decimal("1.5")
        assert row.on_demand_price_per_hour == Decimal("1.5")
        assert abs(row.cost - Decimal("1.5") * hours) < Decimal("0.00001")
        assert row.cost > 0
        assert row.busy_seconds is not None
        assert 0 < row.busy_seconds <= (row.end - row.start).total_seconds()
    summary = job_summary(database, settings, job_id)
    assert summary.step == summary.steps == 20
    assert summary.first_loss is not None and summary.last_loss is not None
    assert summary.last_loss < summary.first_loss - 0.5
    assert summary.checkpoint is not None and Path(summary.checkpoint, "state.pt").exists()
    assert LocalProvider(settings).list_instances(settings.owner_tag) == []

    # Running the same allocation again changes nothing and bills nothing more.
    assert run_allocation(database, settings, alloc_id) is JobState.SUCCEEDED
    with database.session() as session:
        assert len(list(session.scalars(select(UsageRow)))) == 2


def test_transitions_are_checked_and_stale_writes_caught(database: Database) -> None:
    job_id = submit(database)
    with (
        pytest.raises(ConflictError, match="cannot go from PENDING to RUNNING"),
        database.session() as session,
    ):
        jobs.transition(session, jobs.load_row(session, job_id), JobState.RUNNING)
    assert jobs.get(database, job_id).state is JobState.PENDING

    with pytest.raises(StaleWrite), jobs.guarded(database) as first:
        mine = jobs.load_row(first, job_id)
        with jobs.guarded(database) as second:
            jobs.transition(second, jobs.load_row(second, job_id), JobState.PLANNED)
        jobs.transition(first, mine, JobState.CANCELLED)
    assert jobs.get(database, job_id).state is JobState.PLANNED


def test_budget_refuses_the_launch(database: Database, home: Path) -> None:
    settings = _settings(home, database)
    job_id = submit(database)
    alloc_id = plan_allocation(database, job_id, nodes=2, price=Decimal("100"))
    with database.session() as session:
        session.add(BudgetRow(team="default", amount=Decimal("0.5"), period="month"))

    with pytest.raises(BudgetExceeded, match="team default"):
        run_allocation(database, settings, alloc_id, runner=runners.inprocess_runner)

    assert jobs.get(database, job_id).state is JobState.FAILED
    with database.session() as session:
        assert list(session.scalars(select(InstanceRow))) == []
    assert LocalProvider(settings).list_instances(settings.owner_tag) == []


class _SlowBoot(LocalProvider):
    """Nodes that never finish booting: a fault the local machine cannot produce."""

    def list_instances(self, owner_tag: str):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        return [replace(r, state=InstanceState.PENDING) for r in super().list_instances(owner_tag)]


def test_cancel_during_provisioning_leaves_nothing_running(
    database: Database, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import providers.local

    settings = _settings(home, database)
    monkeypatch.setattr(providers.local, "create", _SlowBoot)
    job_id = submit(database)
    alloc_id = plan_allocation(database, job_id, nodes=2)
    result: dict[str, JobState] = {}
    worker = threading.Thread(
        target=lambda: result.update(state=run_allocation(database, settings, alloc_id))
    )
    worker.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with database.session() as session:
            ids = session.scalars(
                select(InstanceRow.provider_instance_id).where(
                    InstanceRow.allocation_id == alloc_id
                )
            ).all()
        if ids and all(ids):
            break
        time.sleep(0.05)
    assert jobs.get(database, job_id).state is JobState.PROVISIONING
    assert len(LocalProvider(settings).list_instances(settings.owner_tag)) == 2

    cancel(database, settings, job_id)
    worker.join(30)

    assert result["state"] is JobState.CANCELLED
    assert jobs.get(database, job_id).state is JobState.CANCELLED
    assert LocalProvider(settings).list_instances(settings.owner_tag) == []
    with database.session() as session:
        alloc = session.get(AllocationRow, alloc_id)
        assert alloc is not None and not AllocationState(alloc.state).live
        states = set(session.scalars(select(InstanceRow.state)))
        assert states == {InstanceState.TERMINATED.value}
        assert len(list(session.scalars(select(UsageRow)))) == 2


def test_sdk_submit_wait_plans_through_the_scheduler(home: Path) -> None:
    from broker.sdk import Broker
    from tests.support.execution import tiny_spec

    with Broker(home=str(home)) as broker:
        handle = broker.submit(tiny_spec(nodes=2))
        assert handle.state is JobState.PENDING
        handle.runner = runners.inprocess_runner
        view = handle.wait()
        assert view.state is JobState.SUCCEEDED
        assert [j.id for j in broker.jobs("SUCCEEDED")] == [handle.id]
        assert any(e.kind == "progress" for e in handle.logs())
        with broker.db.session() as session:
            (alloc,) = session.scalars(select(AllocationRow)).all()
        # The scheduler placed it on the local machine, two nodes, as the spec asks.
        assert (alloc.provider, alloc.nodes, alloc.plan_id is not None) == ("local", 2, True)
        assert broker.job_summary(handle.id).usage_rows == 2


# --- against the fake cloud: metering, capacity, serving plans, budgets ------------------


def _fake_settings(home: Path, database: Database, fake: object) -> Settings:
    import dataclasses

    return dataclasses.replace(_settings(home, database), extra={"fake_provider": fake})


def _fake_offer(database: Database, fake: object, **pool: str):  # type: ignore[no-untyped-def]
    """Load the fake's offers into the catalog; the OfferRow of ``pool``."""
    from broker.db.models import OfferRow
    from broker.services.offers.upsert import upsert_offers

    upsert_offers(database, fake.list_offers(), provider="fake", full=True)  # type: ignore[attr-defined]
    with database.session() as session:
        return session.scalars(
            select(OfferRow).where(*(getattr(OfferRow, k) == v for k, v in pool.items()))
        ).one()


def test_spot_usage_is_charged_the_observed_prices(database: Database, home: Path) -> None:
    import dataclasses

    from broker.db.models import PriceObservationRow
    from broker.services.offers.upsert import upsert_offers
    from providers.fake import FakeProvider

    fake = FakeProvider()
    settings = _fake_settings(home, database, fake)
    pool = {"zone": "us-east-1a", "instance_type": "fake-h100x8", "pricing": "spot"}
    offer = _fake_offer(database, fake, **pool)
    launch_price = offer.price_per_hour
    new_price = launch_price * 10
    job_id = submit(database, constraints={"providers": ["fake"], "spot": True})
    alloc_id = plan_allocation(
        database,
        job_id,
        provider="fake",
        region="us-east-1",
        zone="us-east-1a",
        instance_type="fake-h100x8",
        pricing="spot",
        nodes=1,
        price=launch_price,
        offer_id=offer.id,
    )
    moved = next(
        dataclasses.replace(r, price_per_hour=new_price)
        for r in fake.list_offers()
        if (r.zone, r.instance_type, r.pricing.value) == tuple(pool.values())
    )

    def price_moves_mid_run(ctx: RunContext, monitor: Monitor):  # type: ignore[no-untyped-def]
        time.sleep(0.6)  # a stretch at the launch price, then the spot price jumps
        upsert_offers(database, [moved], provider="fake", full=False)
        time.sleep(0.3)
        return runners.inprocess_runner(ctx, monitor)

    state = run_allocation(database, settings, alloc_id, runner=price_moves_mid_run)

    assert state is JobState.SUCCEEDED
    with database.session() as session:
        (usage,) = session.scalars(select(UsageRow).where(UsageRow.job_id == job_id)).all()
        changed = session.scalars(
            select(PriceObservationRow.observed_at).where(
                PriceObservationRow.offer_id == offer.id,
                PriceObservationRow.price == new_price,
            )
        ).one()
    start, end = usage.start, usage.end
    assert start < changed < end
    before = Decimal(str((changed - start).total_seconds())) / 3600
    after = Decimal(str((end - changed).total_seconds())) / 3600
    weighted = launch_price * before + new_price * after
    flat = launch_price * (before + after)
    assert usage.price_per_hour == launch_price  # the price at launch is kept as it was
    assert abs(usage.cost - weighted) < Decimal("0.000002")
    assert usage.cost - flat > Decimal("0.001")  # not launch price x lifetime


def test_out_of_capacity_cools_the_pool_and_runs_elsewhere(database: Database, home: Path) -> None:
    from broker.db.models import PoolCooldownRow
    from broker.services.planning.plan import plan
    from providers.fake import FakeProvider, FaultPlan, LaunchFailure

    _fake_offer(
        database, FakeProvider(), zone="us-east-1a", instance_type="fake-l4x1", pricing="on_demand"
    )
    job_id = submit(database, nodes=2, constraints={"providers": ["fake"]})
    # Where the planner puts the job first: that zone has no nodes of this type.
    (first,) = plan(database, _settings(home, database), job_ids=[job_id]).allocations
    fake = FakeProvider(
        faults=FaultPlan(
            launch_failures=(
                LaunchFailure(
                    "capacity", zone=first["zone"], instance_type=first["instance_type"], times=None
                ),
            )
        )
    )
    settings = _fake_settings(home, database, fake)

    state = run_job(database, settings, job_id, runner=runners.inprocess_runner)

    assert state is JobState.SUCCEEDED
    assert _states(database, job_id) == [
        "PENDING",
        "PLANNED",
        "PROVISIONING",
        "PENDING",
        "PLANNED",
        "PROVISIONING",
        "RUNNING",
        "SUCCEEDED",
    ]
    with database.session() as session:
        failed, ran = session.scalars(select(AllocationRow).order_by(AllocationRow.id)).all()
        failed_nodes = {r.state for r in failed.instances}
        cooldowns = [
            (c.provider, c.region, c.zone, c.instance_type)
            for c in session.scalars(select(PoolCooldownRow))
        ]
        usage = session.scalars(select(UsageRow)).all()
        ran_instance_ids = {r.id for r in ran.instances}
    assert (failed.zone, failed.instance_type) == (first["zone"], first["instance_type"])
    assert failed.state == AllocationState.FAILED.value
    assert failed_nodes == {InstanceState.FAILED.value}
    assert cooldowns == [("fake", first["region"], first["zone"], first["instance_type"])]
    assert (ran.zone, ran.instance_type) != (first["zone"], first["instance_type"])
    assert ran.state == AllocationState.RELEASED.value
    assert {u.instance_id for u in usage} == ran_instance_ids  # the failed launch bills nothing
    assert all(r.state is InstanceState.TERMINATED for r in fake.instances())


def _serving_job(database: Database, home: Path) -> tuple[Any, Settings, int]:
    """A fake cloud with its offers loaded, its settings, and a PENDING serving job for users
    in the US and Europe: (fake, settings, job id)."""
    from providers.fake import FakeProvider
    from workloads.spec import parse_spec

    fake = FakeProvider()
    settings = _fake_settings(home, database, fake)
    _fake_offer(database, fake, zone="us-east-1a", instance_type="fake-l4x1", pricing="on_demand")
    spec = {
        "kind": "inference",
        "name": "serve",
        "model": {"preset": "llama-7b"},
        "request_rate": 40,
        "input_tokens": 512,
        "output_tokens": 128,
        "slo": {"ttft_ms": 2000, "tpot_ms": 100},
        "regions": {"us": 0.5, "europe": 0.5},
        "min_replicas": 2,
        "constraints": {"providers": ["fake"]},
    }
    return fake, settings, jobs.submit(database, parse_spec(spec)).id


def test_a_serving_plan_names_each_allocations_area_and_replicas(
    database: Database, home: Path
) -> None:
    from broker.services.planning.schedule import schedule

    _, settings, job_id = _serving_job(database, home)

    schedule(database, settings, job_ids=[job_id])

    with database.session() as session:
        allocs = session.scalars(select(AllocationRow).where(AllocationRow.job_id == job_id)).all()
    assert {a.area for a in allocs} == {"us", "europe"}
    assert all(a.replicas >= 1 and a.replicas >= a.nodes for a in allocs)
    assert sum(a.replicas for a in allocs) >= 2  # min_replicas


class _AreaRunner:
    """Stands in for the Serve run on fake nodes (they boot nothing): each allocation
    opens its endpoint and reports like the driver does; the ``lose`` area's head is lost
    after its first report, which two regions on one machine cannot produce for real."""

    def __init__(self, lose: str) -> None:
        self.lose = lose

    def __call__(self, ctx: RunContext, monitor: Monitor) -> Outcome:
        from broker.services.execution import endpoints as serving

        with ctx.db.session() as session:
            area = session.get(AllocationRow, ctx.allocation_id).area  # type: ignore[union-attr]
        low, _ = serving.open_endpoint(ctx.db, ctx.allocation_id, f"http://{area}", 1)
        served = 0
        while monitor.poll() is None:
            served += 3
            report = {"event": "serving", "state": "RUNNING", "replicas": low}
            monitor.feed([{**report, "requests": served, "tokens": served * 8}])
            if area == self.lose and served > 3:
                return Outcome(ok=False, stop="preempted: head node taken away")
            time.sleep(0.2)
        return Outcome(ok=False, stop=monitor.stop_reason)


def test_serving_areas_run_at_once_a_lost_area_leaves_the_other_answering(
    database: Database, home: Path
) -> None:
    from broker.services.execution import endpoints as serving

    fake, settings, job_id = _serving_job(database, home)
    result: list[JobState] = []
    thread = threading.Thread(
        target=lambda: result.append(
            run_job(database, settings, job_id, runner=_AreaRunner(lose="europe"))
        )
    )
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = {e.area: e.state for e in serving.endpoints(database, job_id, live=False)}
            if states == {"us": "READY", "europe": "LOST"}:
                break
            time.sleep(0.2)
        assert states == {"us": "READY", "europe": "LOST"}
        assert jobs.get(database, job_id).state is JobState.RUNNING
        assert any(e.kind == "allocation_ended" for e in jobs.events(database, job_id))
        us = next(e for e in serving.endpoints(database, job_id) if e.area == "us")
        assert us.requests > 0 and us.tokens == us.requests * 8
    finally:
        cancel(database, settings, job_id)
        thread.join(timeout=60)
    assert result == [JobState.CANCELLED]
    states = {e.area: e.state for e in serving.endpoints(database, job_id, live=False)}
    assert states == {"us": "STOPPED", "europe": "LOST"}
    with database.session() as session:
        allocs = session.scalars(select(AllocationRow).where(AllocationRow.job_id == job_id)).all()
        nodes = list(session.scalars(select(InstanceRow)))
        usage = list(session.scalars(select(UsageRow).where(UsageRow.job_id == job_id)))
    assert not any(AllocationState(a.state).live for a in allocs)
    assert nodes and {n.state for n in nodes} == {InstanceState.TERMINATED.value}
    assert len(usage) == len(nodes)
    assert fake.instances() == [] or all(i.state != "running" for i in fake.instances())

    # The report prices the job's traffic: its ledger cost per 1,000 requests and 1M tokens.
    from broker.services.reports.build import build_report

    report = build_report(database, min(u.start for u in usage), max(u.end for u in usage))
    (row,) = report.serving
    counted = sum(e.requests for e in serving.endpoints(database, job_id, live=False))
    assert row["job_id"] == job_id and row["requests"] == counted > 0
    assert row["cost"] == sum(u.cost for u in usage) > 0
    assert row["cost_per_1k_requests"] == (row["cost"] * 1000 / counted).quantize(Decimal("1e-6"))
    assert row["tokens"] == counted * 8


def test_the_next_plan_serves_the_measured_rate_when_it_is_higher(
    database: Database, home: Path
) -> None:
    from broker.db.models import EndpointRow, JobRow
    from broker.services.planning.plan import plan
    from broker.services.planning.schedule import schedule

    _, settings, job_id = _serving_job(database, home)
    schedule(database, settings, job_ids=[job_id])

    def planned() -> int:
        return sum(a["replicas"] for a in plan(database, settings).allocations)

    with database.session() as session:
        allocs = session.scalars(select(AllocationRow).where(AllocationRow.job_id == job_id)).all()
        for alloc in allocs:
            alloc.state = AllocationState.RELEASED.value
        session.get(JobRow, job_id).state = JobState.PENDING.value  # type: ignore[union-attr]
    before = planned()
    with database.session() as session:
        session.add(
            EndpointRow(
                job_id=job_id,
                allocation_id=allocs[0].id,
                area="us",
                state="STOPPED",
                replicas=0,
                min_replicas=1,
                max_replicas=1,
                requests=0,
                tokens=0,
                errors=0,
                request_rate=400.0,
            )
        )
    assert planned() > before  # 400 req/s measured against the spec's 40


def test_budget_lowered_after_planning_refuses_the_launch(database: Database, home: Path) -> None:
    from broker.services import budgets
    from providers.fake import FakeProvider

    fake = FakeProvider()
    settings = _fake_settings(home, database, fake)
    _fake_offer(database, fake, zone="us-east-1a", instance_type="fake-l4x1", pricing="on_demand")
    budgets.set_budget(database, "default", "1000", "month")
    job_id = submit(database, steps=2_000_000, nodes=2, constraints={"providers": ["fake"]})
    (alloc_id,) = schedule_job(database, settings, job_id)
    with database.session() as session:
        alloc = session.get(AllocationRow, alloc_id)
        assert alloc is not None
        estimate = alloc.est_cost
    assert estimate > 0
    budgets.set_budget(database, "default", estimate / 2, "month")
    trained: list[int] = []

    def must_not_train(ctx: RunContext, monitor: Monitor):  # type: ignore[no-untyped-def]
        trained.append(ctx.allocation_id)
        return Outcome(ok=False, error="launched past the budget")

    with pytest.raises(BudgetExceeded, match="team default"):
        run_allocation(database, settings, alloc_id, runner=must_not_train)

    assert trained == []
    assert fake.stats.calls["launch"] == 0 and fake.instances() == []
    view = jobs.get(database, job_id)
    assert view.state is JobState.FAILED and "budget" in (view.message or "")
    with database.session() as session:
        alloc = session.get(AllocationRow, alloc_id)
        assert alloc is not None and alloc.state == AllocationState.FAILED.value
        assert list(session.scalars(select(InstanceRow))) == []
