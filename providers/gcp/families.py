"""What GCE's APIs do not say about its GPU machine families, written down once.

The machine-type API gives vCPUs, memory and the fixed GPUs of accelerator-optimised
types; it says nothing about which billing SKUs price a family, which inter-node fabric
it has, how fast its network is, or which GPUs an N1 host can take. Those facts come
from Google's public machine-family and pricing pages and live here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from broker.domain import Fabric


@dataclass(frozen=True)
class Accelerator:
    """A GCE accelerator type and how the billing catalog and quotas name it."""

    name: str  # GCE accelerator type, e.g. nvidia-h100-80gb
    memory_gib: float
    sku_names: tuple[str, ...]  # billing SKU description stems, before " running in ..."
    quota_metric: str  # regional quota metric, e.g. NVIDIA_H100_GPUS
    n1_attachable: bool = False


ACCELERATORS: dict[str, Accelerator] = {
    acc.name: acc
    for acc in (
        Accelerator("nvidia-tesla-t4", 16, ("Nvidia Tesla T4 GPU",), "NVIDIA_T4_GPUS", True),
        Accelerator("nvidia-tesla-v100", 16, ("Nvidia Tesla V100 GPU",), "NVIDIA_V100_GPUS", True),
        Accelerator("nvidia-tesla-p100", 16, ("Nvidia Tesla P100 GPU",), "NVIDIA_P100_GPUS", True),
        Accelerator("nvidia-tesla-p4", 8, ("Nvidia Tesla P4 GPU",), "NVIDIA_P4_GPUS", True),
        Accelerator("nvidia-l4", 24, ("Nvidia L4 GPU",), "NVIDIA_L4_GPUS"),
        Accelerator("nvidia-tesla-a100", 40, ("Nvidia Tesla A100 GPU",), "NVIDIA_A100_GPUS"),
        Accelerator(
            "nvidia-a100-80gb",
            80,
            ("Nvidia Tesla A100 80GB GPU", "Nvidia A100 80GB GPU"),
            "NVIDIA_A100_80GB_GPUS",
        ),
        Accelerator(
            "nvidia-h100-80gb",
            80,
            ("Nvidia H100 80GB GPU", "Nvidia H100 GPU"),
            "NVIDIA_H100_GPUS",
        ),
        Accelerator(
            "nvidia-h100-mega-80gb",
            80,
            ("Nvidia H100 80GB Mega GPU",),
            "NVIDIA_H100_MEGA_GPUS",
        ),
        Accelerator(
            "nvidia-h200-141gb",
            141,
            ("H200 141GB GPU", "Nvidia H200 141GB GPU"),
            "NVIDIA_H200_GPUS",
        ),
    )
}

QUOTA_METRICS: dict[str, str] = {acc.quota_metric: acc.name for acc in ACCELERATORS.values()}

# GPU counts offered on an N1 host, each on the n1-standard host with 8 vCPUs per GPU
# (inside every attachable GPU's vCPU limit for that count).
N1_GPU_COUNTS: tuple[int, ...] = (1, 2, 4, 8)
N1_VCPUS_PER_GPU = 8


@dataclass(frozen=True)
class Family:
    """A GPU machine family: its billing SKU stem, fabric and network."""

    prefix: str  # machine-type prefix, e.g. "a3-highgpu"
    host_sku: str  # "A3" prices as "A3 Instance Core/Ram running in ..."
    fabric: Fabric = Fabric.NONE
    fabric_types: tuple[str, ...] = ()  # machine types that get the fabric (all if empty)
    nvlink: bool = False
    compact_placement: bool = False
    boot_disk_type: str = "pd-balanced"

    def fabric_of(self, machine_type: str) -> Fabric:
        if self.fabric is Fabric.NONE:
            return Fabric.NONE
        if self.fabric_types and machine_type not in self.fabric_types:
            return Fabric.NONE
        return self.fabric


FAMILIES: tuple[Family, ...] = (
    Family("a2-highgpu", "A2", nvlink=True, compact_placement=True),
    Family("a2-megagpu", "A2", nvlink=True, compact_placement=True),
    Family("a2-ultragpu", "A2", nvlink=True, compact_placement=True),
    # GPUDirect-TCPX needs the full 8-GPU shape and its four extra NICs.
    Family(
        "a3-highgpu",
        "A3",
        Fabric.TCPX,
        ("a3-highgpu-8g",),
        nvlink=True,
        compact_placement=True,
    ),
    Family("a3-megagpu", "A3Plus", Fabric.TCPXO, nvlink=True, compact_placement=True),
    Family(
        "a3-ultragpu",
        "A3Ultra",
        Fabric.ROCE,
        nvlink=True,
        compact_placement=True,
        boot_disk_type="hyperdisk-balanced",
    ),
    Family("g2-standard", "G2", compact_placement=True),
    Family("n1-standard", "N1 Predefined"),
)

# Maximum egress bandwidth per machine type (Gbps), from the machine-family pages.
# The fabric types' figures include their GPU NICs.
_NETWORK_GBPS: dict[str, float] = {
    "a2-highgpu-1g": 24,
    "a2-highgpu-2g": 32,
    "a2-highgpu-4g": 50,
    "a2-highgpu-8g": 100,
    "a2-megagpu-16g": 100,
    "a2-ultragpu-1g": 24,
    "a2-ultragpu-2g": 32,
    "a2-ultragpu-4g": 50,
    "a2-ultragpu-8g": 100,
    "a3-highgpu-1g": 25,
    "a3-highgpu-2g": 50,
    "a3-highgpu-4g": 100,
    "a3-highgpu-8g": 1000,
    "a3-megagpu-8g": 1800,
    "a3-ultragpu-8g": 3600,
    "g2-standard-4": 10,
    "g2-standard-8": 16,
    "g2-standard-12": 16,
    "g2-standard-16": 32,
    "g2-standard-24": 32,
    "g2-standard-32": 32,
    "g2-standard-48": 50,
    "g2-standard-96": 100,
}

# An N1 shape with attached GPUs is named "<host>+<count>x<accelerator>", e.g.
# "n1-standard-8+1xnvidia-tesla-t4"; the launcher splits it back.
_N1_SHAPE = re.compile(r"^(?P<host>n1-[a-z0-9-]+)\+(?P<count>\d+)x(?P<accelerator>[a-z0-9-]+)$")


def family_of(machine_type: str) -> Family | None:
    for family in FAMILIES:
        if machine_type.startswith(family.prefix + "-"):
            return family
    return None


def network_gbps(machine_type: str, vcpus: int | None) -> float | None:
    if machine_type in _NETWORK_GBPS:
        return _NETWORK_GBPS[machine_type]
    if machine_type.startswith("n1-") and vcpus:
        return float(min(2 * vcpus, 32))  # N1 default tier: 2 Gbps per vCPU, 32 at most
    return None


def n1_shape(host: str, count: int, accelerator: str) -> str:
    return f"{host}+{count}x{accelerator}"


def split_shape(instance_type: str) -> tuple[str, str | None, int]:
    """``(machine_type, attached accelerator or None, attached count)``."""
    match = _N1_SHAPE.match(instance_type)
    if match is None:
        return instance_type, None, 0
    return match["host"], match["accelerator"], int(match["count"])


def n1_host_for(count: int) -> str:
    return f"n1-standard-{N1_VCPUS_PER_GPU * count}"
