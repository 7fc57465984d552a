"""GPU offers of one region: which types, in which zones, at which on-demand and spot prices.

The calls (``describe_instance_types``, ``describe_instance_type_offerings``,
``describe_spot_price_history``) live here; ``build_offers`` joins their answers and is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from broker.domain import Fabric, Pricing, as_utc
from providers.aws.errors import aws_call
from providers.aws.instance_types import GPU_TYPE_PATTERNS, GpuShape, gpu_shape
from providers.base import OfferRecord

PROVIDER = "aws"
SOURCE = "aws-api"
# Stay well inside EC2's limit on values per filter.
_FILTER_CHUNK = 100
_SPOT_PRODUCTS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")


def _chunks(items: Sequence[str], size: int = _FILTER_CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def gpu_shapes(ec2: Any, region: str) -> dict[str, GpuShape]:
    """instance type -> shape, for every type in the region with whole GPUs."""
    shapes: dict[str, GpuShape] = {}
    with aws_call("DescribeInstanceTypes", region):
        pages = ec2.get_paginator("describe_instance_types").paginate(
            Filters=[{"Name": "instance-type", "Values": list(GPU_TYPE_PATTERNS)}]
        )
        for page in pages:
            for info in page.get("InstanceTypes", []):
                shape = gpu_shape(info)
                if shape is not None:
                    shapes[shape.instance_type] = shape
    return shapes


def zones_offering(ec2: Any, region: str, instance_types: Sequence[str]) -> dict[str, list[str]]:
    """instance type -> the zones (names) of ``region`` that offer it."""
    zones: dict[str, set[str]] = {}
    paginator = ec2.get_paginator("describe_instance_type_offerings")
    with aws_call("DescribeInstanceTypeOfferings", region):
        for chunk in _chunks(sorted(instance_types)):
            pages = paginator.paginate(
                LocationType="availability-zone",
                Filters=[{"Name": "instance-type", "Values": chunk}],
            )
            for page in pages:
                for offering in page.get("InstanceTypeOfferings", []):
                    zones.setdefault(offering["InstanceType"], set()).add(offering["Location"])
    return {t: sorted(z) for t, z in zones.items()}


def spot_prices(
    ec2: Any, region: str, instance_types: Sequence[str], now: datetime
) -> dict[tuple[str, str], Decimal]:
    """(instance type, zone) -> the latest Linux spot price per hour."""
    latest: dict[tuple[str, str], tuple[datetime, Decimal]] = {}
    paginator = ec2.get_paginator("describe_spot_price_history")
    with aws_call("DescribeSpotPriceHistory", region):
        for chunk in _chunks(sorted(instance_types)):
            pages = paginator.paginate(
                InstanceTypes=chunk, ProductDescriptions=list(_SPOT_PRODUCTS), StartTime=now
            )
            for page in pages:
                for item in page.get("SpotPriceHistory", []):
                    if not str(item.get("ProductDescription", "")).startswith("Linux/UNIX"):
                        continue
                    key = (item["InstanceType"], item["AvailabilityZone"])
                    stamp = as_utc(item["Timestamp"])
                    if key not in latest or stamp > latest[key][0]:
                        latest[key] = (stamp, Decimal(str(item["SpotPrice"])))
    return {key: price for key, (_, price) in latest.items()}


def build_offers(
    region: str,
    shapes: Mapping[str, GpuShape],
    zones: Mapping[str, Sequence[str]],
    on_demand: Mapping[str, Decimal],
    on_demand_as_of: datetime,
    spot: Mapping[tuple[str, str], Decimal],
    spot_as_of: datetime,
) -> list[OfferRecord]:
    """One on-demand offer per (type, zone) offered, one spot offer where a price exists.

    An on-demand price missing from the price list stays None (unknown), never zero.
    """
    offers: list[OfferRecord] = []
    for instance_type in sorted(shapes):
        shape = shapes[instance_type]
        for zone in zones.get(instance_type, ()):
            common: dict[str, Any] = {
                "provider": PROVIDER,
                "region": region,
                "zone": zone,
                "instance_type": instance_type,
                "gpu": shape.gpu,
                "gpus_per_node": shape.gpus,
                "gpu_memory_gib": shape.gpu_memory_gib,
                "vcpus": shape.vcpus,
                "memory_gib": shape.memory_gib,
                "interconnect_gbps": shape.network_gbps,
                "rdma": Fabric.EFA if shape.efa else Fabric.NONE,
                "nvlink": shape.nvlink,
                "source": SOURCE,
            }
            offers.append(
                OfferRecord(
                    **common,
                    pricing=Pricing.ON_DEMAND,
                    price_per_hour=on_demand.get(instance_type),
                    as_of=on_demand_as_of,
                )
            )
            spot_price = spot.get((instance_type, zone))
            if shape.spot and spot_price is not None and spot_price > 0:
                offers.append(
                    OfferRecord(
                        **common, pricing=Pricing.SPOT, price_per_hour=spot_price, as_of=spot_as_of
                    )
                )
    return offers
