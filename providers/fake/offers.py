"""The fake cloud's default supply: three regions, five zones, four node shapes, on-demand
and spot, each pool with a finite node capacity.

Prices are in the range of public list prices so plans made against the fake look like
real ones; spot is a fixed fraction of on-demand, dearer in Europe.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from broker.domain import Fabric, Pricing
from providers.base import OfferRecord


@dataclass(frozen=True)
class NodeShape:
    instance_type: str
    gpu: str
    gpus_per_node: int
    gpu_memory_gib: float
    vcpus: int
    memory_gib: float
    on_demand: Decimal  # USD per node-hour in the base region
    interconnect_gbps: float
    rdma: Fabric
    nvlink: bool
    capacity_on_demand: int  # nodes per zone
    capacity_spot: int


SHAPES: tuple[NodeShape, ...] = (
    NodeShape(
        "fake-h100x8",
        "H100-80GB",
        8,
        80,
        192,
        2048,
        Decimal("55.04"),
        3200,
        Fabric.INFINIBAND,
        True,
        4,
        6,
    ),
    NodeShape(
        "fake-a100x8",
        "A100-80GB",
        8,
        80,
        96,
        1152,
        Decimal("32.77"),
        400,
        Fabric.INFINIBAND,
        True,
        6,
        8,
    ),
    NodeShape(
        "fake-l40sx4", "L40S", 4, 48, 48, 384, Decimal("7.50"), 100, Fabric.NONE, False, 8, 12
    ),
    NodeShape("fake-l4x1", "L4", 1, 24, 8, 32, Decimal("0.80"), 25, Fabric.NONE, False, 16, 32),
)

# region -> (zones, price multiplier)
REGIONS: dict[str, tuple[tuple[str, ...], Decimal]] = {
    "us-east-1": (("us-east-1a", "us-east-1b"), Decimal("1.00")),
    "us-west-2": (("us-west-2a",), Decimal("1.00")),
    "eu-west-1": (("eu-west-1a", "eu-west-1b"), Decimal("1.10")),
}

# Which zones carry the two big shapes; the small ones are everywhere.
PLACES: dict[str, tuple[str, ...]] = {
    "fake-h100x8": ("us-east-1a", "us-east-1b", "eu-west-1a"),
    "fake-a100x8": ("us-east-1a", "us-west-2a", "eu-west-1b"),
}

SPOT_FRACTION = Decimal("0.40")
DEFAULT_QUOTA_GPUS = 128  # per region, all pricings together
_PRICE_STEP = Decimal("0.0001")


def default_offers(provider: str = "fake") -> list[OfferRecord]:
    """The default offer set, in a stable order."""
    offers: list[OfferRecord] = []
    for region, (zones, factor) in REGIONS.items():
        for zone in zones:
            for shape in SHAPES:
                if zone not in PLACES.get(shape.instance_type, (zone,)):
                    continue
                on_demand = (shape.on_demand * factor).quantize(_PRICE_STEP)
                for pricing, price, capacity in (
                    (Pricing.ON_DEMAND, on_demand, shape.capacity_on_demand),
                    (
                        Pricing.SPOT,
                        (on_demand * SPOT_FRACTION).quantize(_PRICE_STEP),
                        shape.capacity_spot,
                    ),
                ):
                    offers.append(
                        OfferRecord(
                            provider=provider,
                            region=region,
                            zone=zone,
                            instance_type=shape.instance_type,
                            gpu=shape.gpu,
                            gpus_per_node=shape.gpus_per_node,
                            gpu_memory_gib=shape.gpu_memory_gib,
                            vcpus=shape.vcpus,
                            memory_gib=shape.memory_gib,
                            pricing=pricing,
                            price_per_hour=price,
                            interconnect_gbps=shape.interconnect_gbps,
                            rdma=shape.rdma,
                            nvlink=shape.nvlink,
                            capacity_nodes=capacity,
                            source="fake",
                        )
                    )
    return offers


def default_quotas() -> dict[str, int]:
    return {region: DEFAULT_QUOTA_GPUS for region in REGIONS}
