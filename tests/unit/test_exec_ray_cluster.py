"""Teardown stops exactly the processes of one cluster: marked ones, their children, the
driver; never a process of anyone else."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from broker.config import load_settings
from broker.services import ray_cluster

SLEEPER = "import subprocess, sys, time; {spawn}time.sleep(120)"


def _spawn(*marks: str, child: bool = False) -> subprocess.Popen[bytes]:
    spawn = (
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        if child
        else ""
    )
    return subprocess.Popen([sys.executable, "-c", SLEEPER.format(spawn=spawn), *marks])


def test_stop_kills_ours_and_spares_the_rest(tmp_path: Path) -> None:
    settings = load_settings({"GPUBROKER_HOME": str(tmp_path), "GPUBROKER_RAY_PORT": "6499"})
    cluster = ray_cluster.Cluster(
        key="a9",
        addresses=["127.0.0.2", "127.0.0.3"],
        port=6499,
        temp_dir=ray_cluster._temp_dir(settings, "a9"),
        resource="gpubroker-a9",
        cpus_per_node=1,
    )
    raylet = _spawn(f"--temp_dir={cluster.temp_dir}", child=True)  # with a worker below it
    client_server = _spawn("--address=127.0.0.2:6499")
    driver = _spawn()
    bystander = _spawn("--temp_dir=/tmp/gbr-someone-else", "--address=127.0.0.2:6379")
    ray_cluster._save(settings, cluster)
    ray_cluster.record_driver(settings, cluster, driver.pid)
    try:
        time.sleep(0.5)  # let the raylet stand-in start its child
        found = ray_cluster.our_processes(cluster)
        assert {raylet.pid, client_server.pid, driver.pid} < set(found)
        assert len(found) == 4 and bystander.pid not in found

        assert ray_cluster.stop(settings, "a9", grace_s=1.0) == 4

        for proc in (raylet, client_server, driver):
            assert proc.wait(timeout=5) is not None
        assert all(not ray_cluster.alive(pid) for pid in found)
        assert bystander.poll() is None  # someone else's process is untouched
        assert ray_cluster.load(settings, "a9") is None
        assert ray_cluster.stop(settings, "a9") == 0  # idempotent
    finally:
        for proc in (raylet, client_server, driver, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
