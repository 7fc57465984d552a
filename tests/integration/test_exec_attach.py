"""``submit --wait`` on a job another executor (a daemon) already runs follows it instead."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from broker.config import load_settings
from broker.db.engine import Database
from broker.domain import JobState
from broker.services.execution import job_runs, provision, runners
from broker.services.execution.executor import run_allocation
from broker.services.execution.job_runs import run_job
from broker.services.execution.run_context import Progress
from broker.services.jobs import store as jobs
from tests.support.execution import plan_allocation, submit


def test_a_second_executor_attaches_and_sees_the_progress(
    database: Database, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings({"GPUBROKER_HOME": str(home), "GPUBROKER_DATABASE_URL": database.url})
    job_id = submit(database, steps=300, checkpoint_every=100)
    alloc_id = plan_allocation(database, job_id, nodes=1)
    daemon = threading.Thread(
        target=run_allocation,
        args=(database, settings, alloc_id),
        kwargs={"runner": runners.inprocess_runner},
    )
    daemon.start()
    deadline = time.monotonic() + 30
    while jobs.get(database, job_id).state is not JobState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    seen: list[Progress] = []
    # A second process has a lease holder name of its own; this thread takes one.
    for module in (provision, job_runs):
        monkeypatch.setattr(module, "lease_holder", lambda: "another-host:1")
    state = run_job(database, settings, job_id, progress=seen.append)
    daemon.join(timeout=60)
    assert state is JobState.SUCCEEDED
    assert seen and seen[-1].step == 300  # progress came through while attached
    assert jobs.get(database, job_id).attempts == 1  # run once, not twice
