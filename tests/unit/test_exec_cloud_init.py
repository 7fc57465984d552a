"""Startup scripts for cloud nodes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from broker.config import load_settings
from broker.services.cloud_init import pinned_versions, startup_script


def test_script_pins_ray_and_torch_and_forms_the_gang(tmp_path: Path) -> None:
    settings = load_settings({"GPUBROKER_HOME": str(tmp_path), "GPUBROKER_RAY_PORT": "6411"})
    script = startup_script(settings, "gpubroker-a3")
    versions = pinned_versions()
    assert versions["ray"].startswith("2.60")
    assert f"'ray[train]=={versions['ray']}'" in script
    assert f"torch=={versions['torch']}" in script
    assert "RAY_AUTH_MODE=disabled" in script
    assert "ray start --head --port=6411" in script
    assert 'ray start --address="$HEAD:6411"' in script
    assert '\\"gpubroker-a3\\": 1, \\"gpubroker-a3-$NODE_INDEX\\": 1' in script
    assert "6379" not in script


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_script_is_valid_bash(tmp_path: Path) -> None:
    path = tmp_path / "boot.sh"
    path.write_text(startup_script(load_settings({"GPUBROKER_HOME": str(tmp_path)}), "g"))
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
