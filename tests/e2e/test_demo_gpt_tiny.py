"""The demo, shortened: ``gpubroker submit --wait`` trains the tiny GPT on two local Ray
nodes, survives a killed training worker, and leaves nothing running."""

from __future__ import annotations

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
from broker.services import execution, jobs, ray_cluster
from providers.local import LocalProvider

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "gpt-tiny-local.yaml"


def _wait_for_checkpoint(metrics: Path, deadline: float) -> None:
    """Until the run reports a persisted checkpoint (read from its metrics file, so the
    test never touches the database while the CLI migrates and writes it)."""
    while time.monotonic() < deadline:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if any('"checkpoint": true' in line for line in lines):
            return
        time.sleep(0.5)
    raise AssertionError("no checkpoint was reported in time")


def _training_workers(cluster: ray_cluster.Cluster) -> list[int]:
    return [
        pid
        for pid in ray_cluster.our_processes(cluster)
        if "RayTrainWorker" in " ".join(ray_cluster.cmdline(pid))
    ]


def test_submit_wait_trains_on_two_nodes_and_recovers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec.update(steps=100, checkpoint_every=20)
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUBROKER_")}
    env.update(GPUBROKER_HOME=str(home), GPUBROKER_RAY_PORT="6470")
    settings = load_settings(env)
    gpubroker = Path(sys.executable).with_name("gpubroker")
    proc = subprocess.Popen(
        [str(gpubroker), "submit", str(spec_path), "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_checkpoint(home / "runs" / "job-1" / "metrics.jsonl", time.monotonic() + 240)
        cluster = ray_cluster.load(settings, execution.cluster_key(1))
        assert cluster is not None and cluster.addresses == ["127.0.0.2", "127.0.0.3"]
        workers = _training_workers(cluster)
        assert len(workers) == 2, [
            ray_cluster.cmdline(p) for p in ray_cluster.our_processes(cluster)
        ]
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
    assert nodes == {"127.0.0.2", "127.0.0.3"}  # one worker group spread over both nodes
    restored = [e.payload["step"] for e in events if e.kind == "restored"]
    assert restored and restored[0] >= 20
    summary = execution.summary(database, settings, 1)
    assert summary.state == "SUCCEEDED" and summary.step == 100
    assert summary.first_loss is not None and summary.last_loss is not None
    assert summary.last_loss < summary.first_loss - 0.5
    assert summary.checkpoint is not None and Path(summary.checkpoint, "state.pt").exists()
    with database.session() as session:
        usage = session.scalars(select(UsageRow)).all()
    assert len(usage) == 2 and all(u.busy_seconds and u.busy_seconds > 0 for u in usage)
    # Nothing of ours is left: no Ray process of the cluster, no local node.
    assert ray_cluster.our_processes(cluster) == []
    assert ray_cluster.known_keys(settings) == []
    assert LocalProvider(settings).list_instances(settings.owner_tag) == []
    database.dispose()
