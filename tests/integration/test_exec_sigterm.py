"""A CLI run stopped with SIGTERM (a closed terminal, ``kill``, a CI timeout) tears its nodes
down as Ctrl-C does, so no node is left running without an executor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from broker.config import load_settings
from broker.db.engine import Database
from broker.db.models import InstanceRow, UsageRow
from broker.domain import InstanceState, JobState
from broker.services.jobs import store as jobs
from providers.local import LocalProvider
from tests.support.execution import submit

RUN = """
import signal, sys
from broker.cli.app import _terminated
from broker.config import load_settings
from broker.db.engine import Database
from broker.services.execution.job_runs import run_job
from broker.services.execution import runners
signal.signal(signal.SIGTERM, _terminated)
settings = load_settings()
db = Database(settings.database_url)
run_job(db, settings, int(sys.argv[1]), runner=runners.inprocess_runner)
"""


def test_sigterm_mid_run_tears_the_nodes_down_and_meters_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUBROKER_")}
    env["GPUBROKER_HOME"] = str(home)
    settings = load_settings(env)
    db = Database(settings.database_url)
    job_id = submit(db, steps=100_000, nodes=2)
    run = subprocess.Popen([sys.executable, "-c", RUN, str(job_id)], env=env, cwd=Path.cwd())
    try:
        deadline = time.monotonic() + 60
        while jobs.get(db, job_id).state is not JobState.RUNNING:
            assert time.monotonic() < deadline and run.poll() is None, "the run never started"
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) != 0
    finally:
        if run.poll() is None:
            run.kill()
    view = jobs.get(db, job_id)
    assert view.state is JobState.CANCELLED and view.message == "interrupted"
    with db.session() as session:
        nodes = list(session.scalars(select(InstanceRow)))
        usage = list(session.scalars(select(UsageRow)))
    assert len(nodes) == 2 and {n.state for n in nodes} == {InstanceState.TERMINATED.value}
    assert len(usage) == 2
    assert LocalProvider(settings).list_instances(settings.owner_tag) == []
    db.dispose()
