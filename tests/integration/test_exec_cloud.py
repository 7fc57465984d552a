"""A cloud allocation through the real boto3 client against moto: the nodes boot our
startup script, and are terminated and metered at the end (training runs locally)."""

# ruff: noqa: F811
from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from broker.db.engine import Database
from broker.db.models import UsageRow
from broker.domain import JobState
from broker.services import execution, runners
from providers.base import TAG_REQUEST
from tests.support.aws_price_list import aws_price_list, aws_price_list_server  # noqa: F401
from tests.support.execution import plan_allocation, submit
from tests.support.moto_server import (  # noqa: F401
    aws_provider,
    aws_settings,
    moto_aws,
    moto_server,
)


def test_aws_nodes_boot_the_startup_script_and_are_torn_down(
    aws_settings: Any, aws_provider: Any
) -> None:
    database = Database(aws_settings.database_url)
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

    state = execution.run_allocation(
        database, aws_settings, alloc_id, runner=runners.inprocess_runner
    )

    assert state is JobState.SUCCEEDED
    ec2 = aws_provider.client("ec2", "us-east-1")
    request_id = execution.request_id_for(aws_settings, alloc_id)
    found = ec2.describe_instances(Filters=[{"Name": f"tag:{TAG_REQUEST}", "Values": [request_id]}])
    instances = [i for r in found["Reservations"] for i in r["Instances"]]
    assert len(instances) == 2
    assert {i["State"]["Name"] for i in instances} <= {"shutting-down", "terminated"}
    attribute = ec2.describe_instance_attribute(
        InstanceId=instances[0]["InstanceId"], Attribute="userData"
    )
    script = base64.b64decode(attribute["UserData"]["Value"]).decode()
    assert script.startswith("#!/bin/bash") and "ray start --head" in script
    assert f"gpubroker-{execution.cluster_key(alloc_id)}" in script
    with database.session() as session:
        usage = session.scalars(select(UsageRow)).all()
    assert len(usage) == 2
    assert all(u.price_per_hour == Decimal("1.006") and u.provider == "aws" for u in usage)
    database.dispose()
