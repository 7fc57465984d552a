"""GPU names from every source resolve to one canonical part; unknown names are kept."""

from __future__ import annotations

import pytest

from workloads.gpus import GPUS, aliases_of, resolve


@pytest.mark.parametrize(
    ("name", "memory", "canonical"),
    [
        ("H100", None, "H100-80GB"),  # AWS GpuInfo, SkyPilot
        ("nvidia-h100-80gb", None, "H100-80GB"),  # GCP accelerator type
        ("NVIDIA H100 80GB", None, "H100-80GB"),  # marketing name
        ("H100-MEGA", None, "H100-80GB"),
        ("nvidia-h100-mega-80gb", None, "H100-80GB"),
        ("A100", None, "A100-40GB"),
        ("A100", 80, "A100-80GB"),  # AWS p4de reports "A100" with 80 GiB
        ("A100-80GB", None, "A100-80GB"),
        ("nvidia-tesla-a100", None, "A100-40GB"),
        ("nvidia-a100-80gb", None, "A100-80GB"),
        ("V100", 32, "V100-32GB"),
        ("nvidia-tesla-t4", None, "T4"),
        ("a10g", None, "A10G"),
        ("L40S", None, "L40S"),
        ("nvidia-l4", None, "L4"),
        ("H200", None, "H200-141GB"),
        ("nvidia-h200-141gb", None, "H200-141GB"),
        ("B200", None, "B200"),
    ],
)
def test_aliases_resolve(name: str, memory: float | None, canonical: str) -> None:
    resolved = resolve(name, memory)
    assert resolved.known
    assert resolved.name == canonical
    assert resolved.spec is GPUS[canonical]


def test_unknown_name_is_kept_and_flagged() -> None:
    resolved = resolve("  Quantum-9000 ")
    assert not resolved.known
    assert resolved.name == "Quantum-9000"
    assert resolved.spec is None


def test_required_parts_have_specs() -> None:
    for name in (
        "T4",
        "V100",
        "A10G",
        "L4",
        "L40S",
        "A100-40GB",
        "A100-80GB",
        "H100-80GB",
        "H200-141GB",
        "B200",
    ):
        spec = GPUS[name]
        assert spec.memory_gib > 0 and spec.bf16_tflops > 0 and spec.memory_bandwidth_gbps > 0
    assert GPUS["H100-80GB"].bf16_tflops > GPUS["A100-80GB"].bf16_tflops > GPUS["T4"].bf16_tflops
    assert GPUS["H200-141GB"].memory_gib > GPUS["H100-80GB"].memory_gib
    assert "nvidia-h100-80gb" in aliases_of("H100-80GB")
