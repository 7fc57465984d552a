"""What price catalogs leave out: the network of each GPU instance family.

Price files name an instance type and its GPUs, but not how fast its nodes talk to each
other, which is what decides where a multi-node gang may go. These figures are the
providers' published per-node bandwidths and fabrics; a type not listed here gets
``None`` (unknown) and no RDMA fabric, never a guess.

GCP also bills the GPUs of its fixed-GPU families (a2, a3, a4, g2) apart from the host, so
importers need to know which GPU, and how many, each of those machine types carries.

Some offers sell a share of one GPU (Azure's NVads A10 v5: a sixth, a third or half of an
A10). ``gpu_share`` names such a node's single GPU for its share (``A10-1/6``) with that
share of the card's memory. The performance model knows whole GPUs only, so the planner
leaves these offers out (a slice's time-sliced throughput is no known fraction of the
card's); they are still listed and priced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from broker.domain import Fabric
from workloads.gpus import resolve


@dataclass(frozen=True)
class Network:
    gbps: float | None
    fabric: Fabric = Fabric.NONE
    nvlink: bool = False


# Exact instance types first, then family prefixes (longest prefix wins).
_AWS: dict[str, Network] = {
    "p6-b200.48xlarge": Network(3200, Fabric.EFA, True),
    "p5en.48xlarge": Network(3200, Fabric.EFA, True),
    "p5e.48xlarge": Network(3200, Fabric.EFA, True),
    "p5.48xlarge": Network(3200, Fabric.EFA, True),
    "p5.4xlarge": Network(100, Fabric.NONE, False),
    "p4de.24xlarge": Network(400, Fabric.EFA, True),
    "p4d.24xlarge": Network(400, Fabric.EFA, True),
    "p3dn.24xlarge": Network(100, Fabric.EFA, True),
    "p3.16xlarge": Network(25, Fabric.NONE, True),
    "p3.8xlarge": Network(10, Fabric.NONE, True),
    "g6e.48xlarge": Network(400, Fabric.EFA),
    "g6e.24xlarge": Network(200, Fabric.EFA),
    "g6e.16xlarge": Network(35, Fabric.EFA),
    "g6e.12xlarge": Network(100, Fabric.EFA),
    "g6e.8xlarge": Network(25, Fabric.EFA),
    "g6.48xlarge": Network(100, Fabric.EFA),
    "g6.24xlarge": Network(50, Fabric.NONE),
    "g6.16xlarge": Network(25, Fabric.NONE),
    "g6.12xlarge": Network(40, Fabric.NONE),
    "g5.48xlarge": Network(100, Fabric.EFA),
    "g5.24xlarge": Network(50, Fabric.NONE),
    "g5.16xlarge": Network(25, Fabric.NONE),
    "g5.12xlarge": Network(40, Fabric.NONE),
    "g5.8xlarge": Network(25, Fabric.NONE),
    "g4dn.metal": Network(100, Fabric.EFA),
    "g4dn.16xlarge": Network(50, Fabric.NONE),
    "g4dn.12xlarge": Network(50, Fabric.NONE),
    "g4dn.8xlarge": Network(50, Fabric.NONE),
}

_GCP: dict[str, Network] = {
    # A3: GPUDirect-TCPX (high), TCPXO (mega), RoCE RDMA (ultra); A4: RoCE.
    "a4-highgpu-8g": Network(3600, Fabric.ROCE, True),
    "a3-ultragpu-8g": Network(3600, Fabric.ROCE, True),
    "a3-megagpu-8g": Network(1800, Fabric.TCPXO, True),
    "a3-highgpu-8g": Network(1000, Fabric.TCPX, True),
    "a3-edgegpu-8g": Network(800, Fabric.NONE, True),
    "a3-highgpu-4g": Network(100, Fabric.NONE, True),
    "a3-highgpu-2g": Network(50, Fabric.NONE, True),
    "a3-highgpu-1g": Network(25, Fabric.NONE),
    "a2-megagpu-16g": Network(100, Fabric.NONE, True),
    "a2-ultragpu-8g": Network(100, Fabric.NONE, True),
    "a2-ultragpu-4g": Network(50, Fabric.NONE, True),
    "a2-ultragpu-2g": Network(32, Fabric.NONE, True),
    "a2-ultragpu-1g": Network(24, Fabric.NONE),
    "a2-highgpu-8g": Network(100, Fabric.NONE, True),
    "a2-highgpu-4g": Network(50, Fabric.NONE, True),
    "a2-highgpu-2g": Network(32, Fabric.NONE, True),
    "a2-highgpu-1g": Network(24, Fabric.NONE),
    "g2-standard-96": Network(100, Fabric.NONE),
    "g2-standard-48": Network(50, Fabric.NONE),
    "g2-standard-32": Network(32, Fabric.NONE),
    "g2-standard-24": Network(32, Fabric.NONE),
    "g2-standard-16": Network(32, Fabric.NONE),
    "g2-standard-12": Network(16, Fabric.NONE),
    "g2-standard-8": Network(16, Fabric.NONE),
    "g2-standard-4": Network(10, Fabric.NONE),
}

_AZURE: dict[str, Network] = {
    # ND: InfiniBand between nodes (NDR 8 x 400, HDR 8 x 200, EDR 100 Gb/s).
    "Standard_ND96isr_H200_v5": Network(3200, Fabric.INFINIBAND, True),
    "Standard_ND96isr_H100_v5": Network(3200, Fabric.INFINIBAND, True),
    "Standard_ND96amsr_A100_v4": Network(1600, Fabric.INFINIBAND, True),
    "Standard_ND96asr_v4": Network(1600, Fabric.INFINIBAND, True),
    "Standard_ND40rs_v2": Network(100, Fabric.INFINIBAND, True),
    # NC: Ethernet only, the sizes' expected network bandwidth.
    "Standard_NC80adis_H100_v5": Network(80),
    "Standard_NC40ads_H100_v5": Network(40),
    "Standard_NCC40ads_H100_v5": Network(40),
    "Standard_NC96ads_A100_v4": Network(80),
    "Standard_NC48ads_A100_v4": Network(40),
    "Standard_NC24ads_A100_v4": Network(20),
}

_TABLES = {"aws": _AWS, "gcp": _GCP, "azure": _AZURE}
_UNKNOWN = Network(None)


def network_of(provider: str, instance_type: str) -> Network:
    """Inter-node bandwidth and fabric of a known GPU instance type, else unknown."""
    table = _TABLES.get(provider, {})
    base = instance_type.removesuffix("-nolssd")
    return table.get(base, _UNKNOWN)


# GCP fixed-GPU machine families: (family, kind) -> the accelerator name SkyPilot and the
# billing catalog use. The GPU count is the ``-<n>g`` suffix, or the g2 table below.
_GCP_FIXED: dict[tuple[str, str], str] = {
    ("a2", "high"): "A100",
    ("a2", "mega"): "A100",
    ("a2", "ultra"): "A100-80GB",
    ("a3", "high"): "H100",
    ("a3", "edge"): "H100",
    ("a3", "mega"): "H100-MEGA",
    ("a3", "ultra"): "H200",
    ("a4", "high"): "B200",
}
_G2_GPUS = {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}
_FIXED_RE = re.compile(r"^(a\d)-([a-z]+)gpu-(\d+)g(?:-nolssd)?$")
_G2_RE = re.compile(r"^g2-standard-(\d+)$")


def gcp_fixed_gpus(machine_type: str) -> tuple[str, int] | None:
    """(accelerator name, count) a GCP machine type always carries, or None if it has none."""
    match = _FIXED_RE.match(machine_type)
    if match:
        family, kind, count = match.groups()
        name = _GCP_FIXED.get((family, kind))
        return (name, int(count)) if name else None
    match = _G2_RE.match(machine_type)
    if match and int(match.group(1)) in _G2_GPUS:
        return ("L4", _G2_GPUS[int(match.group(1))])
    return None


# GPUs an N1 host takes as attachable accelerators, with the GCE accelerator type name.
N1_ATTACHABLE: dict[str, str] = {
    "T4": "nvidia-tesla-t4",
    "V100": "nvidia-tesla-v100",
    "P100": "nvidia-tesla-p100",
    "P4": "nvidia-tesla-p4",
    "K80": "nvidia-tesla-k80",
}


def n1_shape(gpu: str, count: int) -> tuple[str, str]:
    """(host machine type, offer instance type) for ``count`` attachable GPUs on N1.

    The host gets 8 vCPUs per GPU (n1-standard-8/16/32/64), within every attachable GPU's
    vCPU limit. The offer's instance type names both parts, ``n1-standard-8+1xnvidia-tesla-t4``
    (the GCP adapter's form, which its launcher splits back), so that offers of different
    GPUs on the same host stay distinct.
    """
    host = f"n1-standard-{8 * count}"
    return host, f"{host}+{count}x{N1_ATTACHABLE[gpu]}"


def gpu_share(gpu: str, count: float) -> tuple[str, float | None]:
    """(name, memory GiB) of a fractional GPU: ``A10`` x 0.167 -> ``A10-1/6`` with a sixth
    of the card's memory (None when the card is unknown). Raises ValueError past one card."""
    share = Fraction(count).limit_denominator(16)
    if not 0 < share < 1:
        raise ValueError(f"{count:g} is neither a whole number of GPUs nor a share of one")
    card = resolve(gpu).spec
    memory = round(card.memory_gib * share.numerator / share.denominator, 2) if card else None
    return f"{gpu}-{share.numerator}/{share.denominator}", memory
