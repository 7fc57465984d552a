"""The planning service on SQLite and PostgreSQL, and ``gpubroker plan`` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from broker.config import load_settings
from broker.db.models import AllocationRow, BudgetRow, JobRow, OfferRow, PlanRow
from broker.domain import JobState
from broker.services.planning.columns import ALLOCATION_KEYS
from broker.services.planning.inputs import add_cooldown
from broker.services.planning.plan import plan
from broker.services.planning.schedule import schedule
from workloads.spec import parse_spec, spec_to_dict

ROOT = Path(__file__).resolve().parents[2]


def _spec(name: str, team: str = "ml", **extra) -> dict:
    data = {
        "kind": "training",
        "name": name,
        "team": team,
        "model": {"preset": "gpt-125m"},
        "tokens": 1_000_000_000,
        "nodes": 2,
        "constraints": {"gpus": ["H100"]},
    }
    data.update(extra)
    return spec_to_dict(parse_spec(data))


def _offer(zone: str, price: str, capacity: int | None) -> OfferRow:
    return OfferRow(
        provider="aws",
        region="us-east-1",
        zone=zone,
        instance_type="p5.48xlarge",
        gpu="H100-80GB",
        gpus_per_node=8,
        gpu_memory_gib=80,
        pricing="on_demand",
        price_per_hour=Decimal(price),
        interconnect_gbps=3200.0,
        rdma="efa",
        capacity_nodes=capacity,
        source="test",
    )


def _jobs(session, *specs: dict) -> list[int]:
    rows = [
        JobRow(
            name=s["name"],
            kind="training",
            spec=s,
            team=s["team"],
            priority=0,
            state=JobState.PENDING.value,
        )
        for s in specs
    ]
    session.add_all(rows)
    session.flush()
    return [r.id for r in rows]


@pytest.fixture
def settings(tmp_path, database):
    return load_settings(
        {
            "GPUBROKER_HOME": str(tmp_path),
            "GPUBROKER_DATABASE_URL": database.url,
            "GPUBROKER_SOLVER_TIME_LIMIT": "10",
        }
    )


def test_plan_then_schedule_respects_held_capacity_and_cooldowns(database, settings) -> None:
    with database.session() as s:
        s.add_all([_offer("use1-az1", "50", 2), _offer("use1-az2", "60", None)])
        first, second = _jobs(s, _spec("a"), _spec("b"))
    report = plan(database, settings)
    assert report.validated and report.lp_bound is not None and report.gap is not None
    zones = sorted(a["zone"] for a in report.allocations)
    assert zones == ["use1-az1", "use1-az2"]  # default capacity 4 holds the second gang
    assert report.unplaced == []
    with database.session() as s:
        assert s.scalar(select(PlanRow.id)) is None  # plan stores nothing

    result = schedule(database, settings, job_ids=[first])
    with database.session() as s:
        assert s.get(JobRow, first).state == JobState.PLANNED.value
        alloc = s.get(AllocationRow, result.allocation_ids[0])
        assert (alloc.zone, alloc.nodes, alloc.state) == ("use1-az1", 2, "PLANNED")
        assert s.get(PlanRow, result.plan_id).validated
    # az1 is now full (held by the live allocation); az2 cools down: nothing is left.
    add_cooldown(
        database,
        settings,
        provider="aws",
        region="us-east-1",
        zone="use1-az2",
        instance_type=None,
        reason="OutOfCapacity",
    )
    again = schedule(database, settings)
    assert again.allocation_ids == []
    assert "no pool" in again.unplaced[second] or "no offer" in again.unplaced[second]
    with database.session() as s:
        assert s.get(JobRow, second).state == JobState.PENDING.value
        assert s.get(JobRow, second).message == again.unplaced[second]


def test_team_budget_is_a_hard_cap(database, settings) -> None:
    with database.session() as s:
        s.add(_offer("use1-az1", "50", 8))
        s.add(BudgetRow(team="poor", amount=Decimal("1.00"), period="month"))
        (job,) = _jobs(s, _spec("c", team="poor"))
    report = plan(database, settings)
    assert report.allocations == []
    assert report.unplaced[0]["job"] == job
    assert report.unplaced[0]["reason"].startswith("budget of team poor has $1.00 left")
    assert report.placed_weight == report.most_placeable == 0  # no plan can place it


def test_bad_solver_is_a_user_error(database, settings) -> None:
    from broker.errors import ConfigError

    with pytest.raises(ConfigError, match="--solver"):
        plan(database, settings, solver="gurobi")


def test_cli_plan_json_over_the_examples(home: Path) -> None:
    from broker.db.engine import Database
    from broker.services.jobs.store import submit
    from workloads.spec import load_spec

    db = Database(f"sqlite:///{home / 'broker.db'}")
    specs = [p for p in sorted((ROOT / "examples").glob("*.yaml")) if p.name != "month.yaml"]
    for path in specs:
        submit(db, load_spec(path))
    db.dispose()
    env = dict(os.environ, GPUBROKER_HOME=str(home), GPUBROKER_SOLVER_TIME_LIMIT="10")
    gpubroker = str(Path(sys.executable).with_name("gpubroker"))
    out = subprocess.run(
        [gpubroker, "plan", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["validated"] is True
    assert data["lp_bound"] is not None and 0 <= data["gap"] < 0.05
    assert data["objective"] >= data["lp_bound"]
    assert 0 < data["placed_weight"] <= data["most_placeable"]
    placed = {a["job"] for a in data["allocations"]}
    assert placed and placed | {u["job"] for u in data["unplaced"]} == set(range(1, len(specs) + 1))
    for alloc in data["allocations"]:
        assert set(ALLOCATION_KEYS) <= set(alloc)
    assert all(str(a["job"]) in data["explain"] for a in data["allocations"])
    bad = subprocess.run(
        [gpubroker, "plan", "--max-provider-share", "1.5"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: --max-provider-share")


def test_schedule_with_no_pending_jobs_stores_an_empty_plan(database, settings) -> None:
    with database.session() as s:
        s.add(_offer("use1-az1", "50", 2))
    report = plan(database, settings)
    assert (report.allocations, report.unplaced) == ([], [])
    assert (report.objective, report.lp_bound, report.gap, report.validated) == (0, 0, 0.0, True)
    result = schedule(database, settings)
    assert (result.allocation_ids, result.unplaced) == ([], {})
    with database.session() as s:
        row = s.get(PlanRow, result.plan_id)
        assert row.validated and (row.objective, row.lp_bound, row.gap) == (0, 0, 0.0)


def test_per_job_cheapest_baseline_feeds_the_report(database, settings) -> None:
    from datetime import timedelta

    from broker.db.models import InstanceRow, UsageRow
    from broker.domain import utcnow
    from broker.services.reports.build import build_report

    with database.session() as s:
        s.add_all([_offer("use1-az1", "50", 2), _offer("use1-az2", "60", None)])
        first, second = _jobs(s, _spec("a"), _spec("b"))
    result = schedule(database, settings)
    with database.session() as s:
        detail = s.get(PlanRow, result.plan_id).detail["per_job_cheapest"]
        allocs = {a.job_id: a for a in s.scalars(select(AllocationRow))}
        # alone, each job takes az1; together the second one pays az2's price
        assert allocs[first].zone == "use1-az1" and allocs[second].zone == "use1-az2"
        assert set(detail) == {str(first), str(second)}
        assert Decimal(detail[str(first)]) == Decimal(detail[str(second)]) == allocs[first].est_cost
        baseline, estimate = Decimal(detail[str(second)]), allocs[second].est_cost
        assert baseline < estimate
        end = utcnow()
        inst = InstanceRow(
            allocation_id=allocs[second].id,
            provider="aws",
            region="us-east-1",
            zone="use1-az2",
            instance_type="p5.48xlarge",
            pricing="on_demand",
            request_id="r",
            state="TERMINATED",
            price_per_hour=Decimal(60),
            launched_at=end - timedelta(hours=1),
            terminated_at=end,
        )
        s.add(inst)
        s.flush()
        s.add(
            UsageRow(
                instance_id=inst.id,
                job_id=second,
                team="ml",
                provider="aws",
                region="us-east-1",
                zone="use1-az2",
                instance_type="p5.48xlarge",
                pricing="on_demand",
                gpu="H100-80GB",
                gpus=8,
                start=inst.launched_at,
                end=end,
                price_per_hour=Decimal(60),
                cost=Decimal(60),
            )
        )
    totals = build_report(database, end - timedelta(hours=2), end + timedelta(minutes=1)).totals
    assert totals.spend == Decimal(60)
    assert abs(totals.cheapest_cost - Decimal(60) * baseline / estimate) < Decimal("0.000001")
    # 60 x 50/60 - 60, up to the estimates' rounding to the cent
    assert abs(totals.savings_vs_cheapest - Decimal(-10)) < Decimal("0.05")


def test_stored_cpu_calibration_sets_planned_hours(database, settings) -> None:
    from broker.services.planning.calibrations import save_calibration
    from workloads.estimate import Calibration, Hardware, estimate_training

    spec = parse_spec(
        {
            "kind": "training",
            "name": "tiny",
            "team": "ml",
            "model": {"preset": "gpt-tiny"},
            "steps": 300,
            "global_batch": 16,
            "precision": "fp32",
            "nodes": 1,
            "constraints": {"providers": ["local"]},
        }
    )
    with database.session() as s:
        s.add(
            OfferRow(
                provider="local",
                region="local",
                zone="local-a",
                instance_type="cpu-2",
                gpu=None,
                gpus_per_node=0,
                vcpus=2,
                pricing="on_demand",
                price_per_hour=Decimal(0),
                capacity_nodes=1,
                source="test",
            )
        )
        _jobs(s, spec_to_dict(spec))
    default = plan(database, settings).allocations[0]["est_hours"]
    slow = 1e7  # FLOP/s: far below what the uncalibrated estimate assumes for two vCPUs
    save_calibration(database, device="cpu:test machine", gpu=None, achieved_flops=slow)
    calibrated = plan(database, settings).allocations[0]["est_hours"]
    hw = Hardware(gpu=None, gpus_per_node=0, vcpus=2)
    expected = estimate_training(spec, hw, calibration=Calibration("cpu:test machine", slow, None))
    assert calibrated == round(expected.hours, 4)
    assert calibrated > 20 * default


def test_schedule_logs_planned_and_unplaced_jobs(database, settings) -> None:
    from broker.services.jobs.store import events

    with database.session() as s:
        s.add(_offer("use1-az1", "50", 2))
        first, second = _jobs(s, _spec("a", priority=1), _spec("b"))  # room for one gang
    result = schedule(database, settings)
    assert result.allocation_ids and second in result.unplaced
    (planned,) = [e for e in events(database, first) if e.kind == "state"]
    assert planned.payload == {
        "state": "PLANNED",
        "from": "PENDING",
        "plan_id": result.plan_id,
        "pool": "aws/us-east-1/use1-az1/p5.48xlarge/on_demand",
        "allocations": result.allocation_ids,
    }
    unplaced = [("unplaced", {"plan_id": result.plan_id, "reason": result.unplaced[second]})]
    assert [(e.kind, e.payload) for e in events(database, second)] == unplaced
    # az1 is now held: a new reason is logged, the same one again is not
    again = schedule(database, settings)
    unplaced.append(("unplaced", {"plan_id": again.plan_id, "reason": again.unplaced[second]}))
    third = schedule(database, settings)
    assert third.unplaced[second] == again.unplaced[second] != result.unplaced[second]
    assert [(e.kind, e.payload) for e in events(database, second)] == unplaced


def test_the_provider_cap_counts_what_live_allocations_hold(database, settings) -> None:
    """Two providers and a 35 % cap: over the new placements alone no plan can hold a job;
    with 32 GPUs running on gcp, the 16-GPU gang goes on aws (16 of 48 GPUs, 33 %)."""
    from broker.errors import Infeasible

    with database.session() as s:
        s.add(_offer("use1-az1", "50", 4))
        s.add(
            OfferRow(
                provider="gcp",
                region="us-central1",
                zone="us-central1-a",
                instance_type="a3-highgpu-8g",
                gpu="H100-80GB",
                gpus_per_node=8,
                gpu_memory_gib=80,
                pricing="on_demand",
                price_per_hour=Decimal("90"),
                interconnect_gbps=3200.0,
                rdma="tcpx",
                capacity_nodes=8,
                source="test",
            )
        )
        (job,) = _jobs(s, _spec("new"))
    with pytest.raises(Infeasible, match="smallest cap that can hold is 50%"):
        plan(database, settings, max_provider_share=0.35)
    with database.session() as s:
        (running,) = _jobs(s, _spec("running"))
        s.get(JobRow, running).state = JobState.RUNNING.value
        held = PlanRow(solver="highs", status="optimal")
        s.add(held)
        s.flush()
        s.add(
            AllocationRow(
                plan_id=held.id,
                job_id=running,
                provider="gcp",
                region="us-central1",
                zone="us-central1-a",
                instance_type="a3-highgpu-8g",
                pricing="on_demand",
                gpu="H100-80GB",
                gpus_per_node=8,
                nodes=4,
                est_hours=1.0,
                est_cost=Decimal("360"),
                state="ACTIVE",
            )
        )
    report = plan(database, settings, max_provider_share=0.35)
    assert report.unplaced == []
    assert [(a["job"], a["provider"], a["gpus"]) for a in report.allocations] == [(job, "aws", 16)]
