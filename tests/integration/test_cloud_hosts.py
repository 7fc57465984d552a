"""Cloud allocations on hosts that boot for real (tests/support/testcloud).

Each instance the AWS adapter launches on moto boots as a host of its own: a network
namespace with the instance's private address, running the generated boot script
unmodified against an instance-metadata service that answers from moto. The broker
publishes the head's address as a tag, the hosts form the Ray cluster, and the broker
reaches the head over the bridge only. On that cluster:
- a user ``train:`` loop and a SkyPilot ``run:`` script run on both nodes;
- the bundled GPT checkpoints to moto's S3, loses a node mid-run (terminated on EC2, its
  host powered off), goes back to PENDING with its zone cooled down, and resumes from
  S3 on two new nodes in another zone;
and every host, namespace and process is gone afterwards.
"""

# ruff: noqa: F811
from __future__ import annotations

import dataclasses
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import select

from broker.config import Settings
from broker.db.engine import Database
from broker.db.models import InstanceRow
from broker.domain import JobState
from broker.services.execution.executor import run_allocation
from broker.services.execution.run_context import run_dir
from broker.services.jobs import store as jobs
from tests.support.aws_price_list import aws_price_list, aws_price_list_server  # noqa: F401
from tests.support.execution import plan_allocation, tiny_spec
from tests.support.moto_server import (  # noqa: F401
    aws_provider,
    aws_settings,
    moto_aws,
    moto_server,
)
from tests.support.relay import Relay
from tests.support.testcloud import TestCloud
from tests.support.testcloud.fixtures import test_cloud  # noqa: F401
from workloads.spec import parse_spec

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
BUCKET = "gpubroker-checkpoints"
# Each host is this machine: Ray must not count all of its memory once per host.
RAY_ARGS = "--num-cpus=1 --memory=1500000000 --object-store-memory=100000000"


@pytest.fixture
def cloud_settings(aws_settings: Settings, moto_aws: Any, test_cloud: TestCloud) -> Any:
    """Settings that reach heads over the bridge, hosts that reach moto's S3 through a
    relay on the gateways, a bucket for checkpoints; moto's instances boot as hosts."""
    gateways = [str(address) for address in test_cloud.gateways.values()]
    host, port = moto_aws.url.removeprefix("http://").split(":")
    # moto gives an instance launched outside a subnet a 10.x address: that subnet's
    # gateway is where the hosts see this machine, and where the broker's traffic comes from.
    gateway = next(str(g) for net, g in test_cloud.gateways.items() if str(net) == "10.0.0.0/8")
    with Relay(gateways, (host, int(port))) as relay:
        test_cloud.env.update(
            GPUBROKER_RAY_ARGS=RAY_ARGS,
            OMP_NUM_THREADS="1",
            AWS_ENDPOINT_URL=f"http://{gateway}:{relay.port}",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        for region in ("us-east-1",):
            test_cloud.watch_ec2(moto_aws.url, region)
        yield dataclasses.replace(
            aws_settings,
            ingress_cidr=f"{gateway}/32",
            cluster_network="private",
            head_timeout_s=240.0,
        )


def _submit(database: Database, spec: dict[str, Any], settings: Settings) -> int:
    prepared = jobs.prepare(parse_spec(spec), settings)
    return jobs.submit(database, prepared).id


def _plan(database: Database, job_id: int, zone: str) -> int:
    return plan_allocation(
        database,
        job_id,
        provider="aws",
        region="us-east-1",
        zone=zone,
        instance_type="m5.large",
        nodes=2,
        price=Decimal("0.096"),
    )


def _output(settings: Settings, job_id: int) -> str:
    path = run_dir(settings, job_id) / "output.log"
    return path.read_text() if path.exists() else ""


def _assert_all_gone(test_cloud: TestCloud) -> None:
    deadline = time.monotonic() + 30
    while test_cloud.hosts and time.monotonic() < deadline:
        time.sleep(0.2)
    assert test_cloud.hosts == []


def test_user_code_runs_on_booted_hosts(cloud_settings: Any, test_cloud: TestCloud) -> None:
    settings = cloud_settings
    database = Database(settings.database_url)
    train_job = _submit(
        database,
        {
            "name": "own-loop",
            "train": "loop:train_fn",
            "workdir": str(REPO / "examples" / "user-train"),
            "nodes": 2,
            "storage": f"s3://{BUCKET}/own",
            "constraints": {"providers": ["aws"]},
        },
        settings,
    )
    state = run_allocation(database, settings, _plan(database, train_job, "us-east-1a"))
    assert state is JobState.SUCCEEDED, jobs.get(database, train_job).message
    assert "rank 0 of 2: loss" in _output(settings, train_job)
    listed = boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket=BUCKET)
    assert any(o["Key"].endswith("meta.json") for o in listed.get("Contents", []))

    task = _submit(
        database,
        {
            "name": "sky-task",
            "num_nodes": 2,
            "resources": {"cloud": "aws"},
            "setup": "echo setting up on $(hostname -I | cut -d' ' -f1)",
            "run": 'echo "rank $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES, '
            'head $GPUBROKER_HEAD_IP"',
        },
        settings,
    )
    state = run_allocation(database, settings, _plan(database, task, "us-east-1b"))
    assert state is JobState.SUCCEEDED, jobs.get(database, task).message
    output = _output(settings, task)
    (cluster,) = [e.payload["nodes"] for e in jobs.events(database, task) if e.kind == "cluster"]
    head, worker = cluster  # the hosts' own private addresses, as Ray saw them
    assert f"[node 0] setting up on {head}" in output
    assert f"[node 1] setting up on {worker}" in output
    assert f"[node 0] rank 0 of 2, head {head}" in output
    assert f"[node 1] rank 1 of 2, head {head}" in output
    # As on SkyPilot, run starts once setup has finished on every node.
    setups = [output.index(f"[node {r}] setting up") for r in (0, 1)]
    runs = [output.index(f"[node {r}] rank {r} of 2") for r in (0, 1)]
    assert max(setups) < min(runs)
    _assert_all_gone(test_cloud)
    database.dispose()


def test_a_lost_node_resumes_from_s3_in_another_zone(
    cloud_settings: Any, test_cloud: TestCloud
) -> None:
    settings = cloud_settings
    database = Database(settings.database_url)
    job_id = _submit(
        database,
        tiny_spec(
            steps=200,
            checkpoint_every=50,
            nodes=2,
            storage=f"s3://{BUCKET}/gpt",
            constraints={"providers": ["aws"]},
        ),
        settings,
    )
    first = _plan(database, job_id, "us-east-1a")
    result: dict[str, JobState] = {}
    runner = threading.Thread(
        target=lambda: result.update(state=run_allocation(database, settings, first))
    )
    runner.start()
    deadline = time.monotonic() + 240
    while '"checkpoint": true' not in _output(settings, job_id):
        assert runner.is_alive() and time.monotonic() < deadline, _output(settings, job_id)
        time.sleep(0.5)
    ec2 = boto3.client("ec2", region_name="us-east-1")
    with database.session() as session:
        lost = list(
            session.scalars(
                select(InstanceRow.provider_instance_id).where(
                    InstanceRow.allocation_id == first, InstanceRow.node_index == 1
                )
            )
        )
    ec2.terminate_instances(InstanceIds=lost)  # the cloud takes a node away
    runner.join(timeout=180)
    assert result.get("state") is JobState.PENDING, jobs.get(database, job_id).message

    second = _plan(database, job_id, "us-east-1b")
    state = run_allocation(database, settings, second)
    assert state is JobState.SUCCEEDED, jobs.get(database, job_id).message
    events = jobs.events(database, job_id)
    restored = [e.payload["step"] for e in events if e.kind == "restored"]
    assert restored and restored[-1] >= 50  # resumed from S3, not from scratch
    assert any(e.kind == "progress" and e.payload.get("step") == 200 for e in events)
    _assert_all_gone(test_cloud)
    database.dispose()


def test_a_gcp_gang_boots_forms_its_cluster_and_runs_a_task(
    gce: Any, home: Path, test_cloud: TestCloud
) -> None:
    gateway = next(str(g) for net, g in test_cloud.gateways.items() if str(net) == "10.0.0.0/8")
    test_cloud.env.update(GPUBROKER_RAY_ARGS=RAY_ARGS)
    test_cloud.watch_gce(gce)
    settings = gce.settings(
        home,
        GPUBROKER_INGRESS_CIDR=f"{gateway}/32",
        GPUBROKER_CLUSTER_NETWORK="private",
        GPUBROKER_HEAD_TIMEOUT_S="240",
    )
    database = Database(settings.database_url)
    task = _submit(
        database,
        {"num_nodes": 2, "resources": {"cloud": "gcp"}, "run": "echo rank $SKYPILOT_NODE_RANK"},
        settings,
    )
    alloc_id = plan_allocation(
        database,
        task,
        provider="gcp",
        region="us-central1",
        zone="us-central1-a",
        instance_type="n1-standard-4",
        nodes=2,
        price=Decimal("0.19"),
    )
    state = run_allocation(database, settings, alloc_id)
    assert state is JobState.SUCCEEDED, jobs.get(database, task).message
    output = _output(settings, task)
    assert "[node 0] rank 0" in output and "[node 1] rank 1" in output
    (cluster,) = [e.payload["nodes"] for e in jobs.events(database, task) if e.kind == "cluster"]
    assert all(node.startswith("10.128.") for node in cluster)  # the fake GCE's networkIPs
    assert gce.firewalls() == []  # the request's ingress rules went with its last node
    _assert_all_gone(test_cloud)
    database.dispose()
