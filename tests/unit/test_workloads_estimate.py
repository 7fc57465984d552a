"""The performance model against published figures, and the properties it must keep."""

from __future__ import annotations

import math
from typing import Any

import pytest

from workloads.estimate import (
    GIB,
    Calibration,
    Hardware,
    estimate_inference,
    estimate_training,
    flops_per_token,
    memory_per_gpu,
    min_gpus,
    must_span_nodes,
    optimal_checkpoint_interval,
    replicas_needed,
    spot_overhead,
    sync_seconds,
    training_flops,
)
from workloads.regions import AREAS, area_of
from workloads.spec import InferenceJob, TrainingJob, parse_spec


def job(**overrides: Any) -> TrainingJob:
    data: dict[str, Any] = {
        "name": "t",
        "model": {"preset": "llama-7b"},
        "tokens": 10**9,
        "global_batch": 64,
    }
    data.update(overrides)
    spec = parse_spec(data)
    assert isinstance(spec, TrainingJob)
    return spec


def serving(**overrides: Any) -> InferenceJob:
    data: dict[str, Any] = {
        "kind": "inference",
        "name": "s",
        "model": {"preset": "llama-7b"},
        "request_rate": 20,
        "input_tokens": 512,
        "output_tokens": 256,
        "slo": {"ttft_ms": 1000, "tpot_ms": 50},
    }
    data.update(overrides)
    spec = parse_spec(data)
    assert isinstance(spec, InferenceJob)
    return spec


# --- published figures -------------------------------------------------------------------


def test_chinchilla_70b_on_1_4t_tokens() -> None:
    # Chinchilla: 80 layers, d_model 8192, 2048-token context; ~5.9e23 FLOPs (6ND).
    total = flops_per_token(70e9, 80, 8192, 2048) * 1.4e12
    assert total == pytest.approx(5.9e23, rel=0.06)
    shaped = job(
        model={"layers": 80, "d_model": 8192, "heads": 64, "seq_len": 2048, "params": 70 * 10**9},
        tokens=14 * 10**11,
    )
    assert training_flops(shaped) == pytest.approx(total)


def test_gpt3_175b_on_300b_tokens() -> None:
    total = flops_per_token(175e9, 96, 12288, 2048) * 300e9
    assert total == pytest.approx(3.14e23, rel=0.05)


def test_7b_adam_states_need_two_80gb_gpus_under_fsdp() -> None:
    spec = job(parallelism="fsdp")
    states = spec.model.n_params() * 16
    assert 105e9 < states < 115e9  # ~112 GB of weights, gradients and Adam states
    one = estimate_training(spec, Hardware("H100-80GB", 1))
    assert not one.fits and "GiB" in (one.reason or "")
    assert memory_per_gpu(spec, 1) > 80 * GIB
    two = estimate_training(spec, Hardware("H100-80GB", 2))
    assert two.fits, two.reason
    assert two.memory_per_gpu_gib < 80 and two.memory_headroom_gib > 0
    assert min_gpus(spec, "H100-80GB") == 2
    assert min_gpus(spec, "A100-40GB") == 3
    # DDP replicates the states: no number of 80 GB GPUs holds them.
    assert min_gpus(job(parallelism="ddp"), "H100-80GB") is None
    assert not estimate_training(job(parallelism="ddp"), Hardware("H100-80GB", 8)).fits


def test_70b_must_span_nodes_of_80gb_gpus() -> None:
    spec = job(model={"preset": "llama-70b"})
    assert must_span_nodes(spec, "H100-80GB", 8) is True
    assert must_span_nodes(job(), "H100-80GB", 8) is False
    assert min_gpus(spec, "B200") is not None
    assert min_gpus(spec, "B200") < min_gpus(spec, "H100-80GB")  # type: ignore[operator]


def test_step_time_follows_peak_times_mfu() -> None:
    spec = job(model={"preset": "gpt-125m"}, global_batch=32, parallelism="ddp")
    est = estimate_training(spec, Hardware("H100-80GB", 1))
    tokens_per_step = 32 * 1024
    expected = flops_per_token(spec.model.n_params(), 12, 768, 1024) * tokens_per_step
    expected /= 989e12 * 0.40
    assert est.step_seconds == pytest.approx(expected, rel=1e-6)
    assert est.mfu == pytest.approx(0.40)
    writes = spec.total_steps() // spec.checkpoint_every * est.checkpoint_seconds
    assert est.checkpoint_seconds == pytest.approx(spec.model.n_params() * 14 / 2e9)
    assert est.hours == pytest.approx((spec.total_steps() * est.step_seconds + writes) / 3600)
    consumer = estimate_training(spec, Hardware("RTX4090", 1))
    assert consumer.assumed_mfu < est.assumed_mfu
    calibrated = estimate_training(
        spec, Hardware("H100-80GB", 1), calibration=Calibration("H100-80GB", 5e14, 0.5)
    )
    assert calibrated.step_seconds == pytest.approx(expected * 0.40 / 0.5, rel=1e-6)
    other = Calibration("A100-80GB", 1e14, 0.1)  # another GPU's calibration is ignored
    assert estimate_training(spec, Hardware("H100-80GB", 1), calibration=other) == est


# --- properties ---------------------------------------------------------------------------

SHAPES = ["gpt-125m", "gpt-1.3b", "llama-7b", "llama-13b", "llama-70b"]


@pytest.mark.parametrize("preset", SHAPES)
@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_more_gpus_never_raise_total_flops(preset: str, parallelism: str) -> None:
    spec = job(model={"preset": preset}, parallelism=parallelism, global_batch=512)
    previous = math.inf
    for gpus in (1, 2, 4, 8, 16, 32, 64, 128):
        per_node = min(gpus, 8)
        est = estimate_training(spec, Hardware("H100-80GB", per_node, gpus // per_node, 400))
        assert est.flops_total <= previous * (1 + 1e-12)
        previous = est.flops_total
    assert previous >= training_flops(spec)


@pytest.mark.parametrize("preset", SHAPES)
@pytest.mark.parametrize("nodes", [2, 4, 16])
def test_a_faster_fabric_never_slows_a_step(preset: str, nodes: int) -> None:
    spec = job(model={"preset": preset}, global_batch=1024)
    previous = math.inf
    for gbps, rdma in [
        (10, False),
        (25, False),
        (100, False),
        (100, True),
        (400, True),
        (800, True),
        (3200, True),
    ]:
        est = estimate_training(spec, Hardware("H100-80GB", 8, nodes, gbps, rdma))
        assert est.step_seconds <= previous
        previous = est.step_seconds
    slow = estimate_training(spec, Hardware("H100-80GB", 8, nodes, 10, False))
    fast = estimate_training(spec, Hardware("H100-80GB", 8, nodes, 3200, True))
    assert slow.mfu <= fast.mfu


def test_sixteen_nodes_without_rdma_spend_more_time_in_all_reduce() -> None:
    spec = job(model={"preset": "llama-13b"}, global_batch=256)
    tcp = estimate_training(spec, Hardware("H100-80GB", 8, 16, 100, False))
    efa = estimate_training(spec, Hardware("H100-80GB", 8, 16, 3200, True))
    assert tcp.comm_seconds > tcp.compute_seconds
    assert efa.comm_seconds < 0.1 * efa.compute_seconds
    assert tcp.mfu < 0.5 * efa.mfu
    # The same bytes inside one node over NVLink are cheaper than over PCIe.
    nvlink = sync_seconds(1e9, 8, 1, intra_gbps=450, fabric_gbps=None, rdma=False, fsdp=False)
    pcie = sync_seconds(1e9, 8, 1, intra_gbps=32, fabric_gbps=None, rdma=False, fsdp=False)
    assert nvlink < pcie


def test_constraints_and_precision_make_an_option_infeasible() -> None:
    spec = job(constraints={"gpus": ["A100-80GB"], "max_nodes": 2, "min_interconnect_gbps": 400})
    assert "constraints.gpus" in (estimate_training(spec, Hardware("H100-80GB", 8)).reason or "")
    over = estimate_training(spec, Hardware("A100-80GB", 8, 4, 800, True))
    assert "max_nodes" in (over.reason or "")
    slow = estimate_training(spec, Hardware("A100-80GB", 8, 2, 100, False))
    assert "min_interconnect_gbps" in (slow.reason or "")
    assert "bf16" in (estimate_training(job(), Hardware("V100", 8, 4)).reason or "")
    fixed = job(nodes=2, gpus_per_node=8)
    assert "exactly 2" in (estimate_training(fixed, Hardware("H100-80GB", 8, 1)).reason or "")
    assert "8 GPUs per node" in (estimate_training(fixed, Hardware("H100-80GB", 4, 2)).reason or "")


def test_cpu_nodes_use_the_calibration_or_a_conservative_default() -> None:
    spec = job(
        model={"preset": "gpt-tiny"}, steps=100, tokens=None, precision="fp32", global_batch=16
    )
    default = estimate_training(spec, Hardware(None, 0, 1, vcpus=2))
    measured = estimate_training(
        spec, Hardware(None, 0, 1, vcpus=2), calibration=Calibration("cpu:x", 1e11, None)
    )
    assert default.fits and measured.fits
    per_step = flops_per_token(spec.model.n_params(), 4, 144, 64) * 16 * 64
    assert measured.step_seconds == pytest.approx(per_step / 1e11)
    assert default.step_seconds > measured.step_seconds  # the default is conservative
    two = estimate_training(
        spec.model_copy(update={"nodes": 2}),
        Hardware(None, 0, 2, vcpus=2),
        calibration=Calibration("cpu:x", 1e11, None),
    )
    assert two.compute_seconds == pytest.approx(measured.step_seconds / 2)
    assert not estimate_training(job(), Hardware(None, 0, 1)).fits  # bf16 7B on a CPU
    small = Hardware(None, 0, 1, vcpus=2, memory_gib=1)
    assert "GiB" in (estimate_training(job(precision="fp32"), small).reason or "")


# --- spot ---------------------------------------------------------------------------------


def test_spot_overhead_and_the_optimal_interval() -> None:
    lam, cost, restart = 0.1, 0.05, 0.2
    tau = optimal_checkpoint_interval(lam, cost)
    assert tau == pytest.approx(1.0)  # sqrt(2 * 0.05 / 0.1)
    best = spot_overhead(lam, cost, restart)
    assert best == pytest.approx(cost / tau + lam * (restart + tau / 2))
    for other in (0.25, 0.5, 2.0, 4.0):
        assert spot_overhead(lam, cost, restart, other) >= best
    assert spot_overhead(0.0, cost, restart) == 0.0
    assert spot_overhead(0.0, cost, restart, 2.0) == pytest.approx(cost / 2)
    assert spot_overhead(0.5, cost, restart) > spot_overhead(0.1, cost, restart)
    assert spot_overhead(lam, 0.0, restart) == pytest.approx(lam * restart)
    with pytest.raises(ValueError):
        spot_overhead(lam, cost, restart, 0.0)


# --- inference ----------------------------------------------------------------------------


def test_decode_is_memory_bound_and_faster_with_more_bandwidth() -> None:
    spec = serving()
    h100 = estimate_inference(spec, "H100-80GB", 1)
    a10g = estimate_inference(spec, "A10G", 1)
    assert h100.fits
    # One sequence per step reads all 13.5 GB of weights: >= 4 ms on 3.35 TB/s.
    single = estimate_inference(serving(slo={"ttft_ms": 1000, "tpot_ms": 5}), "H100-80GB", 1)
    assert not single.fits and "per output token" in (single.reason or "")
    assert h100.requests_per_second > a10g.requests_per_second
    assert h100.tpot_ms <= 50 and h100.ttft_ms <= 1000
    assert replicas_needed(spec, h100) == math.ceil(20 / h100.requests_per_second)
    assert replicas_needed(serving(min_replicas=9), h100) == 9
    split = serving(regions={"us": 0.5, "europe": 0.5})
    assert replicas_needed(split, h100) >= replicas_needed(spec, h100)  # type: ignore[operator]


def test_a_70b_model_needs_tensor_parallelism_to_serve() -> None:
    spec = serving(model={"preset": "llama-70b"})
    one = estimate_inference(spec, "H100-80GB", 1)
    assert not one.fits and "KV cache" in (one.reason or "")
    best = estimate_inference(spec, "H100-80GB")
    assert best.fits and best.gpus_per_replica >= 2
    assert not estimate_inference(spec, "T4").fits


# --- regions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "area"),
    [
        ("us-east-1", "us"),
        ("us-east-1a", "us"),
        ("us-gov-west-1", "us"),
        ("us-central1", "us"),
        ("us-central1-b", "us"),
        ("eastus2", "us"),
        ("ca-central-1", "canada"),
        ("northamerica-northeast1", "canada"),
        ("sa-east-1", "latin-america"),
        ("southamerica-east1", "latin-america"),
        ("brazilsouth", "latin-america"),
        ("eu-west-1", "europe"),
        ("europe-west4", "europe"),
        ("westeurope", "europe"),
        ("uksouth", "europe"),
        ("me-central-1", "middle-east"),
        ("me-west1", "middle-east"),
        ("af-south-1", "africa"),
        ("ap-southeast-1", "asia"),
        ("ap-northeast-1", "asia"),
        ("asia-east1", "asia"),
        ("japaneast", "asia"),
        ("ap-southeast-2", "oceania"),
        ("australia-southeast1", "oceania"),
        ("australiaeast", "oceania"),
        ("europe", "europe"),
        ("EU", "europe"),
        ("local", None),
        ("mars-north-1", None),
    ],
)
def test_area_of(region: str, area: str | None) -> None:
    assert area_of(region) == area
    assert area is None or area in AREAS
