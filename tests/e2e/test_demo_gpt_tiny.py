"""The demo, shortened, on real local nodes: each boots its Ray node from the generated
script, the run is a Ray job on their head, and nothing is left running afterwards.

- a SkyPilot task (``examples/hello-ranks.yaml``) runs its ``run:`` on both nodes, and
  ``gpubroker logs`` shows each rank's line;
- ``gpubroker submit --wait`` trains the tiny GPT on two nodes and survives a killed
  training worker by restoring from its checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from broker.config import load_settings
from broker.db.engine import Database
from broker.db.models import UsageRow
from broker.services.execution.summary import job_summary
from broker.services.jobs import store as jobs
from providers.local import LocalProvider, processes

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
GPUBROKER = str(Path(sys.executable).with_name("gpubroker"))


def _env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUBROKER_", "RAY_"))}
    env.update(GPUBROKER_HOME=str(home), GPUBROKER_RAY_PORT=str(port))
    return env


def _node_marks(home: Path) -> list[str]:
    """The Ray temp dirs of every local node ever booted in ``home``."""
    state = json.loads((home / "local" / "instances.json").read_text())
    return [raw["temp_dir"] for raw in state["instances"].values() if raw.get("temp_dir")]


def _assert_nothing_left(home: Path, env: dict[str, str]) -> None:
    settings = load_settings(env)
    assert processes.marked(_node_marks(home)) == []
    assert LocalProvider(settings).list_instances(settings.owner_tag) == []


def test_a_skypilot_task_runs_on_every_node_and_logs_show_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _env(home, 6480)
    done = subprocess.run(
        [GPUBROKER, "submit", str(REPO / "examples" / "hello-ranks.yaml"), "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCEEDED" in done.stdout
    logs = subprocess.run(
        [GPUBROKER, "logs", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert logs.returncode == 0, logs.stderr
    assert "hello from rank 0 of 2" in logs.stdout
    assert "hello from rank 1 of 2" in logs.stdout
    assert "GPUBROKER_EVENT" not in logs.stdout  # events are filed apart from the output
    _assert_nothing_left(home, env)


def _wait_for_checkpoint(output: Path, deadline: float) -> None:
    """Until the run reports a persisted checkpoint in its output copy."""
    while time.monotonic() < deadline:
        lines = output.read_text().splitlines() if output.exists() else []
        if any('"checkpoint": true' in line for line in lines):
            return
        time.sleep(0.5)
    raise AssertionError("no checkpoint was reported in time")


def _training_workers(home: Path) -> list[int]:
    return [
        pid
        for pid in processes.marked(_node_marks(home))
        if "RayTrainWorker" in " ".join(processes.cmdline(pid))
    ]


def test_submit_wait_trains_on_two_nodes_and_recovers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = yaml.safe_load((REPO / "examples" / "gpt-tiny-local.yaml").read_text())
    spec.update(steps=60, checkpoint_every=20)
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    env = _env(home, 6470)
    settings = load_settings(env)
    proc = subprocess.Popen(
        [GPUBROKER, "submit", str(spec_path), "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_checkpoint(home / "runs" / "job-1" / "output.log", time.monotonic() + 240)
        workers = _training_workers(home)
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)  # Ray Train must restore from the checkpoint
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "SUCCEEDED" in output

    database = Database(settings.database_url)
    events = jobs.events(database, 1)
    nodes = {e.payload["node"] for e in events if e.kind == "worker"}
    assert nodes == {"127.0.0.2", "127.0.0.3"}  # one worker on each allocated node
    restored = [e.payload["step"] for e in events if e.kind == "restored"]
    assert restored and restored[0] >= 20
    summary = job_summary(database, settings, 1)
    assert summary.state == "SUCCEEDED" and summary.step == 60
    assert summary.first_loss is not None and summary.last_loss is not None
    assert summary.last_loss < summary.first_loss - 0.5
    assert summary.checkpoint is not None and Path(summary.checkpoint, "state.pt").exists()
    with database.session() as session:
        usage = session.scalars(select(UsageRow)).all()
    assert len(usage) == 2 and all(u.busy_seconds and u.busy_seconds > 0 for u in usage)
    database.dispose()
    _assert_nothing_left(home, env)


def test_a_failing_command_fails_the_job_and_cancel_stops_a_running_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _env(home, 6490)
    failing = tmp_path / "failing.yaml"
    failing.write_text(
        "name: failing\nnum_nodes: 1\nresources: {cloud: local}\n"
        "run: |\n  echo about to fail\n  exit 3\n"
    )
    done = subprocess.run(
        [GPUBROKER, "submit", str(failing), "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "FAILED" in done.stdout, done.stdout + done.stderr
    settings = load_settings(env)
    database = Database(settings.database_url)
    message = jobs.get(database, 1).message or ""
    assert "exited with code 3" in message and "about to fail" in message

    endless = tmp_path / "endless.yaml"
    endless.write_text(
        "name: endless\nnum_nodes: 1\nresources: {cloud: local}\n"
        "run: |\n  echo started\n  sleep 600\n"
    )
    proc = subprocess.Popen(
        [GPUBROKER, "submit", str(endless), "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = home / "runs" / "job-2" / "output.log"
        deadline = time.monotonic() + 240
        while "[node 0] started" not in (output.read_text() if output.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        cancelled = subprocess.run(
            [GPUBROKER, "cancel", "2"], env=env, capture_output=True, text=True, timeout=120
        )
        assert cancelled.returncode == 0, cancelled.stderr
        printed, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "CANCELLED" in printed
    assert jobs.get(database, 2).state.value == "CANCELLED"
    assert not any(
        "sleep 600" in " ".join(processes.cmdline(pid))
        for pid in processes.marked(_node_marks(home))
    )
    database.dispose()
    _assert_nothing_left(home, env)
