"""The test cloud: cloud instances boot as real hosts that read a live metadata service,
serve on their private IPs over one bridge, keep /tmp to themselves, and leave nothing
behind; a Ray head and a worker in two hosts form one cluster that runs a job submitted
from the root namespace through the Jobs API with token authentication."""

# ruff: noqa: F811
from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.gce_server import FakeGce, gce, gce_server  # noqa: F401
from tests.support.moto_server import MotoServer, moto_aws, moto_server  # noqa: F401
from tests.support.testcloud import Ec2Metadata, GceMetadata, GceRest, TestCloud, wait_for
from tests.support.testcloud.cloud import kept_under_tmp
from tests.support.testcloud.fixtures import test_cloud  # noqa: F401

REGION = "us-east-1"
ZONE = "us-central1-a"
PORT = 8080
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# EC2 flavour: IMDSv2 token, then its own tag; also what IMDS says without a token and
# for a tag it lacks. Serves what it read, on its private IP.
EC2_SCRIPT = """#!/bin/bash
set -euo pipefail
imds=http://169.254.169.254/latest
token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' $imds/api/token)
get() { curl -sf -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/$1"; }
status() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
ip=$(get local-ipv4)
www=/tmp/MARKER
mkdir "$www"
get tags/instance/role > "$www/role"
status "$imds/meta-data/local-ipv4" > "$www/without-credential"
status -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/tags/instance/absent" \
  > "$www/missing"
hostname > "$www/hostname"
cd "$www" && exec python3 -m http.server --bind "$ip" PORT
"""

# GCE flavour: the Metadata-Flavor header and metadata.google.internal.
GCE_SCRIPT = """#!/bin/bash
set -euo pipefail
md=http://metadata.google.internal/computeMetadata/v1/instance
get() { curl -sf -H 'Metadata-Flavor: Google' "$md/$1"; }
status() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
ip=$(get network-interfaces/0/ip)
www=/tmp/MARKER
mkdir "$www"
get attributes/role > "$www/role"
status "$md/attributes/role" > "$www/without-credential"
status -H 'Metadata-Flavor: Google' "$md/attributes/absent" > "$www/missing"
hostname > "$www/hostname"
cd "$www" && exec python3 -m http.server --bind "$ip" PORT
"""

# Waits for the tag the broker publishes once the gang runs, then serves it.
HEAD_TAG_SCRIPT = """#!/bin/bash
set -euo pipefail
imds=http://169.254.169.254/latest
token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' $imds/api/token)
get() { curl -sf -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/$1"; }
ip=$(get local-ipv4)
until head=$(get tags/instance/gpubroker-head); do sleep 0.2; done
mkdir /tmp/www && echo "$head" > /tmp/www/head
cd /tmp/www && exec python3 -m http.server --bind "$ip" PORT
"""


def _script(template: str, marker: str = "www") -> str:
    return template.replace("MARKER", marker).replace("PORT", str(PORT))


def _fetch(ip: str, name: str, timeout: float = 20) -> str:
    """GET http://IP:PORT/NAME from the root namespace once the host serves it."""

    def get() -> str:
        with _NO_PROXY.open(f"http://{ip}:{PORT}/{name}", timeout=2) as response:
            return response.read().decode().strip()

    return str(wait_for(get, timeout, f"http://{ip}:{PORT}/{name}"))


def _ec2() -> Any:
    return boto3.client("ec2", region_name=REGION)


def _run_instances(count: int, user_data: str, tags: dict[str, str]) -> list[dict[str, Any]]:
    found = _ec2().run_instances(
        ImageId="ami-12345678",
        InstanceType="t3.micro",
        MinCount=count,
        MaxCount=count,
        UserData=user_data,
        MetadataOptions={"HttpTokens": "required", "InstanceMetadataTags": "enabled"},
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )
    return list(found["Instances"])


def _leftovers(cloud: TestCloud, pids: list[int]) -> list[str]:
    """Namespaces, links, processes and state of ``cloud`` that still exist."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    left = [f"netns {line}" for line in netns.splitlines() if cloud.id in line]
    left += [f"link {line.split(':')[1]}" for line in links.splitlines() if cloud.id in line]
    left += [f"pid {pid}" for pid in pids if Path(f"/proc/{pid}").exists()]
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(cloud.state_dir) in cmdline:
            left.append(f"process {proc.name}: {cmdline}")
    if cloud.state_dir.exists():
        left.append(f"state {cloud.state_dir}")
    return left


def test_hosts_read_their_own_metadata_serve_on_the_bridge_and_leave_nothing(
    test_cloud: TestCloud, moto_aws: MotoServer, gce: FakeGce
) -> None:
    marker = f"testcloud-{uuid.uuid4().hex[:8]}"
    (ec2_item,) = _run_instances(1, _script(EC2_SCRIPT, marker), {"role": "ec2-alpha"})
    gce.add_instance(ZONE, "vm-beta", {}, metadata={"role": "gce-beta"})
    (gce_item,) = gce.instances()
    gce_ip = gce_item["networkInterfaces"][0]["networkIP"]

    ec2_host = test_cloud.boot(
        ec2_item["InstanceId"],
        ec2_item["PrivateIpAddress"],
        _script(EC2_SCRIPT, marker),
        metadata=Ec2Metadata(moto_aws.url, REGION, ec2_item["InstanceId"]),
    )
    gce_host = test_cloud.boot(
        "vm-beta", gce_ip, _script(GCE_SCRIPT, marker), GceMetadata(gce, ZONE, "vm-beta")
    )

    # Each host read its own value, over the bridge from the root namespace.
    assert _fetch(ec2_host.private_ip, "role") == "ec2-alpha", ec2_host.log()
    assert _fetch(gce_host.private_ip, "role") == "gce-beta", gce_host.log()
    assert _fetch(ec2_host.private_ip, "without-credential") == "401"
    assert _fetch(gce_host.private_ip, "without-credential") == "403"
    assert _fetch(ec2_host.private_ip, "missing") == "404"
    assert _fetch(gce_host.private_ip, "missing") == "404"
    ec2_hostname = "ip-" + ec2_host.private_ip.replace(".", "-")
    assert _fetch(ec2_host.private_ip, "hostname") == ec2_hostname
    assert _fetch(gce_host.private_ip, "hostname") == "vm-beta"

    # /tmp is private: the host has its directory, the root namespace does not.
    assert not Path("/tmp", marker).exists()
    assert "role" in ec2_host.run(["ls", f"/tmp/{marker}"]).stdout
    kept = {path.split("/")[0] for path in kept_under_tmp()}  # the image, if under /tmp
    assert set(gce_host.run(["ls", "/tmp"]).stdout.split()) == {marker} | kept
    assert ec2_host.exit_code is None  # the script runs on (it execs the server)
    assert "[testcloud] running user data" in ec2_host.log()

    pids = ec2_host.pids() + gce_host.pids()
    assert len(pids) >= 4  # two PID-1s, two servers
    test_cloud.close()
    assert test_cloud.hosts == []
    assert _leftovers(test_cloud, pids) == []
    assert ec2_host.log_path.exists()  # logs outlive the hosts


def test_watch_ec2_boots_instances_and_a_later_tag_reaches_them(
    test_cloud: TestCloud, moto_aws: MotoServer
) -> None:
    items = _run_instances(2, _script(HEAD_TAG_SCRIPT), {"role": "node"})
    test_cloud.watch_ec2(moto_aws.url, REGION)
    hosts = [test_cloud.wait_for_host(item["InstanceId"]) for item in items]
    assert {h.private_ip for h in hosts} == {item["PrivateIpAddress"] for item in items}
    time.sleep(0.5)
    assert all("www" not in h.run(["ls", "/tmp"]).stdout for h in hosts)

    head = hosts[0].private_ip  # what the broker publishes once every node runs
    ids = [h.instance_id for h in hosts]
    _ec2().create_tags(Resources=ids, Tags=[{"Key": "gpubroker-head", "Value": head}])
    assert [_fetch(h.private_ip, "head") for h in hosts] == [head, head]

    # A terminated instance's host powers off; the other runs on; none boots twice.
    _ec2().terminate_instances(InstanceIds=[ids[1]])
    wait_for(lambda: hosts[1].halted, 10, "the terminated instance's host to halt")
    assert hosts[1].pids() == []
    time.sleep(0.5)
    assert [h.instance_id for h in test_cloud.hosts] == [ids[0]]
    assert test_cloud.errors == []


def test_watch_gce_boots_running_instances_and_halts_deleted_ones(
    test_cloud: TestCloud, gce: FakeGce
) -> None:
    gce.add_instance(
        ZONE, "vm-one", {}, metadata={"role": "one", "startup-script": _script(GCE_SCRIPT)}
    )
    test_cloud.watch_gce(GceRest(gce.url, gce.project))  # through the API, as a client would
    host = test_cloud.wait_for_host("vm-one")
    assert _fetch(host.private_ip, "role") == "one", host.log()

    request = urllib.request.Request(
        f"{gce.url}/compute/v1/projects/{gce.project}/zones/{ZONE}/instances/vm-one",
        method="DELETE",
    )
    with _NO_PROXY.open(request, timeout=10) as response:
        assert response.status == 200
    wait_for(lambda: host.halted, 10, "the deleted instance's host to halt")
    assert test_cloud.hosts == [] and test_cloud.errors == []


# Every node runs the same user data: node 0 starts the Ray head, the others wait for the
# head's address that the broker publishes as a tag, and join it.
RAY_SCRIPT = """#!/bin/bash
set -euo pipefail
imds=http://169.254.169.254/latest
token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' $imds/api/token)
get() { curl -sf -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/$1"; }
ip=$(get local-ipv4)
index=$(get tags/instance/gpubroker-node)
read -r -a extra <<< "${GPUBROKER_RAY_ARGS:-}"
common=(--node-ip-address="$ip" --disable-usage-stats "${extra[@]}")
if [ "$index" = 0 ]; then
  exec ray start --head --port=6390 --dashboard-host="$ip" --dashboard-port=8265 \\
    --include-dashboard=true "${common[@]}"
fi
until head=$(get tags/instance/gpubroker-head); do sleep 0.5; done
until ray start --address="$head:6390" "${common[@]}"; do sleep 1; done
"""


def _raylets(pids: list[int]) -> list[int]:
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                found.append(pid)
    return found


@pytest.mark.ray
def test_ray_head_and_worker_in_two_hosts_run_a_job_submitted_with_a_token(
    test_cloud: TestCloud, moto_aws: MotoServer
) -> None:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient

    token = secrets.token_hex(16)
    test_cloud.env.update(
        RAY_AUTH_MODE="token",  # the same for every ray command and driver of the cluster
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        GPUBROKER_RAY_ARGS="--num-cpus=1 --memory=1000000000 --object-store-memory=100000000",
    )
    head_item, worker_item = (
        _run_instances(1, RAY_SCRIPT, {"gpubroker-node": str(index)})[0] for index in (0, 1)
    )
    head_ip = head_item["PrivateIpAddress"]
    _ec2().create_tags(
        Resources=[head_item["InstanceId"], worker_item["InstanceId"]],
        Tags=[{"Key": "gpubroker-head", "Value": head_ip}],
    )
    test_cloud.watch_ec2(moto_aws.url, REGION)
    head = test_cloud.wait_for_host(head_item["InstanceId"])
    worker = test_cloud.wait_for_host(worker_item["InstanceId"])
    wait_for(
        lambda: head.exit_code is not None and worker.exit_code is not None,
        180,  # ~20 s on an idle machine; far more while other suites load its two cores
        "ray start on both hosts",
        interval=0.5,
    )
    assert (head.exit_code, worker.exit_code) == (0, 0), head.log() + worker.log()

    address = f"http://{head_ip}:8265"
    with pytest.raises(AuthenticationError):
        JobSubmissionClient(address)  # token authentication is on
    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    job = client.submit_job(
        entrypoint='python -c "import ray; ray.init(); print(len(ray.nodes()))"'
    )
    status = wait_for(
        lambda: (s := client.get_job_status(job)).is_terminal() and s, 180, "the job", 0.5
    )
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs
    assert logs.strip().splitlines()[-1] == "2", logs

    raylets = _raylets(head.pids() + worker.pids())
    assert len(raylets) == 2
    test_cloud.close()
    assert _raylets(raylets) == []
    ours = subprocess.run(["pgrep", "-a", "raylet"], capture_output=True, text=True).stdout
    assert f"--node_ip_address={head_ip} " not in ours
