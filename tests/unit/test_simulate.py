"""The fleet simulator: a small replay through the real planner, executor and ledger."""

from __future__ import annotations

import dataclasses
import json
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import shared_dataset

SCENARIO = """
name: tiny
days: 0.5
drain_days: 0.5
supply:
  providers: [aws]
  gpus: [L40S, A10G, H100]
  capacity_nodes: 2
  spot_capacity_nodes: 2
  refresh_minutes: 60
  preemptions_per_hour: 0.5
planner:
  replan_minutes: 30
  time_limit: 2
teams:
  research: {budget: 1000}
demand:
  jobs:
    - at_hours: 0
      deadline_hours: 1
      spec: {kind: training, name: big, team: research, model: {preset: gpt-125m},
             tokens: 3_000_000_000, global_batch: 256, constraints: {max_nodes: 1}}
  mix:
    - spec: {kind: training, name: small, team: research, model: {preset: gpt-125m},
             tokens: 500_000_000, global_batch: 256, checkpoint_every: 100,
             constraints: {max_nodes: 1, spot: true}}
      per_day: 8
      deadline_hours: 12
"""


def _cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
    db_url: str | None = None,
) -> tuple[int, str, str]:
    """``gpubroker ARGS`` in this process, as the console script runs it: (code, out, err)."""
    from broker.cli import app as app_module

    if db_url:
        monkeypatch.setenv("GPUBROKER_DATABASE_URL", db_url)
    else:
        monkeypatch.delenv("GPUBROKER_DATABASE_URL", raising=False)
    monkeypatch.setattr(sys, "argv", ["gpubroker", *args])
    capsys.readouterr()
    code = 0
    try:
        app_module.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(SCENARIO)
    return path


def test_each_policy_ledger_matches_report_to_the_cent(
    home: Path,
    scenario: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from broker.config import load_settings
    from broker.db.engine import Database
    from broker.services import simulate

    settings = load_settings()
    db = Database(settings.database_url)
    ledgers = home / "ledgers"
    summaries = simulate.simulate(
        db, settings, simulate.load(scenario), seeds=1, ledger_dir=ledgers
    )
    db.dispose()
    by_policy = {s.policy: s for s in summaries}
    assert list(by_policy) == list(simulate.POLICIES)
    for summary in summaries:
        assert summary.jobs >= 2 and summary.cost > 0, summary
        (database,) = summary.databases
        window = summary.report_window
        code, out, err = _cli(
            monkeypatch,
            capsys,
            "report",
            "--from",
            window["from"],
            "--to",
            window["to"],
            "--format",
            "json",
            db_url=f"sqlite:///{database}",
        )
        assert code == 0, err
        totals = json.loads(out)["totals"]
        spend = Decimal(str(totals["spend"]))
        assert totals["utilisation"] > 0.9  # runs are busy for the simulated time they bill
        assert spend.quantize(Decimal("0.01")) == Decimal(str(summary.cost)), summary.policy
    # on-demand on one cloud never sees a spot preemption; spot policies pay less
    assert by_policy["single-cloud-on-demand"].preemptions == 0
    assert by_policy["spot-greedy"].cost < by_policy["single-cloud-on-demand"].cost


def test_same_seed_same_figures(home: Path, scenario: Path) -> None:
    from broker.config import load_settings
    from broker.db.engine import Database
    from broker.services import simulate

    settings = load_settings()
    db = Database(settings.database_url)
    loaded = simulate.load(scenario)
    first, second = (
        simulate.simulate(db, settings, loaded, policies=["gpubroker"], ledger_dir=home / d)
        for d in ("a", "b")
    )
    db.dispose()
    keep = ("cost", "gpu_hours", "preemptions", "deadline_misses", "mean_wait_hours")
    assert [getattr(first[0], k) for k in keep] == [getattr(second[0], k) for k in keep]


@pytest.mark.parametrize(
    ("old", "new", "args", "needle"),
    [
        ("name: tiny\n", "name: tiny\ncolour: blue\n", (), "colour: unknown field"),
        ("name: tiny\n", "name: tiny\ntraces: no-such-folder\n", (), "no such trace folder"),
        ("providers: [aws]", "providers: [nowhere]", (), "supply: empty"),
        ("name: tiny\n", "name: tiny\nsingle_cloud: nowhere\n", (), "single_cloud: no on-demand"),
        ("name: tiny\n", "name: tiny\n", ("--policy", "round-robin"), "unknown policy"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    old: str,
    new: str,
    args: tuple[str, ...],
    needle: str,
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SCENARIO.replace(old, new, 1))
    code, _, err = _cli(monkeypatch, capsys, "simulate", str(path), "--no-ray", *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not (home / "simulations").exists()  # nothing written


def test_measured_traces_drive_spot_pools() -> None:
    import random

    from broker.services.simulate.supply import load_traces

    traces = load_traces(shared_dataset("spot-traces"))
    assert traces.availability_series and traces.drops and traces.price_series
    runs = [t for t in traces.drops if t.times]
    lost = sum(sum(t.shares) for t in runs)
    hours = sum(t.hours for t in runs) / lost
    assert 0.5 < hours < 10  # hours of trace per lost node: spot runs last hours, not days
    assert all(0 < share <= 1 for t in runs for share in t.shares)
    times = traces.preemptions(random.Random(2), 24.0 * 28)
    assert times == sorted(times) and 28 < len(times) < 28 * 24  # one node over four weeks
    availability = traces.availability(random.Random(1), 200, 1.0)
    assert len(availability) == 200 and all(0.0 <= a <= 1.0 for a in availability)
    assert 0 < sum(availability) < 200  # measured spot capacity comes and goes


def test_cli_help_names_every_policy() -> None:
    from broker.services.simulate import POLICIES

    source = (Path(__file__).parents[2] / "broker" / "cli" / "simulate.py").read_text()
    assert all(policy in source for policy in POLICIES)


def test_fake_pool_moves_and_registry_stand_in(home: Path) -> None:
    """The two hooks a replay uses: a fake pool's capacity and price move (``set_offer``),
    and ``registry.launcher`` hands out the stand-in named in ``settings.extra``."""
    from dataclasses import replace

    from broker.config import load_settings
    from broker.domain import Pricing
    from broker.errors import OutOfCapacity
    from providers import registry
    from providers.base import LaunchRequest
    from providers.fake import FakeProvider

    cloud = FakeProvider("aws")
    offer = next(o for o in cloud.list_offers() if o.pricing == Pricing.SPOT)
    zone = str(offer.zone)
    cloud.set_offer(
        zone, offer.instance_type, Pricing.SPOT, capacity_nodes=1, price_per_hour=Decimal("0.5")
    )
    moved = next(
        o
        for o in cloud.list_offers()
        if (o.zone, o.instance_type, o.pricing) == (offer.zone, offer.instance_type, offer.pricing)
    )
    assert moved.price_per_hour == Decimal("0.5") and moved.capacity_nodes == 1
    request = LaunchRequest(
        request_id="r1",
        region=offer.region,
        zone=zone,
        instance_type=offer.instance_type,
        nodes=2,
        pricing=Pricing.SPOT,
    )
    with pytest.raises(OutOfCapacity):
        cloud.launch(request)
    assert len(cloud.launch(replace(request, nodes=1))) == 1
    settings = replace(load_settings(), extra={"provider_instances": {"aws": cloud}})
    assert registry.launcher("aws", settings) is cloud


def test_spot_nodes_are_reclaimed_one_slot_at_a_time(scenario: Path) -> None:
    """Each node slot of a spot pool has its own reclaims at the scenario's rate per node,
    so a gang of n nodes is stopped about n times as often as one node (the planner's
    assumption); a pool's on-demand twin is never reclaimed."""
    from broker.domain import Pricing
    from broker.services import simulate
    from broker.services.simulate.supply import build_pools
    from providers.fake import FakeProvider

    loaded = simulate.load(scenario)  # preemptions_per_hour: 0.5, spot_capacity_nodes: 2
    # pools the scenario sizes (2 spot nodes each)
    offers = [
        dataclasses.replace(o, capacity_nodes=None) for o in FakeProvider("aws").list_offers()
    ]
    hours = 2000
    pools = build_pools(offers, loaded, seed=3, ticks=hours)
    spot = [p for p in pools if p.record.pricing == Pricing.SPOT]
    assert spot and all(not p.preemptions for p in pools if p.record.pricing != Pricing.SPOT)
    for pool in spot:
        slots = {slot for _, slot in pool.preemptions}
        assert slots == set(range(pool.capacity)) == {0, 1}
        per_node = len(pool.preemptions) / pool.capacity / hours
        assert 0.4 < per_node < 0.6, per_node
        times = [at for at, _ in pool.preemptions]
        assert times == sorted(times)
