"""GPU specifications and the names every source uses for them.

Figures are vendor datasheet peaks: dense (no sparsity) bf16 tensor TFLOPS, or fp16 where
the part has no bf16 (T4, V100, P100); memory bandwidth in GB/s; NVLink bandwidth per GPU
in GB/s (0 where GPUs talk over PCIe). ``resolve`` maps a source's name to the canonical
one; an unknown name comes back unchanged with ``known=False`` so callers keep and flag
it rather than drop or guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    name: str  # canonical, e.g. "H100-80GB"
    vendor: str
    memory_gib: float
    bf16_tflops: float  # dense peak (fp16 for parts without bf16)
    memory_bandwidth_gbps: float  # GB/s
    nvlink_gbps: float  # GB/s per GPU, 0 if PCIe only
    pcie_gbps: float = 32.0  # GB/s per direction (PCIe 4.0 x16 by default)
    datacenter: bool = True
    bf16: bool = True

    @property
    def peak_flops(self) -> float:
        return self.bf16_tflops * 1e12


@dataclass(frozen=True)
class ResolvedGpu:
    name: str
    known: bool
    spec: GpuSpec | None


_SPECS: tuple[GpuSpec, ...] = (
    GpuSpec("K80", "NVIDIA", 12, 4.1, 240, 0, 16, bf16=False),
    GpuSpec("M60", "NVIDIA", 8, 4.8, 160, 0, 16, bf16=False),
    GpuSpec("P4", "NVIDIA", 8, 5.5, 192, 0, 16, bf16=False),
    GpuSpec("P100", "NVIDIA", 16, 18.7, 732, 0, 16, bf16=False),
    GpuSpec("V100", "NVIDIA", 16, 125, 900, 150, 16, bf16=False),
    GpuSpec("V100-32GB", "NVIDIA", 32, 125, 900, 150, 16, bf16=False),
    GpuSpec("T4", "NVIDIA", 16, 65, 320, 0, 16, bf16=False),
    GpuSpec("A10", "NVIDIA", 24, 125, 600, 0),
    GpuSpec("A10G", "NVIDIA", 24, 70, 600, 0),
    GpuSpec("L4", "NVIDIA", 24, 121, 300, 0),
    GpuSpec("L40", "NVIDIA", 48, 181, 864, 0),
    GpuSpec("L40S", "NVIDIA", 48, 362, 864, 0),
    GpuSpec("A100-40GB", "NVIDIA", 40, 312, 1555, 300),
    GpuSpec("A100-80GB", "NVIDIA", 80, 312, 2039, 300),
    GpuSpec("H100-80GB", "NVIDIA", 80, 989, 3350, 450, 64),
    GpuSpec("H100-NVL", "NVIDIA", 94, 835, 3900, 300, 64),
    GpuSpec("H200-141GB", "NVIDIA", 141, 989, 4800, 450, 64),
    GpuSpec("GH200", "NVIDIA", 96, 989, 4000, 450, 64),
    GpuSpec("B200", "NVIDIA", 180, 2250, 8000, 900, 64),
    GpuSpec("B300", "NVIDIA", 270, 2250, 8000, 900, 64),
    GpuSpec("A6000", "NVIDIA", 48, 155, 768, 0, datacenter=False),
    GpuSpec("RTX6000-Ada", "NVIDIA", 48, 364, 960, 0, datacenter=False),
    GpuSpec("RTX3090", "NVIDIA", 24, 71, 936, 0, datacenter=False),
    GpuSpec("RTX4090", "NVIDIA", 24, 165, 1008, 0, datacenter=False),
    GpuSpec("RTX5090", "NVIDIA", 32, 210, 1792, 0, 64, datacenter=False),
    GpuSpec("MI300X", "AMD", 192, 1307, 5300, 448, 64),
)

GPUS: dict[str, GpuSpec] = {spec.name: spec for spec in _SPECS}

# Source name (normalised by _key) -> canonical name. Names that differ only by
# memory ("A100" is 40 GB or 80 GB) are settled in ``resolve`` with the memory given.
_ALIASES: dict[str, str] = {
    # AWS GpuInfo names, SkyPilot and gpuhunt short names
    "k80": "K80",
    "m60": "M60",
    "p4": "P4",
    "p100": "P100",
    "v100": "V100",
    "v100-16gb": "V100",
    "v100-32gb": "V100-32GB",
    "t4": "T4",
    "t4g": "T4",
    "a10": "A10",
    "a10g": "A10G",
    "l4": "L4",
    "l40": "L40",
    "l40s": "L40S",
    "a100": "A100-40GB",
    "a100-40gb": "A100-40GB",
    "a100-80gb": "A100-80GB",
    "h100": "H100-80GB",
    "h100-80gb": "H100-80GB",
    "h100-mega": "H100-80GB",
    "h100-mega-80gb": "H100-80GB",
    "h100-sxm": "H100-80GB",
    "h100-nvl": "H100-NVL",
    "h200": "H200-141GB",
    "h200-141gb": "H200-141GB",
    "gh200": "GH200",
    "b200": "B200",
    "b300": "B300",
    "a6000": "A6000",
    "rtxa6000": "A6000",
    "rtx-a6000": "A6000",
    "rtx6000-ada": "RTX6000-Ada",
    "rtx3090": "RTX3090",
    "rtx4090": "RTX4090",
    "rtx5090": "RTX5090",
    "mi300x": "MI300X",
    # GCP accelerator types
    "nvidia-tesla-k80": "K80",
    "nvidia-tesla-p4": "P4",
    "nvidia-tesla-p100": "P100",
    "nvidia-tesla-v100": "V100",
    "nvidia-tesla-t4": "T4",
    "nvidia-l4": "L4",
    "nvidia-tesla-a100": "A100-40GB",
    "nvidia-a100-80gb": "A100-80GB",
    "nvidia-h100-80gb": "H100-80GB",
    "nvidia-h100-mega-80gb": "H100-80GB",
    "nvidia-h200-141gb": "H200-141GB",
    "nvidia-b200": "B200",
    # marketing / driver names
    "nvidia-h100-80gb-hbm3": "H100-80GB",
    "nvidia-h100": "H100-80GB",
    "nvidia-a100-sxm4-40gb": "A100-40GB",
    "nvidia-a100-sxm4-80gb": "A100-80GB",
    "nvidia-a100-pcie-40gb": "A100-40GB",
    "nvidia-a100-80gb-pcie": "A100-80GB",
    "tesla-t4": "T4",
    "tesla-v100": "V100",
    "tesla-v100-sxm2-16gb": "V100",
    "tesla-v100-sxm2-32gb": "V100-32GB",
    "nvidia-a10g": "A10G",
    "nvidia-l40s": "L40S",
    "nvidia-h200": "H200-141GB",
    # torch.cuda.get_device_name() of workstation and gaming parts (vendor prefix dropped)
    "geforce-rtx-3090": "RTX3090",
    "geforce-rtx-4090": "RTX4090",
    "geforce-rtx-5090": "RTX5090",
    "rtx-6000-ada-generation": "RTX6000-Ada",
}

# Names whose memory decides the part: (alias key, memory GiB at least) -> canonical.
_BY_MEMORY: dict[str, tuple[tuple[float, str], ...]] = {
    "A100-40GB": ((70, "A100-80GB"),),
    "V100": ((24, "V100-32GB"),),
}


def _key(name: str) -> str:
    text = name.strip().lower().replace("_", "-").replace(" ", "-")
    text = re.sub(r"-+", "-", text)
    return text


def resolve(name: str, memory_gib: float | None = None) -> ResolvedGpu:
    """The canonical GPU for a source's name, using its memory where the name is ambiguous."""
    raw = name.strip()
    canonical = raw if raw in GPUS else _ALIASES.get(_key(raw))
    if canonical is None:
        # "NVIDIA H100 80GB" style: drop the vendor and try again.
        key = _key(raw)
        for prefix in ("nvidia-", "amd-", "tesla-"):
            key = key.removeprefix(prefix)
        canonical = _ALIASES.get(key)
    if canonical is None:
        return ResolvedGpu(raw, False, None)
    if memory_gib is not None:
        for threshold, bigger in _BY_MEMORY.get(canonical, ()):
            if memory_gib >= threshold:
                canonical = bigger
    return ResolvedGpu(canonical, True, GPUS[canonical])


def canonical_names() -> list[str]:
    return sorted(GPUS)


def aliases_of(canonical: str) -> list[str]:
    return sorted(alias for alias, target in _ALIASES.items() if target == canonical)
