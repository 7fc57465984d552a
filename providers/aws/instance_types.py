"""EC2 instance type descriptions -> the GPU node shapes the broker plans with.

Works on the dictionaries ``describe_instance_types`` returns (GpuInfo, VCpuInfo,
MemoryInfo, NetworkInfo, ProcessorInfo), so it is pure and testable without a cloud.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workloads.gpus import resolve

# Every EC2 type with whole GPUs sits in a P or G family (gr6 and g5g included).
# moto rejects the ``gpu-info.*`` filters, and this name filter is cheaper anyway.
GPU_TYPE_PATTERNS: tuple[str, ...] = ("p*", "g*")

_GBPS = re.compile(r"(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)\s*Gigabit", re.IGNORECASE)
MIB_PER_GIB = 1024


@dataclass(frozen=True)
class GpuShape:
    instance_type: str
    gpu: str  # AWS's GPU name, e.g. "H100"
    gpus: int
    gpu_memory_gib: float | None
    vcpus: int | None
    memory_gib: float | None
    network_gbps: float | None
    efa: bool
    efa_interfaces: int
    network_cards: int
    architectures: tuple[str, ...]
    spot: bool
    nvlink: bool

    @property
    def family(self) -> str:
        return self.instance_type.split(".", 1)[0]


def parse_network_gbps(text: str | None) -> float | None:
    """'3200 Gigabit' -> 3200, 'Up to 25 Gigabit' -> 25, '4x 100 Gigabit' -> 400, 'High' -> None."""
    if not text:
        return None
    match = _GBPS.search(text)
    if match is None:
        return None
    lanes = int(match.group(1)) if match.group(1) else 1
    return lanes * float(match.group(2))


def _network_gbps(network: Mapping[str, Any]) -> float | None:
    gbps = parse_network_gbps(network.get("NetworkPerformance"))
    if gbps is not None:
        return gbps
    cards = network.get("NetworkCards") or []
    total = 0.0
    for card in cards:
        per_card = card.get("PeakBandwidthInGbps") or card.get("BaselineBandwidthInGbps")
        if per_card is None:
            per_card = parse_network_gbps(card.get("NetworkPerformance"))
        total += float(per_card or 0)
    return total or None


def gpu_shape(info: Mapping[str, Any]) -> GpuShape | None:
    """The shape of one instance type, or None when it has no whole GPU."""
    gpus = (info.get("GpuInfo") or {}).get("Gpus") or []
    if not gpus:
        return None
    first = gpus[0]
    count = sum(int(g.get("Count") or 0) for g in gpus)
    if count < 1:  # fractional GPU slices (g6f, gr6f) cannot host a training rank
        return None
    name = str(first.get("Name") or "unknown")
    mib = (first.get("MemoryInfo") or {}).get("SizeInMiB")
    gpu_memory = round(mib / MIB_PER_GIB, 2) if mib else None
    network = info.get("NetworkInfo") or {}
    memory_mib = (info.get("MemoryInfo") or {}).get("SizeInMiB")
    spec = resolve(name, gpu_memory).spec
    return GpuShape(
        instance_type=str(info["InstanceType"]),
        gpu=name,
        gpus=count,
        gpu_memory_gib=gpu_memory,
        vcpus=(info.get("VCpuInfo") or {}).get("DefaultVCpus"),
        memory_gib=round(memory_mib / MIB_PER_GIB, 2) if memory_mib else None,
        network_gbps=_network_gbps(network),
        efa=bool(network.get("EfaSupported")),
        efa_interfaces=int((network.get("EfaInfo") or {}).get("MaximumEfaInterfaces") or 0),
        network_cards=int(network.get("MaximumNetworkCards") or 1),
        architectures=tuple((info.get("ProcessorInfo") or {}).get("SupportedArchitectures") or ()),
        spot="spot" in (info.get("SupportedUsageClasses") or ()),
        nvlink=count > 1 and spec is not None and spec.nvlink_gbps > 0,
    )
