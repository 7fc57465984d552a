"""Calibration: train the transformer briefly on this machine and measure FLOP/s.

The FLOPs of a step are counted with the same formula the estimator uses
(``workloads.estimate.flops_per_token``), so an estimate on the calibrated device
reproduces the measured step time by construction at the calibration shape, and tracks
it at other batch sizes as far as the device's efficiency holds. Imports torch when called.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workloads.estimate import Calibration, flops_per_token
from workloads.gpus import resolve
from workloads.presets import PRESETS
from workloads.spec import ModelShape

CPU_PRESET = "gpt-tiny"
GPU_PRESET = "gpt-125m"
WARMUP_STEPS = 3


@dataclass(frozen=True)
class Measurement:
    """Step times of a short real training run."""

    step_seconds: list[float]
    flops_per_step: float
    threads: int
    device: str  # "cpu" or "cuda"
    final_loss: float

    @property
    def median_step_seconds(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def achieved_flops(self) -> float:
        return self.flops_per_step / self.median_step_seconds


@dataclass(frozen=True)
class CalibrationResult:
    device: str  # "cpu:<model>" or a canonical GPU name
    gpu: str | None
    achieved_flops: float
    peak_flops: float | None
    mfu: float | None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def calibration(self) -> Calibration:
        return Calibration(device=self.device, achieved_flops=self.achieved_flops, mfu=self.mfu)


def cpu_name() -> str:
    """``cpu:<model name>`` from /proc/cpuinfo where it exists."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    model = model or platform.processor() or platform.machine() or "unknown"
    return f"cpu:{' '.join(model.split())}"[:128]


def measure(
    shape: ModelShape,
    *,
    batch: int,
    steps: int,
    device: str = "cpu",
    threads: int | None = None,
    seed: int = 0,
) -> Measurement:
    """Train ``shape`` for ``WARMUP_STEPS + steps`` steps of ``batch`` sequences; time each
    of the last ``steps`` (forward, backward, AdamW step)."""
    import torch

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(shape, batch, steps, torch.device(device), seed)
    finally:
        torch.set_num_threads(previous_threads)


def _train(shape: ModelShape, batch: int, steps: int, target: Any, seed: int) -> Measurement:
    import torch

    from workloads.gpt import build_model, random_batch, sample_text, token_tensor

    torch.manual_seed(seed)
    model = build_model(shape.gpt_config()).to(target)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    tokens = token_tensor(sample_text())
    generator = torch.Generator().manual_seed(seed)
    use_bf16 = target.type == "cuda"
    times: list[float] = []
    loss_value = float("nan")
    for index in range(WARMUP_STEPS + steps):
        x, y = random_batch(tokens, batch, shape.seq_len, generator)
        x, y = x.to(target), y.to(target)
        if use_bf16:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(target.type, dtype=torch.bfloat16, enabled=use_bf16):
            _, loss = model(x, y)
        assert loss is not None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if use_bf16:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if index >= WARMUP_STEPS:
            times.append(elapsed)
        loss_value = float(loss.detach())
    per_token = flops_per_token(shape.n_params(), shape.layers, shape.d_model, shape.seq_len)
    return Measurement(
        step_seconds=times,
        flops_per_step=per_token * batch * shape.seq_len,
        threads=torch.get_num_threads(),
        device=target.type,
        final_loss=loss_value,
    )


def calibrate(
    steps: int = 20,
    *,
    batch: int | None = None,
    preset: str | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> CalibrationResult:
    """Measure this machine's training FLOP/s: the GPU if torch sees one, else the CPU."""
    import torch

    if steps < 1:
        raise ValueError("steps must be >= 1")
    use_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    name = preset or (GPU_PRESET if use_gpu else CPU_PRESET)
    if name not in PRESETS:
        raise ValueError("preset must be one of " + ", ".join(PRESETS))
    shape = ModelShape.model_validate({"preset": name})
    batch = batch or (8 if use_gpu else 16)
    result = measure(
        shape, batch=batch, steps=steps, device="cuda" if use_gpu else "cpu", threads=threads
    )
    detail: dict[str, Any] = {
        "preset": name,
        "batch": batch,
        "seq_len": shape.seq_len,
        "steps": steps,
        "threads": result.threads,
        "step_seconds": result.median_step_seconds,
        "final_loss": result.final_loss,
    }
    if not use_gpu:
        return CalibrationResult(cpu_name(), None, result.achieved_flops, None, None, detail)
    props = torch.cuda.get_device_properties(0)
    resolved = resolve(torch.cuda.get_device_name(0), props.total_memory / 1024**3)
    peak = resolved.spec.peak_flops if resolved.spec is not None else None
    mfu = result.achieved_flops / peak if peak else None
    detail["device_name"] = torch.cuda.get_device_name(0)
    return CalibrationResult(resolved.name, resolved.name, result.achieved_flops, peak, mfu, detail)
