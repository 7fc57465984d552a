"""Reports computed from a seeded usage ledger, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from broker.db.models import BudgetRow, OfferRow, PriceObservationRow
from broker.services.metering import hours_between, job_costs, metered_cost
from broker.services.reports.build import build_report
from broker.services.reports.render import render_text
from tests.support.usage_ledger import SHAPES, seed

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TOL = Decimal("0.00001")


def _expected_spend(runs, start: datetime, end: datetime) -> Decimal:  # type: ignore[no-untyped-def]
    """Pro-rated spend computed directly from the seeded runs."""
    total = Decimal(0)
    for run in runs:
        lo, hi = max(run.start, start), min(run.end, end)
        if hi > lo:
            total += run.cost * hours_between(lo, hi) / hours_between(run.start, run.end)
    return total


def test_totals_match_the_ledger_and_groups_add_up(database) -> None:  # type: ignore[no-untyped-def]
    runs = seed(database, now=NOW, jobs=15)
    start, end = NOW - timedelta(days=7), NOW
    report = build_report(database, start, end, group_by=("team", "provider"))
    assert abs(report.totals.spend - _expected_spend(runs, start, end)) < TOL
    inside = [r for r in runs if r.start < end and r.end > start]
    assert report.totals.runs == len(inside)
    assert report.totals.jobs == len({r.job_id for r in inside})
    expected_gpu_hours = sum(
        (r.gpus * hours_between(max(r.start, start), min(r.end, end)) for r in inside),
        Decimal(0),
    )
    assert abs(report.totals.gpu_hours - expected_gpu_hours) < TOL
    # groups partition the totals; breakdowns too
    assert abs(sum(g.metrics.spend for g in report.groups) - report.totals.spend) < TOL
    for dim, groups in report.breakdowns.items():
        assert abs(sum(g.metrics.spend for g in groups) - report.totals.spend) < TOL, dim
    assert [g.metrics.spend for g in report.groups] == sorted(
        (g.metrics.spend for g in report.groups), reverse=True
    )
    # the timeline is the same money, bucketed by day
    assert report.bucket == "day" and len(report.timeline) == 8
    assert abs(sum(p.spend for p in report.timeline) - report.totals.spend) < TOL
    # seeded busy time is 80% on every run that reports it
    assert report.totals.utilisation == Decimal("0.8000")


def test_same_window_twice_is_identical_and_windows_add_up(database) -> None:  # type: ignore[no-untyped-def]
    seed(database, now=NOW, jobs=15)
    a, b, c = NOW - timedelta(days=9), NOW - timedelta(days=4, hours=5), NOW
    first = build_report(database, a, c, group_by=("gpu", "region", "job"))
    second = build_report(database, a, c, group_by=("gpu", "region", "job"))
    one, two = first.to_dict(), second.to_dict()
    one.pop("generated_at"), two.pop("generated_at")
    assert one == two
    assert render_text(first, "csv") == render_text(second, "csv")
    left = build_report(database, a, b)
    right = build_report(database, b, c)
    for name in ("spend", "gpu_hours", "on_demand_cost", "cheapest_cost", "busy_gpu_hours"):
        whole = getattr(first.totals, name)
        parts = getattr(left.totals, name) + getattr(right.totals, name)
        assert abs(whole - parts) <= Decimal("0.000002"), name


def test_savings_against_on_demand_and_per_job_cheapest(database) -> None:  # type: ignore[no-untyped-def]
    runs = seed(database, now=NOW, jobs=30, days=5)
    report = build_report(database, NOW - timedelta(days=6), NOW, group_by=("job",))
    by_job = {int(g.key["job"].split()[0][1:]): g.metrics for g in report.groups}
    prices = {shape[3]: (Decimal(shape[6]), Decimal(shape[7])) for shape in SHAPES}
    with database.session() as s:
        from broker.db.models import AllocationRow, PlanRow

        allocs = {a.job_id: a for a in s.query(AllocationRow).all()}
        plans = {p.id: p for p in s.query(PlanRow).all()}
    checked_spot = checked_baseline = 0
    for run in runs:
        alloc = allocs[run.job_id]
        metrics = by_job[run.job_id]
        od, _spot = prices[alloc.instance_type]
        if alloc.pricing == "spot":
            # the list price comes from the on-demand offer in the offers table
            node_hours = hours_between(run.start, run.end) * alloc.nodes
            assert abs(metrics.on_demand_cost - od * node_hours) < Decimal("0.0001")
            assert metrics.savings_vs_on_demand > 0
            checked_spot += 1
        if plans[alloc.plan_id].detail.get("per_job_cheapest"):
            assert abs(metrics.cheapest_cost - metrics.spend * Decimal("1.25")) < Decimal("0.0001")
            checked_baseline += 1
        else:
            assert metrics.savings_vs_cheapest == 0
    assert checked_spot and checked_baseline
    assert report.totals.savings_vs_on_demand == (
        report.totals.on_demand_cost - report.totals.spend
    )
    assert any("baseline" in note for note in report.notes)


def test_budget_burn_top_jobs_and_json(database) -> None:  # type: ignore[no-untyped-def]
    runs = seed(database, now=NOW, jobs=12)
    report = build_report(database, NOW - timedelta(days=7), NOW, top=3)
    burns = {b.team: b for b in report.budgets}
    assert set(burns) == {"research", "product"}
    week_start = datetime(2026, 11, 16, tzinfo=UTC)
    product_week = sum(
        (r.cost for r in runs if r.team == "product" and week_start <= r.start < NOW), Decimal(0)
    )
    assert abs(burns["product"].spent - product_week) < TOL
    assert burns["product"].period_start == week_start
    assert burns["product"].elapsed == Decimal("0.6429")  # 4.5 of 7 days
    assert abs(burns["product"].burn - product_week / 8000) < Decimal("0.0001")
    assert len(report.top_jobs) == 3
    spends = [j.spend for j in report.top_jobs]
    assert spends == sorted(spends, reverse=True)
    data = json.loads(render_text(report, "json"))
    assert data["totals"]["spend"] == pytest.approx(float(report.totals.spend))
    assert {"groups", "breakdowns", "timeline", "budgets", "top_jobs"} <= set(data)


def test_job_costs_actual_against_estimated(database) -> None:  # type: ignore[no-untyped-def]
    runs = seed(database, now=NOW, jobs=6)
    with database.session() as s:
        from broker.db.models import AllocationRow

        costs = job_costs(s, [r.job_id for r in runs])
        estimates = {a.job_id: a.est_cost for a in s.query(AllocationRow).all()}
    assert set(costs) == {r.job_id for r in runs}
    for job_id, cost in costs.items():
        mine = [r for r in runs if r.job_id == job_id]
        assert cost.actual == sum((r.cost for r in mine), Decimal(0))
        assert cost.estimated == estimates[job_id]
        assert cost.delta == cost.actual - cost.estimated
    assert any(cost.estimated and cost.actual != cost.estimated for cost in costs.values())


def _resume(session, first, plan_id: int, est_cost: str, cost: str | None):  # type: ignore[no-untyped-def]
    """Another allocation of ``first``'s job in plan ``plan_id``; metered when ``cost``."""
    from broker.db.models import AllocationRow, InstanceRow, UsageRow

    alloc = AllocationRow(
        **{
            k: getattr(first, k)
            for k in ("job_id", "provider", "region", "zone", "instance_type", "pricing")
        },
        plan_id=plan_id,
        gpu=first.gpu,
        gpus_per_node=first.gpus_per_node,
        nodes=1,
        price_at_plan=first.price_at_plan,
        est_hours=1.0,
        est_cost=Decimal(est_cost),
        state="RELEASED",
    )
    session.add(alloc)
    session.flush()
    if cost is None:
        return
    inst = InstanceRow(
        allocation_id=alloc.id,
        provider=first.provider,
        region=first.region,
        zone=first.zone,
        instance_type=first.instance_type,
        pricing=first.pricing,
        request_id=f"req-resume-{alloc.id}",
        node_index=0,
        provider_instance_id=f"i-resume-{alloc.id}",
        state="TERMINATED",
        price_per_hour=first.price_at_plan,
        launched_at=NOW - timedelta(hours=2),
        terminated_at=NOW - timedelta(hours=1),
    )
    session.add(inst)
    session.flush()
    session.add(
        UsageRow(
            instance_id=inst.id,
            job_id=first.job_id,
            team="research",
            provider=first.provider,
            region=first.region,
            zone=first.zone,
            instance_type=first.instance_type,
            pricing=first.pricing,
            gpu=first.gpu,
            gpus=first.gpus_per_node,
            start=NOW - timedelta(hours=2),
            end=NOW - timedelta(hours=1),
            price_per_hour=first.price_at_plan,
            cost=Decimal(cost),
        )
    )


def test_a_resumed_job_is_held_to_the_estimate_it_started_on(database) -> None:  # type: ignore[no-untyped-def]
    """A run resumed after a preemption is re-planned for the work left: its estimate does
    not add to the job's, while every allocation of the first plan that ran (a serving
    job's replicas) does; an allocation that never ran adds nothing."""
    from broker.db.models import AllocationRow, PlanRow

    runs = seed(database, now=NOW, jobs=4)
    resumed, serving = runs[0].job_id, runs[1].job_id
    with database.session() as s:
        allocs = {a.job_id: a for a in s.query(AllocationRow).all()}
        started = {job: allocs[job].est_cost for job in (resumed, serving)}
        later = PlanRow(solver="highs", status="optimal", detail={})
        s.add(later)
        s.flush()
        _resume(s, allocs[resumed], later.id, "400.00", "350.00")  # resumed, ran
        _resume(s, allocs[resumed], later.id, "900.00", None)  # planned, never ran
        _resume(s, allocs[serving], allocs[serving].plan_id, "25.00", "20.00")  # same plan
    with database.session() as s:
        costs = job_costs(s, [resumed, serving])
    first_actual = sum((r.cost for r in runs if r.job_id == resumed), Decimal(0))
    assert costs[resumed].estimated == started[resumed]
    assert costs[resumed].actual == first_actual + Decimal("350.00")
    assert costs[serving].estimated == started[serving] + Decimal("25.00")


def test_metered_cost_follows_spot_price_observations(database) -> None:  # type: ignore[no-untyped-def]
    start = NOW - timedelta(hours=3)
    with database.session() as s:
        offer = OfferRow(
            provider="aws",
            region="us-east-1",
            zone="us-east-1a",
            instance_type="p5.48xlarge",
            gpu="H100-80GB",
            gpus_per_node=8,
            pricing="spot",
            price_per_hour=Decimal("40"),
            source="test",
        )
        s.add(offer)
        s.flush()
        s.add(PriceObservationRow(offer_id=offer.id, price=Decimal("30"), observed_at=start))
        s.add(
            PriceObservationRow(
                offer_id=offer.id, price=Decimal("20"), observed_at=start + timedelta(hours=1)
            )
        )
        s.add(
            PriceObservationRow(
                offer_id=offer.id, price=Decimal("50"), observed_at=start + timedelta(hours=2.5)
            )
        )
        offer_id = offer.id
    with database.session() as s:
        cost = metered_cost(
            s, offer_id=offer_id, price_per_hour=Decimal("30"), start=start, end=NOW
        )
        flat = metered_cost(s, offer_id=None, price_per_hour=Decimal("30"), start=start, end=NOW)
    assert cost == Decimal("30") + Decimal("20") * Decimal("1.5") + Decimal("50") * Decimal("0.5")
    assert flat == Decimal("90")


def test_empty_window_and_no_budgets(database) -> None:  # type: ignore[no-untyped-def]
    report = build_report(database, NOW - timedelta(hours=6), NOW)
    assert report.totals.spend == 0 and report.groups == [] and report.budgets == []
    assert report.bucket == "hour" and len(report.timeline) == 6
    assert report.totals.utilisation is None
    with database.session() as s:
        s.add(BudgetRow(team="x", amount=Decimal("10"), period="week"))
    assert build_report(database, NOW - timedelta(hours=6), NOW).budgets[0].burn == 0


def test_a_job_spread_over_pools_shares_one_baseline(database) -> None:  # type: ignore[no-untyped-def]
    """A serving job planned on two pools: its per-job-cheapest baseline is for the whole
    job, so the two allocations' runs together are compared with it once, not twice."""
    from broker.db.models import AllocationRow, InstanceRow, JobRow, PlanRow, UsageRow

    start, end = NOW - timedelta(hours=2), NOW - timedelta(hours=1)
    with database.session() as s:
        job = JobRow(name="serve", kind="inference", spec={}, team="product", state="RUNNING")
        s.add(job)
        s.flush()
        plan = PlanRow(solver="highs", status="optimal", detail={})
        s.add(plan)
        s.flush()
        plan.detail = {"per_job_cheapest": {str(job.id): "90"}}
        for index, region in enumerate(("us-east-1", "europe-west4")):
            alloc = AllocationRow(
                plan_id=plan.id,
                job_id=job.id,
                provider="gcp",
                region=region,
                instance_type="g2-standard-4",
                pricing="on_demand",
                nodes=1,
                est_hours=1.0,
                est_cost=Decimal("60"),
                state="RELEASED",
            )
            s.add(alloc)
            s.flush()
            inst = InstanceRow(
                allocation_id=alloc.id,
                provider="gcp",
                region=region,
                instance_type="g2-standard-4",
                pricing="on_demand",
                request_id=f"r{index}",
                state="TERMINATED",
            )
            s.add(inst)
            s.flush()
            s.add(
                UsageRow(
                    instance_id=inst.id,
                    job_id=job.id,
                    team="product",
                    provider="gcp",
                    region=region,
                    instance_type="g2-standard-4",
                    pricing="on_demand",
                    gpu="L4",
                    gpus=1,
                    start=start,
                    end=end,
                    price_per_hour=Decimal("60"),
                    cost=Decimal("60"),
                )
            )
    report = build_report(database, NOW - timedelta(days=1), NOW)
    assert report.totals.spend == Decimal("120")
    assert abs(report.totals.cheapest_cost - Decimal("90")) < TOL
