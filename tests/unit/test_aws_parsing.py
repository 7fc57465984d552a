"""Pure parts of the AWS adapter: instance shapes, the offer file, launch pieces, quotas."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from broker.domain import Fabric, InstanceState, Pricing
from providers.aws import launch as ln
from providers.aws import pricing
from providers.aws.instance_types import gpu_shape, parse_network_gbps
from providers.aws.offers import build_offers
from providers.aws.quotas import nodes_that_fit, quota_code, quota_family, quota_record
from providers.base import TAG_ALLOCATION, TAG_JOB, TAG_NODE, TAG_OWNER, TAG_REQUEST, LaunchRequest
from tests.support.aws_price_list import PRICES, regional_offer_file


def _p5(**network: object) -> dict[str, object]:
    info: dict[str, object] = {
        "InstanceType": "p5.48xlarge",
        "GpuInfo": {
            "Gpus": [
                {
                    "Count": 8,
                    "Manufacturer": "NVIDIA",
                    "Name": "H100",
                    "MemoryInfo": {"SizeInMiB": 81920},
                }
            ]
        },
        "VCpuInfo": {"DefaultVCpus": 192},
        "MemoryInfo": {"SizeInMiB": 2097152},
        "ProcessorInfo": {"SupportedArchitectures": ["x86_64"]},
        "SupportedUsageClasses": ["on-demand", "spot", "capacity-block"],
        "NetworkInfo": {
            "NetworkPerformance": "3200 Gigabit",
            "EfaSupported": True,
            "EfaInfo": {"MaximumEfaInterfaces": 32},
            "MaximumNetworkCards": 32,
            "NetworkCards": [{"PeakBandwidthInGbps": 100.0}] * 32,
        },
    }
    info["NetworkInfo"].update(network)  # type: ignore[union-attr]
    return info


@pytest.mark.parametrize(
    ("text", "gbps"),
    [
        ("3200 Gigabit", 3200.0),
        ("Up to 25 Gigabit", 25.0),
        ("100 Gigabit", 100.0),
        ("4x 100 Gigabit", 400.0),
        ("Up to 12.5 Gigabit", 12.5),
        ("High", None),
        (None, None),
    ],
)
def test_network_performance_text_becomes_gbps(text: str | None, gbps: float | None) -> None:
    assert parse_network_gbps(text) == gbps


def test_p5_shape_has_eight_h100_with_efa_and_nvlink() -> None:
    shape = gpu_shape(_p5())
    assert shape is not None
    assert (shape.gpu, shape.gpus, shape.gpu_memory_gib) == ("H100", 8, 80.0)
    assert (shape.vcpus, shape.memory_gib, shape.network_gbps) == (192, 2048.0, 3200.0)
    assert shape.efa and shape.efa_interfaces == 32 and shape.spot and shape.nvlink


def test_network_cards_stand_in_when_performance_text_is_vague() -> None:
    shape = gpu_shape(_p5(NetworkPerformance="Very High"))
    assert shape is not None and shape.network_gbps == 3200.0


def test_types_without_whole_gpus_are_not_shapes() -> None:
    fractional = _p5()
    fractional["GpuInfo"] = {"Gpus": [{"Count": 0, "Name": "L4", "GpuPartitionSize": 0.125}]}
    assert gpu_shape(fractional) is None
    cpu_only = {k: v for k, v in _p5().items() if k != "GpuInfo"}
    assert gpu_shape(cpu_only) is None


def test_pcie_gpus_are_not_nvlinked() -> None:
    info = _p5()
    info["InstanceType"] = "g5.48xlarge"
    info["GpuInfo"] = {"Gpus": [{"Count": 8, "Name": "A10G", "MemoryInfo": {"SizeInMiB": 22888}}]}
    shape = gpu_shape(info)
    assert shape is not None and not shape.nvlink


# --- the offer file ---------------------------------------------------------------------


def _offer_bytes(document: dict[str, object]) -> io.BytesIO:
    return io.BytesIO(json.dumps(document, indent=1).encode())


def test_offer_file_keeps_only_plain_linux_on_demand_prices() -> None:
    document = regional_offer_file("us-east-1", PRICES["us-east-1"])
    prices, publication = pricing.parse_offer_file(_offer_bytes(document))
    assert prices == {t: Decimal(p) for t, p in PRICES["us-east-1"].items()}
    assert publication == document["publicationDate"]


def test_offer_file_is_read_across_tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricing, "_CHUNK", 7)
    document = regional_offer_file("us-west-2", PRICES["us-west-2"])
    prices, _ = pricing.parse_offer_file(_offer_bytes(document))
    assert prices["p5.48xlarge"] == Decimal("55.04")
    assert len(prices) == len(PRICES["us-west-2"])


def test_terms_before_products_still_join() -> None:
    document = regional_offer_file("us-east-1", {"p5.48xlarge": "55.04"})
    reordered = {"terms": document["terms"], "products": document["products"]}
    prices, _ = pricing.parse_offer_file(_offer_bytes(reordered))
    assert prices == {"p5.48xlarge": Decimal("55.04")}


def test_truncated_offer_file_is_an_error() -> None:
    data = json.dumps(regional_offer_file("us-east-1", {"g5.xlarge": "1.006"})).encode()
    with pytest.raises(ValueError):
        pricing.parse_offer_file(io.BytesIO(data[: len(data) // 2]))


# --- offers -----------------------------------------------------------------------------


def test_offers_per_zone_with_unknown_on_demand_price_left_none() -> None:
    shape = gpu_shape(_p5())
    assert shape is not None
    when = datetime(2026, 11, 1, tzinfo=UTC)
    offers = build_offers(
        "us-east-1",
        {"p5.48xlarge": shape},
        {"p5.48xlarge": ["us-east-1a", "us-east-1b"]},
        {},
        when,
        {("p5.48xlarge", "us-east-1b"): Decimal("12.5")},
        when,
    )
    kinds = sorted((o.zone, o.pricing.value, o.price_per_hour) for o in offers)
    assert kinds == [
        ("us-east-1a", "on_demand", None),
        ("us-east-1b", "on_demand", None),
        ("us-east-1b", "spot", Decimal("12.5")),
    ]
    assert all(o.rdma is Fabric.EFA and o.source == "aws-api" for o in offers)


# --- launch pieces ----------------------------------------------------------------------


def test_client_tokens_are_short_distinct_and_stable() -> None:
    assert ln.client_token("req-1", 0) == ln.client_token("req-1", 0)
    tokens = {ln.client_token("req-1", n, g) for n in range(3) for g in range(2)}
    assert len(tokens) == 6
    long_token = ln.client_token("x" * 200, 3, 1)
    assert len(long_token) <= 64 and long_token.endswith(":3:1")
    assert ln.client_token("x" * 200, 3, 1) != ln.client_token("y" * 200, 3, 1)


def test_run_params_carry_tags_token_spot_and_user_data() -> None:
    req = LaunchRequest(
        request_id="alloc-7",
        region="us-east-1",
        zone="us-east-1b",
        instance_type="g5.xlarge",
        nodes=2,
        pricing=Pricing.SPOT,
        tags={TAG_JOB: "3", TAG_ALLOCATION: "7"},
        user_data="#!/bin/sh\necho hi\n",
    )
    params = ln.run_params(req, 1, 0, ln.NodePlan(image="ami-1", zone="us-east-1b"))
    tags = {t["Key"]: t["Value"] for t in params["TagSpecifications"][0]["Tags"]}
    assert tags[TAG_REQUEST] == "alloc-7" and tags[TAG_NODE] == "1" and tags[TAG_OWNER]
    assert tags[TAG_JOB] == "3" and tags[TAG_ALLOCATION] == "7"
    assert params["ClientToken"] == ln.client_token("alloc-7", 1, 0)
    assert params["Placement"] == {"AvailabilityZone": "us-east-1b"}
    assert params["InstanceMarketOptions"]["MarketType"] == "spot"
    assert params["UserData"] == req.user_data
    assert params["MetadataOptions"] == {
        "HttpTokens": "required",
        "HttpEndpoint": "enabled",
        "InstanceMetadataTags": "enabled",
    }
    assert "SecurityGroupIds" not in params


def test_run_params_put_the_nodes_in_the_request_security_group() -> None:
    req = LaunchRequest("alloc-8", "us-east-1", None, "g5.xlarge", 1, ingress_cidr="1.2.3.0/24")
    plain = ln.run_params(req, 0, 0, ln.NodePlan(image="ami-1", security_group="sg-1"))
    assert plain["SecurityGroupIds"] == ["sg-1"] and "Placement" not in plain
    shape = gpu_shape(_p5())
    assert shape is not None
    interfaces = ln.efa_interfaces(shape, "subnet-1", "sg-1")
    efa = ln.run_params(
        req, 0, 0, ln.NodePlan(image="ami-1", interfaces=interfaces, security_group="sg-1")
    )
    # EC2 refuses SecurityGroupIds beside NetworkInterfaces: the interfaces carry the group.
    assert "SecurityGroupIds" not in efa
    assert {g for i in efa["NetworkInterfaces"] for g in i["Groups"]} == {"sg-1"}


def test_ingress_rules_missing_from_a_group_are_the_only_ones_asked_for() -> None:
    wanted = ln.ingress_permissions("sg-1", "203.0.113.0/24", (8265, 6390, 6390))
    assert [p.get("FromPort") for p in wanted] == [6390, 8265, None]
    # As DescribeSecurityGroups shows a group that has the gang rule and port 6390 only.
    existing = [
        {
            "IpProtocol": "tcp",
            "FromPort": 6390,
            "ToPort": 6390,
            "IpRanges": [{"CidrIp": "203.0.113.0/24"}],
            "UserIdGroupPairs": [],
        },
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"UserId": "1", "GroupId": "sg-1"}]},
    ]
    assert ln.missing_permissions(wanted, existing) == [wanted[1]]
    assert ln.missing_permissions(wanted, []) == wanted


def test_efa_interfaces_one_per_card_primary_first() -> None:
    shape = gpu_shape(_p5())
    assert shape is not None
    interfaces = ln.efa_interfaces(shape, "subnet-1", "sg-1")
    assert len(interfaces) == 32
    assert interfaces[0]["DeviceIndex"] == 0 and interfaces[1]["DeviceIndex"] == 1
    assert {i["InterfaceType"] for i in interfaces} == {"efa"}
    assert [i["NetworkCardIndex"] for i in interfaces] == list(range(32))


def test_default_image_follows_the_architecture() -> None:
    shape = gpu_shape(_p5())
    assert "/x86_64/" in ln.default_image(shape)
    arm = gpu_shape({**_p5(), "ProcessorInfo": {"SupportedArchitectures": ["arm64"]}})
    assert "/arm64/" in ln.default_image(arm)


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        ("pending", None, InstanceState.PENDING),
        ("running", None, InstanceState.RUNNING),
        ("shutting-down", None, InstanceState.TERMINATING),
        ("terminated", "Client.UserInitiatedShutdown", InstanceState.TERMINATED),
        ("terminated", "Server.SpotInstanceTermination", InstanceState.PREEMPTED),
        ("stopped", None, InstanceState.FAILED),
    ],
)
def test_instance_states_map_to_ours(
    state: str, reason: str | None, expected: InstanceState
) -> None:
    item = {
        "InstanceId": "i-1",
        "InstanceType": "p5.48xlarge",
        "State": {"Name": state},
        "StateReason": {"Code": reason} if reason else {},
        "Placement": {"AvailabilityZone": "us-east-1a"},
        "InstanceLifecycle": "spot",
        "PrivateIpAddress": "10.0.0.5",
        "Tags": [{"Key": TAG_NODE, "Value": "2"}],
    }
    record = ln.instance_record(item, "us-east-1")
    assert record.state is expected
    assert record.pricing is Pricing.SPOT and record.node_index == 2
    assert record.address == record.private_address == "10.0.0.5"


# --- quotas -----------------------------------------------------------------------------


def test_quota_codes_per_family_and_pricing() -> None:
    assert quota_family("p5.48xlarge") == "P" and quota_family("gr6.4xlarge") == "G"
    assert quota_family("m5.large") is None
    on_demand_p = quota_code("p4d.24xlarge", Pricing.ON_DEMAND)
    spot_g = quota_code("g5.xlarge", Pricing.SPOT)
    assert on_demand_p is not None and on_demand_p.code == "L-417A185B"
    assert spot_g is not None and spot_g.code == "L-3819A6DF"


def test_nodes_that_fit_count_what_is_left() -> None:
    quota = quota_code("p5.48xlarge", Pricing.ON_DEMAND)
    assert quota is not None
    record = quota_record("us-east-1", quota, 800.0, used=192.0)
    assert (record.unit, record.scope, record.pricing) == ("vcpus", "P", Pricing.ON_DEMAND)
    assert nodes_that_fit(record, 192) == 3
    assert nodes_that_fit(quota_record("us-east-1", quota, 100.0), 192) == 0
