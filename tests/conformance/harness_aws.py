"""The AWS target: the real boto3 client against moto's server, faults via botocore hooks.

Injected faults answer in place of the server with the error AWS would send, each message
echoing the canary secret as a misbehaving endpoint might, so the adapter's translation
is what keeps it out of our errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from providers.base import TAG_REQUEST
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


@dataclass
class AwsCloud:
    """moto's server and the price list for the session, and one provider over them
    (made on first use, so its clients pick up the per-test environment)."""

    environment: dict[str, str]
    settings: Any
    provider: Any = None


@pytest.fixture(scope="session")
def aws_cloud(
    moto_server: Any, aws_price_list_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> AwsCloud:
    from broker.config import load_settings
    from tests.support.moto_server import aws_environment

    root = tmp_path_factory.mktemp("aws-conformance")
    environment = {
        **aws_environment(moto_server.url, root / "no-aws"),
        **CANARIES,  # moto checks no signature: the canaries are the credentials
    }
    settings = load_settings(
        {
            "GPUBROKER_HOME": str(root / "home"),
            "GPUBROKER_AWS_PRICE_LIST_URL": aws_price_list_server.url,
            "GPUBROKER_AWS_REGIONS": REGION,
            "GPUBROKER_AWS_MAX_ATTEMPTS": "1",  # retries are not what this suite checks
        }
    )
    return AwsCloud(environment, settings)


class _LostReply:
    """RunInstances is carried out, then its reply is lost on the way back."""

    event = "after-call.ec2.RunInstances"

    def __call__(self, **kwargs: Any) -> None:
        from botocore.exceptions import ReadTimeoutError

        raise ReadTimeoutError(endpoint_url="http://injected.invalid/")


def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    from providers.aws import create
    from tests.support.aws_faults import inject

    cloud: AwsCloud = request.getfixturevalue("aws_cloud")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in cloud.environment.items():
        monkeypatch.setenv(key, value)
    if cloud.provider is None:
        cloud.provider = create(cloud.settings)
    provider = cloud.provider

    def fault(kind: str, from_call: int = 1) -> Any:
        operation, code, status = FAULTS[kind]
        return inject(provider, _EveryCall(operation, code, status, from_call))

    def ingress(request_id: str) -> list[str]:
        ec2 = provider.client("ec2", REGION)
        groups = ec2.describe_security_groups(
            Filters=[{"Name": f"tag:{TAG_REQUEST}", "Values": [request_id]}]
        )["SecurityGroups"]
        return sorted(rule for group in groups for rule in _rules(group))

    def foreign() -> str:
        ec2 = provider.client("ec2", REGION)
        made = ec2.run_instances(
            ImageId="ami-0123456789abcdef0",
            InstanceType=INSTANCE_TYPE,
            MinCount=1,
            MaxCount=1,
            Placement={"AvailabilityZone": ZONE},
        )
        return str(made["Instances"][0]["InstanceId"])

    yield Target(
        name="aws",
        provider=provider,
        region=REGION,
        zone=ZONE,
        instance_type=INSTANCE_TYPE,
        capacity_fault=lambda k: fault("capacity", from_call=k),
        failures={kind: (lambda kind=kind: fault(kind)) for kind in FAULTS},
        lost_reply=lambda: inject(provider, _LostReply()),
        foreign=foreign,
        ingress=ingress,
    )


def _rules(group: dict[str, Any]) -> list[str]:
    """A security group's ingress rules in the words of ``Target.ingress``."""
    lines: list[str] = []
    for permission in group["IpPermissions"]:
        protocol = permission["IpProtocol"]
        opened = "all" if protocol == "-1" else f"{protocol}:{permission.get('FromPort')}"
        sources = [f"from {cidr['CidrIp']}" for cidr in permission.get("IpRanges", [])]
        sources += [
            f"from {'gang' if pair['GroupId'] == group['GroupId'] else pair['GroupId']}"
            for pair in permission.get("UserIdGroupPairs", [])
        ]
        lines += [f"{opened} {source}" for source in sources]
    return lines
