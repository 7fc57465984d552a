"""Serving sizes: GPUs per replica as the spec gives them, request mixes and their rules,
the replica model's physics (decode reads HBM, prefill does FLOPs, KV memory caps the
batch), and the planner routing each size class to the GPU type that serves it cheapest."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from broker.errors import SpecError
from scheduler.candidates import build_problem
from scheduler.problem import Pool
from scheduler.solve import solve
from scheduler.validate import check
from workloads.estimate import (
    GIB,
    USABLE_MEMORY_FRACTION,
    estimate_inference,
    estimate_inference_cpu,
)
from workloads.gpus import GPUS
from workloads.spec import InferenceJob, parse_spec, spec_to_dict

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SLO = {"ttft_ms": 800, "tpot_ms": 40}
LONG = {"name": "long", "share": 0.0625, "input_tokens": 6000, "output_tokens": 400}
SHORT = {"name": "short", "share": 0.9375, "input_tokens": 300, "output_tokens": 48}


def serving(**fields: Any) -> InferenceJob:
    data: dict[str, Any] = {
        "kind": "inference",
        "name": "s",
        "model": "llama-7b",
        "request_rate": 20,
        "input_tokens": 1024,
        "output_tokens": 256,
        "slo": SLO,
    }
    data.update(fields)
    spec = parse_spec({k: v for k, v in data.items() if v is not None})
    assert isinstance(spec, InferenceJob)
    return spec


def _pool(gpu: str, gpus: int, price: float, zone: str = "us-central1-a") -> Pool:
    return Pool("gcp", zone[:-2], zone, f"{gpu}-{gpus}g", "on_demand", gpu, gpus, price, 64)


# --- GPUs per replica ---------------------------------------------------------------------


def test_an_inference_gpu_count_is_gpus_per_replica() -> None:
    short = {
        "model": "gpt-1.3b",
        "request_rate": 20,
        "input_tokens": 1024,
        "output_tokens": 256,
        "slo": SLO,
    }
    pinned = parse_spec({**short, "resources": {"accelerators": "L4:1"}})  # kind implied
    assert isinstance(pinned, InferenceJob)
    assert pinned.gpus_per_replica == 1 and pinned.constraints.gpus == ["L4"]
    assert parse_spec(spec_to_dict(pinned)) == pinned
    free = serving(**short)
    assert estimate_inference(free, "L4").gpus_per_replica > 1  # wider replicas win per GPU
    one = estimate_inference(pinned, "L4")
    assert one.fits and one.gpus_per_replica == 1
    two = estimate_inference(pinned, "L4", 2)
    assert not two.fits and "asks for 1 GPU(s) per replica" in (two.reason or "")

    node = [_pool("L4", 8, 4.47)]
    for spec, each in ((pinned, 1), (free, estimate_inference(free, "L4").gpus_per_replica)):
        problem = build_problem([(1, spec)], node, now=NOW)
        c = problem.candidates
        assert len(c) and all(int(c.replicas[i]) == 8 // each for i in range(len(c)))
        plan = solve(problem, time_limit=5)
        assert plan.unplaced == {} and check(problem, plan) == []

    wide = parse_spec({**short, "resources": {"accelerators": "L4:2"}})
    plan = solve(build_problem([(1, wide)], [_pool("L4", 1, 0.56)], now=NOW), time_limit=5)
    assert "a replica needs 2 GPUs per node" in plan.unplaced[1]


def test_a_gpu_count_that_does_not_split_the_heads_is_refused_with_its_reason() -> None:
    spec = serving(gpus_per_replica=3)
    est = estimate_inference(spec, "H100-80GB")
    assert not est.fits and "32 heads" in (est.reason or "")


def test_a_spec_that_asks_for_gpus_per_replica_is_not_served_on_cpus() -> None:
    small = {
        "model": "gpt-tiny",
        "precision": "fp32",
        "input_tokens": 32,
        "output_tokens": 32,
        "slo": {"ttft_ms": 500, "tpot_ms": 50},
    }
    assert estimate_inference_cpu(serving(**small), vcpus=2).fits
    pinned = estimate_inference_cpu(serving(**small, gpus_per_replica=1), vcpus=2)
    assert not pinned.fits and "asks for GPUs" in (pinned.reason or "")


# --- the mix as a spec field --------------------------------------------------------------


def test_a_mix_fills_the_mean_request_and_round_trips() -> None:
    spec = serving(input_tokens=None, output_tokens=None, mix=[LONG, SHORT])
    assert spec.input_tokens == round(0.0625 * 6000 + 0.9375 * 300)
    assert spec.output_tokens == round(0.0625 * 400 + 0.9375 * 48)
    assert [c.name for c in spec.request_classes()] == ["long", "short"]
    assert parse_spec(spec_to_dict(spec)) == spec
    plain = serving()
    (whole,) = plain.request_classes()
    assert (whole.share, whole.input_tokens, whole.output_tokens) == (1.0, 1024, 256)


@pytest.mark.parametrize(
    ("mix", "extra", "field", "words"),
    [
        ([{**LONG, "share": 0.5}], {}, "mix", "sum to 1"),
        ([LONG, {**SHORT, "name": "long"}], {}, "mix", "different"),
        ([{**LONG, "share": 1.0, "colour": 1}], {}, "mix[0].colour", "allowed: name, share"),
        ([{**LONG, "share": 1.0, "name": "Long!"}], {}, "mix[0].name", "1-16 characters"),
        ([LONG, {**SHORT, "input_tokens": 0}], {}, "mix[1].input_tokens", ">= 1"),
        ([{**LONG, "share": 1.0, "output_tokens": True}], {}, "mix[0].output_tokens", "number"),
        ([{**LONG, "share": 0}], {}, "mix[0].share", "> 0"),
        ([LONG, SHORT], {"input_tokens": 5}, "input_tokens", "mix's mean"),
        ("long", {}, "mix", "must be a list"),
        ([LONG] * 17, {}, "mix", "too many"),
    ],
)
def test_a_bad_mix_is_one_line_naming_the_field(
    mix: Any, extra: dict[str, Any], field: str, words: str
) -> None:
    data = {
        "kind": "inference",
        "model": "llama-7b",
        "request_rate": 20,
        "slo": SLO,
        "mix": mix,
        **extra,
    }
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    error = caught.value
    assert error.field == field and words in error.message
    assert error.exit_code == 2 and "\n" not in str(error)


# --- physics ------------------------------------------------------------------------------


def test_decode_is_bound_by_memory_bandwidth_and_prefill_by_flops() -> None:
    # one sequence decoding reads all 13.5 GB of weights each token
    tight = serving(input_tokens=64, output_tokens=512, slo={"ttft_ms": 800, "tpot_ms": 1})
    h100, a100 = (estimate_inference(tight, g, 1) for g in ("H100-80GB", "A100-80GB"))
    assert not h100.fits and "per output token" in (h100.reason or "")
    weights = 6_738_415_616 * 2
    assert h100.tpot_ms > weights / (3350e9) * 1000  # never faster than the HBM allows
    bandwidth = GPUS["H100-80GB"].memory_bandwidth_gbps / GPUS["A100-80GB"].memory_bandwidth_gbps
    assert a100.tpot_ms / h100.tpot_ms == pytest.approx(bandwidth, rel=0.02)
    # a long prompt's first token waits for its prefill FLOPs
    prompt = serving(input_tokens=6000, output_tokens=16, slo={"ttft_ms": 1, "tpot_ms": 800})
    h100, a100 = (estimate_inference(prompt, g, 1) for g in ("H100-80GB", "A100-80GB"))
    assert "first token" in (h100.reason or "")
    assert h100.ttft_ms > 2 * 6_738_415_616 * 6000 / 989e12 * 1000
    flops = GPUS["H100-80GB"].bf16_tflops / GPUS["A100-80GB"].bf16_tflops
    assert a100.ttft_ms / h100.ttft_ms == pytest.approx(flops, rel=0.1)


def test_the_kv_cache_left_beside_the_weights_caps_the_batch() -> None:
    loose = {"ttft_ms": 60_000, "tpot_ms": 10_000}
    per_token = 2 * 32 * 4096 * 2  # K and V, 32 layers, d_model 4096, 16-bit
    for prompt in (1000, 4000):
        spec = serving(input_tokens=prompt, output_tokens=1000, slo=loose)
        est = estimate_inference(spec, "A100-80GB", 1)
        room = 80 * GIB * USABLE_MEMORY_FRACTION - 6_738_415_616 * 2
        assert est.fits and est.batch == int(room // ((prompt + 1000) * per_token))


# --- routing classes ----------------------------------------------------------------------


def test_each_size_class_goes_to_the_gpu_type_that_serves_it_cheapest() -> None:
    """Long prompts hold much KV cache and decode from HBM: the A100's bytes/s per dollar
    win. Short ones are mostly prefill FLOPs: the H100's FLOP/s per dollar win. A mixed
    endpoint split that way costs less than either type alone."""
    spec = serving(request_rate=1024, input_tokens=None, output_tokens=None, mix=[LONG, SHORT])
    h100, a100 = _pool("H100-80GB", 8, 33.6), _pool("A100-80GB", 8, 14.8)
    costs = {}
    for label, pools in (("mix", [h100, a100]), ("h100", [h100]), ("a100", [a100])):
        problem = build_problem([(1, spec)], pools, now=NOW)
        plan = solve(problem, time_limit=10)
        assert plan.unplaced == {} and check(problem, plan) == []
        costs[label] = plan.objective
        if label != "mix":
            continue
        c = problem.candidates
        served: dict[tuple[str, str | None], float] = {}
        for a in plan.assignments:
            key = problem.jobs[0].demand[int(c.area[a.candidate])][0]
            gpu = problem.pools[int(c.pool[a.candidate])].gpu
            served[key, gpu] = served.get((key, gpu), 0.0) + float(c.rate[a.candidate]) * a.count
        assert set(problem.jobs[0].demand) == {("anywhere/long", 64.0), ("anywhere/short", 960.0)}
        assert ("anywhere/long", "H100-80GB") not in served
        assert served["anywhere/short", "H100-80GB"] > 0.5 * 960
    assert costs["mix"] < min(costs["h100"], costs["a100"])
