"""Where the nodes of a launch sit on the network: default subnets and VPCs, and the
security group that opens a request's ports to the broker.

A request launched with ``ingress_cidr`` gets its own security group ``gpubroker-<id>``,
tagged with the request, in the VPC its nodes run in: TCP ``ports`` from the CIDR and all
traffic between the nodes. Found by name before it is made, so a retried launch reuses
it; a group of that name not tagged with the request is someone else's and stops the
launch. Only groups tagged with a request are ever deleted for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from broker.errors import ProviderError
from providers.aws import launch as ln
from providers.aws.errors import aws_call, error_code
from providers.base import TAG_REQUEST, LaunchRequest

PROVIDER = "aws"
_GONE_CODES = frozenset({"InvalidGroup.NotFound", "InvalidGroupId.NotFound"})


def default_subnet(ec2: Any, region: str, zone: str) -> dict[str, Any]:
    """The default subnet of ``zone``: where a node launched there without one lands."""
    with aws_call("DescribeSubnets", region, zone=zone):
        subnets = ec2.describe_subnets(
            Filters=[
                {"Name": "default-for-az", "Values": ["true"]},
                {"Name": "availability-zone", "Values": [zone]},
            ]
        ).get("Subnets", [])
    if not subnets:
        raise ProviderError(PROVIDER, f"no default subnet in {zone}")
    return dict(subnets[0])


def default_vpc(ec2: Any, region: str) -> str:
    """The region's default VPC: where a node launched with no zone or subnet lands."""
    with aws_call("DescribeVpcs", region):
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}]).get(
            "Vpcs", []
        )
    if not vpcs:
        raise ProviderError(PROVIDER, f"no default VPC in {region}")
    return str(vpcs[0]["VpcId"])


def _groups(ec2: Any, region: str, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with aws_call("DescribeSecurityGroups", region):
        return list(ec2.describe_security_groups(Filters=filters).get("SecurityGroups", []))


def default_group(ec2: Any, region: str, vpc_id: str) -> str:
    found = _groups(
        ec2,
        region,
        [{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": ["default"]}],
    )
    if not found:
        raise ProviderError(PROVIDER, f"no default security group in {vpc_id}")
    return str(found[0]["GroupId"])


def _named(ec2: Any, region: str, vpc_id: str, name: str) -> dict[str, Any] | None:
    found = _groups(
        ec2,
        region,
        [{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": [name]}],
    )
    return found[0] if found else None


def _create(ec2: Any, req: LaunchRequest, vpc_id: str, name: str) -> dict[str, Any] | None:
    """Make the group; None when one of that name appeared meanwhile (a lost reply)."""
    with aws_call("CreateSecurityGroup", req.region):
        try:
            made = ec2.create_security_group(
                GroupName=name,
                Description=f"gpubroker request {name}: broker ingress and gang traffic",
                VpcId=vpc_id,
                TagSpecifications=[{"ResourceType": "security-group", "Tags": ln.group_tags(req)}],
            )
        except Exception as exc:
            if error_code(exc) != "InvalidGroup.Duplicate":
                raise
            return None
    return {"GroupId": made["GroupId"], "GroupName": name, "Tags": ln.group_tags(req)}


def ensure_security_group(ec2: Any, req: LaunchRequest, vpc_id: str, cidr: str) -> str:
    """The request's security group in ``vpc_id``, with TCP ``req.ports`` open to ``cidr``
    and all traffic open between its members; its id."""
    name = ln.group_name(req.request_id)
    group = _named(ec2, req.region, vpc_id, name) or _create(ec2, req, vpc_id, name)
    group = group or _named(ec2, req.region, vpc_id, name)
    if group is None:
        raise ProviderError(PROVIDER, f"security group {name} in {req.region} did not appear")
    tags = {tag["Key"]: tag["Value"] for tag in group.get("Tags") or []}
    if tags.get(TAG_REQUEST) != req.request_id:
        raise ProviderError(
            PROVIDER, f"security group {name} in {vpc_id} exists but belongs to another request"
        )
    group_id = str(group["GroupId"])
    wanted = ln.ingress_permissions(group_id, cidr, req.ports)
    missing = ln.missing_permissions(wanted, group.get("IpPermissions") or [])
    if missing:
        with aws_call("AuthorizeSecurityGroupIngress", req.region):
            try:
                ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=missing)
            except Exception as exc:
                if error_code(exc) != "InvalidPermission.Duplicate":
                    raise
    return group_id


def request_groups(ec2: Any, region: str, request_id: str) -> list[str]:
    """The ids of the security groups tagged with ``request_id`` in ``region``."""
    found = _groups(ec2, region, [{"Name": f"tag:{TAG_REQUEST}", "Values": [request_id]}])
    return sorted(str(group["GroupId"]) for group in found)


def _try_delete(ec2: Any, region: str, group_id: str) -> bool:
    """Delete the group; False while instances still hold it (they are shutting down)."""
    with aws_call("DeleteSecurityGroup", region):
        try:
            ec2.delete_security_group(GroupId=group_id)
        except Exception as exc:
            code = error_code(exc)
            if code == "DependencyViolation":
                return False
            if code not in _GONE_CODES:
                raise
    return True


def delete_group(
    ec2: Any,
    region: str,
    group_id: str,
    waits: Sequence[float],
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Delete the group, trying again after each of ``waits`` seconds while it is in use."""
    for wait in (*waits, None):
        if _try_delete(ec2, region, group_id):
            return
        if wait is not None:
            sleep(wait)
    raise ProviderError(
        PROVIDER, f"security group {group_id} in {region} still in use", retryable=True
    )
