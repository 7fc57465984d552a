"""A preempted spot node: the job goes back to PENDING, avoids the zone, resumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import select

from broker.config import load_settings
from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow, PoolCooldownRow, UsageRow
from broker.domain import AllocationState, JobState
from broker.services.execution import monitor, provision, runners
from broker.services.execution.executor import run_allocation
from broker.services.execution.job_runs import schedule_job
from broker.services.execution.run_context import Progress
from broker.services.jobs import store as jobs
from tests.support.execution import submit

planning = pytest.importorskip("broker.services.planning.plan", reason="planning service absent")


def test_preempted_job_replans_elsewhere_and_resumes(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker.services.offers.upsert import upsert_offers
    from providers.fake import FakeProvider

    fake = FakeProvider()
    settings = dataclasses.replace(
        load_settings({"GPUBROKER_HOME": str(home)}), extra={"fake_provider": fake}
    )
    database = Database(settings.database_url)
    upsert_offers(database, fake.list_offers(), provider="fake", full=True)
    monkeypatch.setattr(provision, "POLL_S", 0.02)
    # the monitor looks for lost nodes every tick: far sooner than the run's last steps
    monkeypatch.setattr(monitor, "POLL_S", 0.02)
    job_id = submit(
        database,
        steps=300,
        checkpoint_every=10,
        nodes=2,
        constraints={"providers": ["fake"], "spot": True},
    )

    def preempt_once(progress: Progress) -> None:
        if progress.step is not None and progress.step >= 40 and not fake_taken:
            listed = fake.list_instances(settings.owner_tag)
            ours = [r for r in listed if r.state.value == "RUNNING"]
            fake_taken.extend(fake.preempt([ours[0].instance_id]))

    fake_taken: list[str] = []
    (first,) = schedule_job(database, settings, job_id)
    state = run_allocation(
        database, settings, first, progress=preempt_once, runner=runners.inprocess_runner
    )
    assert fake_taken and state is JobState.PENDING
    with database.session() as session:
        alloc1 = session.get(AllocationRow, first)
        assert alloc1 is not None and alloc1.state == AllocationState.FAILED.value
        zone1 = alloc1.zone
        cooldowns = session.scalars(select(PoolCooldownRow)).all()
    assert any(c.zone == zone1 and c.provider == "fake" for c in cooldowns)
    states = [e.payload["state"] for e in jobs.events(database, job_id) if e.kind == "state"]
    assert states[-2:] == ["PREEMPTED", "PENDING"]

    (second,) = schedule_job(database, settings, job_id)
    state = run_allocation(database, settings, second, runner=runners.inprocess_runner)

    assert state is JobState.SUCCEEDED
    events = jobs.events(database, job_id)
    restored = [e.payload["step"] for e in events if e.kind == "restored"]
    assert len(restored) == 1 and restored[0] >= 10  # resumed from a checkpoint, not step 0
    with database.session() as session:
        alloc2 = session.get(AllocationRow, second)
        assert alloc2 is not None and alloc2.zone != zone1
        usage = session.scalars(select(UsageRow).order_by(UsageRow.start)).all()
        instance_count = len(session.scalars(select(InstanceRow)).all())
    # One ledger row per node run; the two runs do not overlap, so nothing is billed twice.
    assert len(usage) == instance_count == 4
    first_end = max(u.end for u in usage if u.zone == zone1)
    second_start = min(u.start for u in usage if u.zone != zone1)
    assert first_end <= second_start
    assert fake.list_instances(settings.owner_tag) == [] or all(
        r.state.value != "RUNNING" for r in fake.list_instances(settings.owner_tag)
    )
    database.dispose()
