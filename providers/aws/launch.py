"""The pieces of an EC2 launch: idempotency tokens, tags, network interfaces, security
group rules, records.

Pure helpers; ``provider.AwsProvider.launch`` strings them together with the calls.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.domain import InstanceState, Pricing, as_utc
from providers.aws.instance_types import GpuShape
from providers.base import (
    TAG_INSTALLATION,
    TAG_OWNER,
    TAG_REQUEST,
    InstanceRecord,
    LaunchRequest,
    request_tags,
)

PROVIDER = "aws"
_TOKEN_MAX = 64  # EC2 ClientToken: at most 64 ASCII characters
_GROUP_NAME = re.compile(r"[^A-Za-z0-9._-]")

# The Deep Learning Base AMI (NVIDIA driver, CUDA, EFA) resolved by EC2 itself at launch.
DEFAULT_IMAGE = (
    "resolve:ssm:/aws/service/deeplearning/ami/{arch}/"
    "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)

_STATES: Mapping[str, InstanceState] = {
    "pending": InstanceState.PENDING,
    "running": InstanceState.RUNNING,
    "shutting-down": InstanceState.TERMINATING,
    "terminated": InstanceState.TERMINATED,
    # We never stop nodes: a stopped one is of no use to a job.
    "stopping": InstanceState.FAILED,
    "stopped": InstanceState.FAILED,
}
GONE = frozenset({InstanceState.TERMINATING, InstanceState.TERMINATED, InstanceState.PREEMPTED})
LISTED_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")
# States in which an instance still holds its security group.
HOLDING_STATES = ("pending", "running", "stopping", "stopped")
# A node reads its tags (``gpubroker-node``, ``gpubroker-head``) from the metadata service.
METADATA_OPTIONS = {
    "HttpTokens": "required",
    "HttpEndpoint": "enabled",
    "InstanceMetadataTags": "enabled",
}


@dataclass(frozen=True)
class NodePlan:
    """Where and how the nodes of one launch call run (the same for every node)."""

    image: str
    zone: str | None = None
    placement_group: str | None = None
    interfaces: list[dict[str, Any]] | None = None  # EFA: they carry subnet and group
    security_group: str | None = None


def client_token(request_id: str, node: int, generation: int = 0) -> str:
    """EC2's idempotency key for one node of a request.

    ``generation`` counts earlier nodes of the same index that are gone: EC2 keeps
    answering a used token with the instance it made, even after it is terminated, so a
    relaunch needs a fresh token.
    """
    token = f"{request_id}:{node}:{generation}"
    if len(token) <= _TOKEN_MAX and token.isascii() and token.isprintable():
        return token
    digest = hashlib.sha256(request_id.encode()).hexdigest()[:40]
    return f"{digest}:{node}:{generation}"


def group_name(request_id: str) -> str:
    """The request's placement group and security group name: ``gpubroker-<request id>``
    with what neither accepts replaced (a hash when too long)."""
    name = "gpubroker-" + _GROUP_NAME.sub("-", request_id)
    if len(name) <= 255:
        return name
    return "gpubroker-" + hashlib.sha256(request_id.encode()).hexdigest()


def default_image(shape: GpuShape | None) -> str:
    arch = "arm64" if shape is not None and "arm64" in shape.architectures else "x86_64"
    return DEFAULT_IMAGE.format(arch=arch)


def node_tags(req: LaunchRequest, node: int) -> list[dict[str, str]]:
    tags = request_tags(req, node)
    tags.setdefault("Name", f"gpubroker-{req.request_id}-{node}")
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def efa_interfaces(shape: GpuShape, subnet_id: str, group_id: str) -> list[dict[str, Any]]:
    """One EFA interface per network card (card 0 is the primary device)."""
    count = max(1, min(shape.efa_interfaces or 1, shape.network_cards))
    return [
        {
            "NetworkCardIndex": card,
            "DeviceIndex": 0 if card == 0 else 1,
            "InterfaceType": "efa",
            "SubnetId": subnet_id,
            "Groups": [group_id],
            "DeleteOnTermination": True,
        }
        for card in range(count)
    ]


def group_tags(req: LaunchRequest) -> list[dict[str, str]]:
    """The tags of the groups made for a request: how terminate knows they are its own."""
    tags = [{"Key": TAG_OWNER, "Value": req.owner}, {"Key": TAG_REQUEST, "Value": req.request_id}]
    if req.installation:
        tags.append({"Key": TAG_INSTALLATION, "Value": req.installation})
    return tags


def ingress_permissions(group_id: str, cidr: str, ports: Iterable[int]) -> list[dict[str, Any]]:
    """TCP ``ports`` from ``cidr``, and every protocol between members of the group."""
    permissions: list[dict[str, Any]] = [
        {
            "IpProtocol": "tcp",
            "FromPort": port,
            "ToPort": port,
            "IpRanges": [{"CidrIp": cidr}],
        }
        for port in sorted(set(ports))
    ]
    permissions.append({"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]})
    return permissions


def _permission_keys(permissions: Iterable[Mapping[str, Any]]) -> set[tuple[Any, ...]]:
    """One comparable key per (protocol, ports, source) of ``IpPermissions``."""
    keys: set[tuple[Any, ...]] = set()
    for permission in permissions:
        protocol = str(permission.get("IpProtocol"))
        ports = (
            (None, None)
            if protocol == "-1"
            else (permission.get("FromPort"), permission.get("ToPort"))
        )
        for cidr in permission.get("IpRanges") or []:
            keys.add((protocol, *ports, "cidr", cidr.get("CidrIp")))
        for pair in permission.get("UserIdGroupPairs") or []:
            keys.add((protocol, *ports, "group", pair.get("GroupId")))
    return keys


def missing_permissions(
    wanted: list[dict[str, Any]], existing: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Those of ``wanted`` the group lacks (EC2 refuses a call repeating any rule)."""
    have = _permission_keys(existing)
    return [p for p in wanted if not _permission_keys([p]) <= have]


def run_params(req: LaunchRequest, node: int, generation: int, plan: NodePlan) -> dict[str, Any]:
    tags = node_tags(req, node)
    params: dict[str, Any] = {
        "ImageId": plan.image,
        "InstanceType": req.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": client_token(req.request_id, node, generation),
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": dict(METADATA_OPTIONS),
    }
    placement: dict[str, str] = {}
    if plan.interfaces:
        params["NetworkInterfaces"] = plan.interfaces  # the subnet fixes the zone
    else:
        if plan.zone:
            placement["AvailabilityZone"] = plan.zone
        if plan.security_group:
            params["SecurityGroupIds"] = [plan.security_group]
    if plan.placement_group:
        placement["GroupName"] = plan.placement_group
    if placement:
        params["Placement"] = placement
    if req.user_data:
        params["UserData"] = req.user_data
    if req.pricing == Pricing.SPOT:
        params["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            },
        }
    return params


def instance_record(item: Mapping[str, Any], region: str) -> InstanceRecord:
    tags = {tag["Key"]: tag["Value"] for tag in item.get("Tags") or []}
    state = _STATES.get(str((item.get("State") or {}).get("Name")), InstanceState.FAILED)
    reason = str((item.get("StateReason") or {}).get("Code") or "")
    if state in (InstanceState.TERMINATING, InstanceState.TERMINATED) and "Spot" in reason:
        state = InstanceState.PREEMPTED
    launched = item.get("LaunchTime")
    return InstanceRecord(
        provider=PROVIDER,
        instance_id=str(item["InstanceId"]),
        region=region,
        zone=(item.get("Placement") or {}).get("AvailabilityZone"),
        instance_type=str(item.get("InstanceType", "")),
        state=state,
        pricing=Pricing.SPOT if item.get("InstanceLifecycle") == "spot" else Pricing.ON_DEMAND,
        address=item.get("PublicIpAddress") or item.get("PrivateIpAddress"),
        launched_at=as_utc(launched) if launched is not None else None,
        tags=tags,
        private_address=item.get("PrivateIpAddress"),
    )
