"""The AWS target: the real boto3 client against moto's server, faults via botocore hooks.

Injected faults answer in place of the server with the error AWS would send, each message
echoing the canary secret as a misbehaving endpoint might, so the adapter's translation
is what keeps it out of our errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from tests.conformance.harness import CANARIES, Target

REGION = "us-east-1"
ZONE = "us-east-1a"
INSTANCE_TYPE = "g5.xlarge"  # one A10G, no EFA: plain RunInstances per node
ECHO = f"Request signed with {CANARIES['AWS_SECRET_ACCESS_KEY']} was refused."

# kind -> (operation or None for every EC2 call, error code, HTTP status)
FAULTS: dict[str, tuple[str | None, str, int]] = {
    "capacity": ("RunInstances", "InsufficientInstanceCapacity", 500),
    "quota": ("RunInstances", "VcpuLimitExceeded", 400),
    "auth": (None, "AuthFailure", 401),
    "throttle": (None, "RequestLimitExceeded", 503),
    "server": (None, "InternalError", 500),
}


class _EveryCall:
    """Answer every EC2 request from the ``from_call``-th on with ``code``."""

    def __init__(self, operation: str | None, code: str, status: int, from_call: int = 1):
        self.event = f"before-send.ec2.{operation}" if operation else "before-send.ec2"
        self.code, self.status, self.from_call = code, status, from_call
        self.calls = 0

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        from tests.support.aws_faults import error_response

        self.calls += 1
        if self.calls >= self.from_call:
            return error_response("ec2", self.code, ECHO, self.status)
        return None


def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    from providers.aws import create
    from tests.support.aws_faults import inject

    settings = request.getfixturevalue("aws_settings")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for key, value in CANARIES.items():  # moto signs nothing: any credential works
        monkeypatch.setenv(key, value)
    provider = create(replace(settings, aws_max_attempts=2))

    def fault(kind: str, from_call: int = 1) -> Any:
        operation, code, status = FAULTS[kind]
        return inject(provider, _EveryCall(operation, code, status, from_call))

    def foreign() -> str:
        ec2 = provider.client("ec2", REGION)
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        made = ec2.run_instances(
            ImageId=image, InstanceType=INSTANCE_TYPE, MinCount=1, MaxCount=1,
            Placement={"AvailabilityZone": ZONE},
        )  # fmt: skip
        return str(made["Instances"][0]["InstanceId"])

    yield Target(
        name="aws",
        provider=provider,
        region=REGION,
        zone=ZONE,
        instance_type=INSTANCE_TYPE,
        capacity_fault=lambda k: fault("capacity", from_call=k),
        failures={kind: (lambda kind=kind: fault(kind)) for kind in FAULTS},
        foreign=foreign,
    )
