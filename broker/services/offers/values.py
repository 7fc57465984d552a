"""The offer catalog's values: what a query, the summary and an upsert hand back."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from broker.domain import Fabric, Pricing

SORTS = ("price", "price-per-gpu", "price-per-tflop", "gpu-memory")
IMPORT_FORMATS = ("skypilot", "gpuhunt")


@dataclass(frozen=True)
class UpsertSummary:
    new: int = 0
    updated: int = 0
    stale: int = 0
    unchanged: int = 0

    def __add__(self, other: UpsertSummary) -> UpsertSummary:
        return UpsertSummary(
            self.new + other.new,
            self.updated + other.updated,
            self.stale + other.stale,
            self.unchanged + other.unchanged,
        )


@dataclass(frozen=True)
class OfferFilter:
    """What ``gpubroker offers`` filters on; every field optional."""

    gpus: tuple[str, ...] = ()  # names or aliases
    min_gpus: int | None = None  # per node
    max_gpus: int | None = None
    min_gpu_memory: float | None = None  # GiB per GPU
    providers: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()  # globs such as "us-*"
    pricing: Pricing | None = None
    max_price: Decimal | None = None  # per node-hour
    min_interconnect: float | None = None  # Gbps between nodes
    rdma: bool = False  # only offers with an RDMA-class fabric
    include_stale: bool = True
    sort: str = "price"
    limit: int | None = None


# JSON keys of ``gpubroker offers --format json``, in order.
OFFER_KEYS = (
    "provider",
    "region",
    "zone",
    "instance_type",
    "gpu",
    "gpus_per_node",
    "gpu_memory_gib",
    "vcpus",
    "memory_gib",
    "pricing",
    "price_per_hour",
    "price_per_gpu_hour",
    "interconnect_gbps",
    "rdma",
    "source",
    "fetched_at",
    "stale",
    "as_of",
)


@dataclass(frozen=True)
class OfferView:
    """One offer as the CLI, the SDK and the planner see it.

    ``rdma`` is the fabric name (``efa``, ``tcpx``, ``tcpxo``, ``roce``, ``infiniband``) or
    ``none``; ``has_rdma`` says whether it is anything but ``none``. Prices are USD per
    hour; None means unknown, never free.
    """

    id: int
    provider: str
    region: str
    zone: str | None
    instance_type: str
    gpu: str | None
    gpus_per_node: int
    gpu_memory_gib: float | None
    vcpus: int | None
    memory_gib: float | None
    pricing: str
    price_per_hour: Decimal | None
    price_per_gpu_hour: Decimal | None
    interconnect_gbps: float | None
    rdma: str
    nvlink: bool
    capacity_nodes: int | None
    source: str
    as_of: datetime | None
    fetched_at: datetime
    stale: bool
    gpu_known: bool = True

    @property
    def has_rdma(self) -> bool:
        return self.rdma != Fabric.NONE.value

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in OFFER_KEYS}


@dataclass(frozen=True)
class Cheapest:
    price_per_gpu_hour: Decimal
    price_per_hour: Decimal
    provider: str
    region: str
    zone: str | None
    instance_type: str
    gpus_per_node: int

    @property
    def where(self) -> str:
        place = f"{self.region}/{self.zone}" if self.zone else self.region
        return f"{self.provider} {place} {self.instance_type}"


@dataclass(frozen=True)
class GpuSummary:
    """One GPU: its cheapest on-demand and spot price per GPU-hour, and where."""

    gpu: str
    gpu_memory_gib: float | None
    offers: int
    on_demand: Cheapest | None
    spot: Cheapest | None

    def to_dict(self) -> dict[str, Any]:
        def part(c: Cheapest | None) -> dict[str, Any] | None:
            return None if c is None else {**asdict(c), "where": c.where}

        return {
            "gpu": self.gpu,
            "gpu_memory_gib": self.gpu_memory_gib,
            "offers": self.offers,
            "on_demand": part(self.on_demand),
            "spot": part(self.spot),
        }
