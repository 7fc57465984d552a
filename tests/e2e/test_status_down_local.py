"""``gpubroker status`` and ``gpubroker down --all --yes`` on a job running on a real local
node: status shows its allocation and instance with age and burn rate, down cancels it and
terminates the node, and nothing of it is left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.config import load_settings
from providers.local import LocalProvider, processes

pytestmark = pytest.mark.ray
GPUBROKER = str(Path(sys.executable).with_name("gpubroker"))


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GPUBROKER, *args], env=env, capture_output=True, text=True, timeout=120)


def test_status_then_down_all_on_a_running_local_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUBROKER_", "RAY_"))}
    env.update(GPUBROKER_HOME=str(home), GPUBROKER_RAY_PORT="6484", COLUMNS="80")
    spec = tmp_path / "sleeper.yaml"
    spec.write_text(
        "name: sleeper\nnum_nodes: 1\nresources: {cloud: local}\n"
        "run: |\n  echo started\n  sleep 600\n"
    )
    proc = subprocess.Popen(
        [GPUBROKER, "submit", str(spec), "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = home / "runs" / "job-1" / "output.log"
        deadline = time.monotonic() + 240
        while "started" not in (output.read_text() if output.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        status = _cli(env, "status", "--format", "json")
        assert status.returncode == 0, status.stderr
        live = json.loads(status.stdout)
        [alloc] = live["allocations"]
        assert (alloc["job"], alloc["provider"], alloc["up"]) == ("sleeper", "local", 1)
        [instance] = live["instances"]
        assert instance["state"] == "RUNNING" and instance["address"] == "127.0.0.2"
        assert instance["age_seconds"] >= 0 and live["burn_rate"] == 0.0  # local is free
        table = _cli(env, "status")
        assert "sleeper" in table.stdout and "burn rate $0.00/h" in table.stdout

        down = _cli(env, "down", "--all", "--yes", "--format", "json")
        assert down.returncode == 0, down.stderr
        [stopped] = json.loads(down.stdout)
        assert stopped["state"] == "CANCELLED" and stopped["instances"] == 1
        printed, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "CANCELLED" in printed
    after = _cli(env, "status")
    assert after.returncode == 0 and "Nothing is live" in after.stdout
    settings = load_settings(env)
    state = json.loads((home / "local" / "instances.json").read_text())
    marks = [raw["temp_dir"] for raw in state["instances"].values() if raw.get("temp_dir")]
    assert processes.marked(marks) == []
    assert LocalProvider(settings).list_instances(settings.owner_tag) == []
