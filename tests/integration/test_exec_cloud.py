"""A cloud allocation through the real boto3 client against moto, without hosts behind it.

The nodes get the boot script with instance-metadata tags enabled, the broker publishes
the head's address as a tag, and a head that never answers fails the job after the
bounded wait with the reason, leaving nothing running. A launch without an ingress CIDR
is refused before anything is made. (Hosts that boot for real: tests/integration/
test_cloud_hosts.py.)"""

# ruff: noqa: F811
from __future__ import annotations

import base64
import dataclasses
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from broker.db.engine import Database
from broker.db.models import InstanceRow, UsageRow
from broker.domain import JobState
from broker.errors import ConfigError
from broker.services.execution.executor import run_allocation
from broker.services.execution.provision import request_id_for
from broker.services.execution.run_context import cluster_key
from broker.services.jobs import store as jobs
from providers.base import META_HEAD, TAG_REQUEST
from tests.support.aws_price_list import aws_price_list, aws_price_list_server  # noqa: F401
from tests.support.execution import plan_allocation, submit
from tests.support.moto_server import (  # noqa: F401
    aws_provider,
    aws_settings,
    moto_aws,
    moto_server,
)


def _plan(database: Database) -> tuple[int, int]:
    job_id = submit(database, constraints={"providers": ["aws"]})
    alloc_id = plan_allocation(
        database,
        job_id,
        provider="aws",
        region="us-east-1",
        zone="us-east-1b",
        instance_type="g5.xlarge",
        nodes=2,
        price=Decimal("1.006"),
    )
    return job_id, alloc_id


def _instances(
    aws_provider: Any, settings: Any, db: Database, alloc_id: int
) -> list[dict[str, Any]]:
    ec2 = aws_provider.client("ec2", "us-east-1")
    request_id = request_id_for(db, settings, alloc_id)
    found = ec2.describe_instances(Filters=[{"Name": f"tag:{TAG_REQUEST}", "Values": [request_id]}])
    return [i for r in found["Reservations"] for i in r["Instances"]]


def test_a_cloud_launch_without_an_ingress_cidr_is_refused(
    aws_settings: Any, aws_provider: Any
) -> None:
    database = Database(aws_settings.database_url)
    job_id, alloc_id = _plan(database)
    with pytest.raises(ConfigError, match="GPUBROKER_INGRESS_CIDR: required to launch on aws"):
        run_allocation(database, aws_settings, alloc_id)
    assert jobs.get(database, job_id).state is JobState.PLANNED  # nothing half-done
    with database.session() as session:
        assert session.scalars(select(InstanceRow)).all() == []
    assert _instances(aws_provider, aws_settings, database, alloc_id) == []
    database.dispose()


def test_an_unreachable_head_fails_the_job_and_nothing_is_left(
    aws_settings: Any, aws_provider: Any
) -> None:
    settings = dataclasses.replace(
        aws_settings,
        ingress_cidr="203.0.113.7/32",
        head_timeout_s=2.0,
        cluster_network="private",
    )
    database = Database(settings.database_url)
    job_id, alloc_id = _plan(database)

    state = run_allocation(database, settings, alloc_id)

    assert state is JobState.FAILED
    message = jobs.get(database, job_id).message or ""
    assert "did not answer within 2 s" in message and ":8265" in message
    instances = _instances(aws_provider, settings, database, alloc_id)
    assert len(instances) == 2
    assert {i["State"]["Name"] for i in instances} <= {"shutting-down", "terminated"}
    head = next(i for i in instances if {"Key": "gpubroker-node", "Value": "0"} in i["Tags"])
    for instance in instances:  # every node was told where its head is
        assert {"Key": META_HEAD, "Value": head["PrivateIpAddress"]} in instance["Tags"]
        assert instance["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
    ec2 = aws_provider.client("ec2", "us-east-1")
    attribute = ec2.describe_instance_attribute(
        InstanceId=instances[0]["InstanceId"], Attribute="userData"
    )
    script = base64.b64decode(attribute["UserData"]["Value"]).decode()
    assert script.startswith("#!/bin/bash") and "start --head" in script
    assert "RAY_AUTH_MODE=token" in script
    assert f"gpubroker-{cluster_key(alloc_id)}" in script
    with database.session() as session:
        usage = session.scalars(select(UsageRow)).all()
    assert len(usage) == 2  # the nodes ran, so they are billed, at the launch price
    assert all(u.price_per_hour == Decimal("1.006") and u.provider == "aws" for u in usage)
    database.dispose()
