"""AWS launches through the real boto3 client against moto.

moto has no ClientToken idempotency, so a launch that never doubles proves our own tag
lookup; capacity, quota, auth and throttling faults are injected (moto cannot make them).
"""

from __future__ import annotations

import base64
import traceback
from typing import Any

import pytest

from broker.domain import InstanceState, Pricing
from broker.errors import AuthError, OutOfCapacity, ProviderError, QuotaExceeded, Throttled
from providers.aws.launch import group_name
from providers.base import (
    META_HEAD,
    TAG_ALLOCATION,
    TAG_JOB,
    TAG_NODE,
    TAG_OWNER,
    TAG_REQUEST,
    LaunchRequest,
)
from tests.support.aws_faults import Answer, FailCalls, LoseResponse, Throttle, inject

CANARY = "CANARY-aws-S3cr3t-7f1e"
OPEN = {"ingress_cidr": "203.0.113.0/24", "ports": (6390, 8265)}


def _request(request_id: str = "alloc-1", **changes: Any) -> LaunchRequest:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "region": "us-east-1",
        "zone": "us-east-1b",
        "instance_type": "g5.xlarge",
        "nodes": 2,
        "tags": {TAG_JOB: "11", TAG_ALLOCATION: "21"},
    }
    fields.update(changes)
    return LaunchRequest(**fields)


def _live_for_request(provider: Any, request_id: str, region: str = "us-east-1") -> list[str]:
    """What EC2 itself holds for the request, asked with a plain boto3 call."""
    ec2 = provider.client("ec2", region)
    answer = ec2.describe_instances(
        Filters=[
            {"Name": f"tag:{TAG_REQUEST}", "Values": [request_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    return sorted(i["InstanceId"] for r in answer["Reservations"] for i in r["Instances"])


def _groups(provider: Any, request_id: str) -> list[dict[str, Any]]:
    """The security groups EC2 holds tagged with the request."""
    return provider.client("ec2", "us-east-1").describe_security_groups(
        Filters=[{"Name": f"tag:{TAG_REQUEST}", "Values": [request_id]}]
    )["SecurityGroups"]


@pytest.fixture
def run_params(aws_provider: Any) -> list[dict[str, Any]]:
    """The parameters of every RunInstances call (observed, not altered)."""
    seen: list[dict[str, Any]] = []

    def observe(params: dict[str, Any], **kwargs: Any) -> None:
        seen.append(dict(params))

    aws_provider.register_event("provide-client-params.ec2.RunInstances", observe)
    return seen


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.retries import standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, ctx: 0.0)


def test_the_same_request_twice_never_doubles_nodes(aws_provider: Any) -> None:
    req = _request()
    first = aws_provider.launch(req)
    again = aws_provider.launch(req)
    assert [r.instance_id for r in first] == [r.instance_id for r in again]
    assert [r.node_index for r in first] == [0, 1]
    assert _live_for_request(aws_provider, "alloc-1") == sorted(r.instance_id for r in first)
    for record in first:
        assert record.zone == "us-east-1b" and record.instance_type == "g5.xlarge"
        assert record.tags[TAG_JOB] == "11" and record.tags[TAG_ALLOCATION] == "21"
        assert record.state in (InstanceState.PENDING, InstanceState.RUNNING)


def test_only_missing_nodes_are_created_with_fresh_tokens(
    aws_provider: Any, run_params: list[dict[str, Any]]
) -> None:
    req = _request(nodes=3)
    first = aws_provider.launch(req)
    aws_provider.terminate([first[1].instance_id], req.request_id)
    run_params.clear()
    second = aws_provider.launch(req)
    assert second[0].instance_id == first[0].instance_id
    assert second[2].instance_id == first[2].instance_id
    assert second[1].instance_id != first[1].instance_id
    assert len(run_params) == 1
    tags = {t["Key"]: t["Value"] for t in run_params[0]["TagSpecifications"][0]["Tags"]}
    assert tags[TAG_NODE] == "1"
    # Node 1's first token is spent on a node that is gone: the relaunch uses a new one.
    assert run_params[0]["ClientToken"] == "alloc-1:1:1"
    assert len(_live_for_request(aws_provider, "alloc-1")) == 3


def test_gang_is_all_or_nothing(aws_provider: Any) -> None:
    req = _request("gang-1", nodes=3)
    with (
        inject(aws_provider, FailCalls("RunInstances", on_calls={3})) as fault,
        pytest.raises(OutOfCapacity) as caught,
    ):
        aws_provider.launch(req)
    assert fault.failed == 1
    assert caught.value.zone == "us-east-1b" and "us-east-1b" in str(caught.value)
    assert _live_for_request(aws_provider, "gang-1") == []
    # Capacity back: the same request converges to a full gang.
    nodes = aws_provider.launch(req)
    assert [n.node_index for n in nodes] == [0, 1, 2]
    assert len(_live_for_request(aws_provider, "gang-1")) == 3


def test_a_gang_rollback_takes_nodes_from_an_earlier_attempt_too(aws_provider: Any) -> None:
    single = _request("gang-2", nodes=1)
    aws_provider.launch(single)
    bigger = _request("gang-2", nodes=3)
    with (
        inject(aws_provider, FailCalls("RunInstances", on_calls={2})),
        pytest.raises(OutOfCapacity),
    ):
        aws_provider.launch(bigger)
    assert _live_for_request(aws_provider, "gang-2") == []


def test_a_lost_answer_then_a_retry_never_doubles(aws_provider: Any) -> None:
    req = _request("lost-1", nodes=1, gang=False)
    with (
        inject(aws_provider, LoseResponse("RunInstances", on_calls={1})) as fault,
        pytest.raises(ProviderError) as caught,
    ):
        aws_provider.launch(req)
    assert fault.lost == 1 and caught.value.retryable
    made = _live_for_request(aws_provider, "lost-1")
    assert len(made) == 1  # the cloud made the node although the call failed
    (node,) = aws_provider.launch(req)
    assert [node.instance_id] == made == _live_for_request(aws_provider, "lost-1")


def test_a_gang_rollback_also_finds_a_node_whose_answer_was_lost(aws_provider: Any) -> None:
    req = _request("lost-2", nodes=3)
    with (
        inject(aws_provider, LoseResponse("RunInstances", on_calls={2})),
        pytest.raises(ProviderError),
    ):
        aws_provider.launch(req)
    assert _live_for_request(aws_provider, "lost-2") == []


def test_efa_gang_gets_efa_interfaces_and_degrades_without_placement_groups(
    aws_provider: Any, run_params: list[dict[str, Any]]
) -> None:
    req = _request("efa-1", instance_type="p5.48xlarge", zone=None)
    nodes = aws_provider.launch(req)
    # No zone asked for: the gang goes, whole, to the first zone offering the type.
    assert {n.zone for n in nodes} == {"us-east-1a"}
    first = run_params[0]
    interfaces = first["NetworkInterfaces"]
    assert len(interfaces) == 32 and {i["InterfaceType"] for i in interfaces} == {"efa"}
    subnet = aws_provider.client("ec2", "us-east-1").describe_subnets(
        SubnetIds=[interfaces[0]["SubnetId"]]
    )["Subnets"][0]
    assert subnet["AvailabilityZone"] == "us-east-1a"
    # moto has no placement groups: the gang launched without one, and said so.
    assert "GroupName" not in first.get("Placement", {})
    assert any("placement group" in note for note in aws_provider.notes)
    assert first["ImageId"].startswith("resolve:ssm:/aws/service/deeplearning/")


def test_efa_gang_asks_for_its_cluster_placement_group(
    aws_provider: Any, run_params: list[dict[str, Any]]
) -> None:
    def created(params: dict[str, Any]) -> str:
        return (
            '<CreatePlacementGroupResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            "<requestId>r</requestId><placementGroup>"
            f"<groupName>{params['GroupName']}</groupName><state>available</state>"
            "<strategy>cluster</strategy></placementGroup></CreatePlacementGroupResponse>"
        )

    req = _request("efa-2", instance_type="p5.48xlarge", zone="us-east-1a", **OPEN)
    with inject(aws_provider, Answer("CreatePlacementGroup", created)) as answer:
        aws_provider.launch(req)
    assert answer.calls[0]["Strategy"] == "cluster"
    group = group_name("efa-2")
    assert all(p["Placement"]["GroupName"] == group for p in run_params)
    # The EFA interfaces carry the request's security group (EC2 takes no other there).
    [security_group] = _groups(aws_provider, "efa-2")
    interfaces = [i for p in run_params for i in p["NetworkInterfaces"]]
    assert {g for i in interfaces for g in i["Groups"]} == {security_group["GroupId"]}
    assert all("SecurityGroupIds" not in p for p in run_params)


def test_spot_launch_with_user_data(aws_provider: Any) -> None:
    script = "#!/bin/sh\necho ready > /tmp/ready\n"
    req = _request("spot-1", nodes=1, pricing=Pricing.SPOT, user_data=script)
    (node,) = aws_provider.launch(req)
    assert node.pricing is Pricing.SPOT
    ec2 = aws_provider.client("ec2", "us-east-1")
    attribute = ec2.describe_instance_attribute(InstanceId=node.instance_id, Attribute="userData")
    assert base64.b64decode(attribute["UserData"]["Value"]).decode() == script


def test_list_by_owner_sees_exactly_ours_and_terminate_is_idempotent(aws_provider: Any) -> None:
    ours = aws_provider.launch(_request("mine-1"))
    theirs = aws_provider.launch(_request("other-1", owner="someone-else", nodes=1))
    listed = aws_provider.list_instances("gpubroker")
    assert sorted(r.instance_id for r in listed) == sorted(r.instance_id for r in ours)
    ids = [r.instance_id for r in ours]
    aws_provider.terminate(ids, "mine-1")
    aws_provider.terminate([*ids, "i-0123456789abcdef0"], "mine-1")
    assert aws_provider.list_instances("gpubroker") == []
    assert [r.instance_id for r in aws_provider.list_instances("someone-else")] == [
        theirs[0].instance_id
    ]


@pytest.mark.parametrize(
    ("code", "pricing", "instance_type", "quota"),
    [
        ("VcpuLimitExceeded", Pricing.ON_DEMAND, "p5.48xlarge", "L-417A185B"),
        ("MaxSpotInstanceCountExceeded", Pricing.SPOT, "g5.xlarge", "L-3819A6DF"),
    ],
)
def test_quota_errors_name_the_quota(
    aws_provider: Any, code: str, pricing: Pricing, instance_type: str, quota: str
) -> None:
    req = _request("quota-1", nodes=1, pricing=pricing, instance_type=instance_type)
    with (
        inject(aws_provider, FailCalls("RunInstances", code=code)),
        pytest.raises(QuotaExceeded) as caught,
    ):
        aws_provider.launch(req)
    assert caught.value.quota == quota


def test_throttled_launch_converges_and_persistent_throttling_is_typed(
    aws_provider: Any, aws_settings: Any, no_backoff: None
) -> None:
    req = _request("busy-1", nodes=3)
    with inject(aws_provider, Throttle(rate=0.3, seed=3)) as throttle:
        nodes = aws_provider.launch(req)
        aws_provider.list_instances("gpubroker")
        aws_provider.terminate([nodes[0].instance_id], req.request_id)
    assert throttle.throttled >= 1 and throttle.most_attempts <= 4
    assert len(_live_for_request(aws_provider, "busy-1")) == 2
    with (
        inject(aws_provider, Throttle(rate=1.0, max_in_a_row=None)) as always,
        pytest.raises(Throttled),
    ):
        aws_provider.list_instances("gpubroker")
    assert always.most_attempts == aws_settings.aws_max_attempts == 4


def test_no_error_text_carries_the_secret(
    aws_settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from providers.aws import create

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)
    provider = create(aws_settings)
    echoed = f"The request signature we calculated does not match; secret {CANARY}"
    failures: list[BaseException] = []
    for code, kind in (
        ("SignatureDoesNotMatch", AuthError),
        ("AuthFailure", AuthError),
        ("InsufficientInstanceCapacity", OutOfCapacity),
    ):
        with (
            inject(provider, FailCalls("RunInstances", code=code, message=echoed)),
            pytest.raises(kind) as caught,
        ):
            provider.launch(_request("canary-1", nodes=1))
        failures.append(caught.value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AuthError) as missing:
        create(aws_settings).list_instances("gpubroker")
    failures.append(missing.value)
    for failure in failures:
        assert CANARY not in str(failure) and CANARY not in repr(failure)
        assert CANARY not in "".join(traceback.format_exception(failure))
    assert CANARY not in caplog.text and CANARY not in " ".join(provider.notes)


def test_ingress_nodes_run_in_the_request_group_with_metadata_tags_on(
    aws_provider: Any, run_params: list[dict[str, Any]]
) -> None:
    nodes = aws_provider.launch(_request("open-1", **OPEN))
    [group] = _groups(aws_provider, "open-1")
    assert group["GroupName"] == group_name("open-1")
    assert {t["Key"]: t["Value"] for t in group["Tags"]} == {
        TAG_OWNER: "gpubroker",
        TAG_REQUEST: "open-1",
    }
    ec2 = aws_provider.client("ec2", "us-east-1")
    answer = ec2.describe_instances(InstanceIds=[n.instance_id for n in nodes])
    described = {i["InstanceId"]: i for r in answer["Reservations"] for i in r["Instances"]}
    for node in nodes:
        item = described[node.instance_id]
        assert [g["GroupId"] for g in item["SecurityGroups"]] == [group["GroupId"]]
        assert item["VpcId"] == group["VpcId"]
        assert item["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
        assert item["MetadataOptions"]["HttpTokens"] == "required"
        assert node.private_address == item["PrivateIpAddress"]
    assert all(p["SecurityGroupIds"] == [group["GroupId"]] for p in run_params)
    plain = aws_provider.launch(_request("closed-1", nodes=1))
    assert _groups(aws_provider, "closed-1") == [] and plain[0].private_address


def test_a_group_still_held_is_retried_and_never_fails_the_terminate(aws_provider: Any) -> None:
    aws_provider.group_delete_waits = (0.0, 0.0)
    (node,) = aws_provider.launch(_request("open-2", nodes=1, **OPEN))
    busy = FailCalls("DeleteSecurityGroup", code="DependencyViolation", on_calls={1, 2})
    with inject(aws_provider, busy):
        aws_provider.terminate([node.instance_id], "open-2")
    assert busy.calls == 3 and _groups(aws_provider, "open-2") == []

    (node,) = aws_provider.launch(_request("open-3", nodes=1, **OPEN))
    with inject(aws_provider, FailCalls("DeleteSecurityGroup", code="DependencyViolation")):
        aws_provider.terminate([node.instance_id], "open-3")
    assert len(_groups(aws_provider, "open-3")) == 1
    assert any("open-3" in note for note in aws_provider.notes)
    aws_provider.terminate([node.instance_id], "open-3")  # a later terminate finishes it
    assert _groups(aws_provider, "open-3") == []


def test_a_group_not_tagged_for_the_request_is_never_used_nor_deleted(aws_provider: Any) -> None:
    ec2 = aws_provider.client("ec2", "us-east-1")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    theirs = ec2.create_security_group(
        GroupName=group_name("open-4"), Description="someone else's", VpcId=vpc["VpcId"]
    )["GroupId"]
    with pytest.raises(ProviderError) as caught:
        aws_provider.launch(_request("open-4", nodes=1, **OPEN))
    assert "another request" in str(caught.value)
    (node,) = aws_provider.launch(_request("open-4", nodes=1))
    aws_provider.terminate([node.instance_id], "open-4")
    assert ec2.describe_security_groups(GroupIds=[theirs])["SecurityGroups"]


def test_set_metadata_tags_each_node_once(aws_provider: Any, aws_settings: Any) -> None:
    from providers.aws import create

    nodes = aws_provider.launch(_request("meta-1"))
    ids = [n.instance_id for n in nodes]
    fresh = create(aws_settings)  # has not seen the nodes: looks for their region itself
    with inject(fresh, FailCalls("CreateTags", on_calls=set())) as tagging:
        fresh.set_metadata(ids, {META_HEAD: "10.0.0.9"})
        fresh.set_metadata(ids, {META_HEAD: "10.0.0.9"})
    assert tagging.calls == 1
    listed = aws_provider.list_instances("gpubroker")
    assert {r.tags[META_HEAD] for r in listed} == {"10.0.0.9"}
    assert {r.tags[TAG_NODE] for r in listed} == {"0", "1"}
    with pytest.raises(ProviderError) as caught:
        fresh.set_metadata([ids[0], "i-0123456789abcdef0"], {META_HEAD: "10.0.0.8"})
    assert "i-0123456789abcdef0" in str(caught.value)
