"""The node boot script: metadata -> head or join, token auth, nothing installed needlessly."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from broker.config import load_settings
from broker.services.execution import node_boot

# A stand-in interpreter: it passes the version check, names itself as sys.executable and
# records every ``-m ray.scripts.scripts`` call, so the script's own logic runs for real.
FAKE_PYTHON = """#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "pip $*" >> "$CALLS"; exit 0; fi
if [ "$1" = "-m" ]; then
  echo "ray ${*:3} auth=$RAY_AUTH_MODE token=$RAY_AUTH_TOKEN" >> "$CALLS"; exit 0
fi
case "$2" in
  *sys.executable*) echo "$0" ;;
  *) exit "${VERSION_CHECK:-0}" ;;
esac
"""


def _cluster(tmp_path: Path, source: str = "file") -> node_boot.ClusterSpec:
    settings = load_settings(
        {"GPUBROKER_HOME": str(tmp_path / "home"), "GPUBROKER_RAY_PORT": "6411"}
    )
    spec = node_boot.cluster_spec(settings, "local", "a3")
    return node_boot.ClusterSpec(spec.key, spec.token, spec.ray_port, spec.dashboard_port, source)


def _boot(tmp_path: Path, name: str, meta: dict[str, str], **env: str) -> subprocess.Popen[str]:
    folder = tmp_path / name
    (folder / "meta").mkdir(parents=True)
    for key, value in meta.items():
        (folder / "meta" / key).write_text(value)
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    script = folder / "boot.sh"
    script.write_text(node_boot.boot_script(_cluster(tmp_path)))
    variables = {
        "PATH": os.environ["PATH"],
        "GPUBROKER_PYTHON": str(python),
        "GPUBROKER_METADATA_DIR": str(folder / "meta"),
        "GPUBROKER_RAY_ARGS": "--num-cpus=1 --memory=1000",
        "CALLS": str(folder / "calls"),
        **env,
    }
    return subprocess.Popen(["bash", str(script)], env=variables, text=True, stderr=subprocess.PIPE)


def test_node_zero_starts_the_head_with_token_auth(tmp_path: Path) -> None:
    proc = _boot(tmp_path, "n0", {"gpubroker-node": "0", "local-ipv4": "127.0.0.9"})
    assert proc.wait(timeout=30) == 0
    (call,) = (tmp_path / "n0" / "calls").read_text().splitlines()
    token = _cluster(tmp_path).token
    assert call.startswith("ray start --head --port=6411 --dashboard-host=127.0.0.9")
    assert "--node-ip-address=127.0.0.9" in call and "--num-cpus=1 --memory=1000" in call
    assert '--resources={"gpubroker-a3": 1, "gpubroker-a3-0": 1}' in call
    assert call.endswith(f"auth=token token={token}")


def test_a_worker_waits_for_the_published_head_then_joins(tmp_path: Path) -> None:
    proc = _boot(tmp_path, "n1", {"gpubroker-node": "1", "local-ipv4": "127.0.0.8"})
    time.sleep(1.5)
    assert proc.poll() is None  # still waiting: no head published yet
    assert not (tmp_path / "n1" / "calls").exists()
    (tmp_path / "n1" / "meta" / "gpubroker-head").write_text("127.0.0.9")
    assert proc.wait(timeout=30) == 0
    (call,) = (tmp_path / "n1" / "calls").read_text().splitlines()
    assert call.startswith("ray start --address=127.0.0.9:6411 --node-ip-address=127.0.0.8")
    assert '"gpubroker-a3-1": 1' in call


def test_pinned_versions_are_installed_only_when_missing(tmp_path: Path) -> None:
    proc = _boot(
        tmp_path, "n0", {"gpubroker-node": "0", "local-ipv4": "127.0.0.9"}, VERSION_CHECK="1"
    )
    assert proc.wait(timeout=30) == 0
    pip, ray = (tmp_path / "n0" / "calls").read_text().splitlines()
    versions = node_boot.pinned_versions()
    assert f"{node_boot.RAY_EXTRAS}=={versions['ray']}" in pip
    assert "serve" in node_boot.RAY_EXTRAS and f"torch=={versions['torch']}" in pip
    assert ray.startswith("ray start --head")


def test_missing_metadata_stops_the_boot_with_a_reason(tmp_path: Path) -> None:
    proc = _boot(tmp_path, "n0", {"local-ipv4": "127.0.0.9"})
    assert proc.wait(timeout=30) == 1
    assert proc.stderr is not None and "no node index" in proc.stderr.read()


@pytest.mark.parametrize("source", ["ec2", "gce"])
def test_cloud_scripts_read_the_link_local_metadata_service(tmp_path: Path, source: str) -> None:
    script = node_boot.boot_script(_cluster(tmp_path, source))
    assert "http://169.254.169.254/" in script and "--max-time 5" in script
    if source == "ec2":
        assert (
            "latest/meta-data/tags/instance/$1" in script and "X-aws-ec2-metadata-token" in script
        )
    else:
        assert "computeMetadata/v1/instance/attributes/$1" in script and "Metadata-Flavor" in script
    path = tmp_path / "boot.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_the_token_is_per_cluster_from_a_private_secret(tmp_path: Path) -> None:
    settings = load_settings({"GPUBROKER_HOME": str(tmp_path)})
    first = node_boot.cluster_token(settings, "a1")
    assert first == node_boot.cluster_token(settings, "a1")
    assert first != node_boot.cluster_token(settings, "a2")
    secret = tmp_path / node_boot.SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.read_text().strip() not in node_boot.boot_script(
        node_boot.cluster_spec(settings, "aws", "a1")
    )
    other = load_settings({"GPUBROKER_HOME": str(tmp_path / "other")})
    assert node_boot.cluster_token(other, "a1") != first  # another installation, another token


def test_a_serving_cluster_opens_its_http_port_to_the_ingress(tmp_path: Path) -> None:
    settings = load_settings(
        {"GPUBROKER_HOME": str(tmp_path / "home"), "GPUBROKER_SERVE_PORT": "8123"}
    )
    training = node_boot.cluster_spec(settings, "aws", "a1")
    serving = node_boot.cluster_spec(settings, "aws", "a2", serving=True)
    assert training.ports == (settings.ray_port, settings.ray_dashboard_port)
    assert serving.ports == (settings.ray_port, settings.ray_dashboard_port, 8123)
