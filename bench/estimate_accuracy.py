"""How well does a calibrated estimate predict a real training step on this CPU?

Usage: python bench/estimate_accuracy.py [--threads N] [--steps N]
Calibrates once (gpt-tiny, batch 16), then trains several shapes and batch sizes for real
and prints the estimated and measured median step times and their ratio.
"""

from __future__ import annotations

import argparse

from workloads.calibrate import calibrate, measure
from workloads.estimate import Hardware, estimate_training
from workloads.spec import TrainingJob, parse_spec

CASES = [
    ("gpt-tiny", {}, 8),
    ("gpt-tiny", {}, 16),
    ("gpt-tiny", {}, 64),
    ("gpt-tiny x2 layers", {"layers": 8}, 16),
    ("gpt-tiny d256", {"d_model": 256, "heads": 4}, 16),
    ("gpt-tiny seq128", {"seq_len": 128}, 16),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    result = calibrate(args.steps, device="cpu", threads=args.threads)
    cal = result.calibration
    print(f"calibration: {cal.device}, {cal.achieved_flops / 1e9:.1f} GFLOP/s")
    print(f"{'case':<20} {'batch':>5} {'estimated s':>12} {'measured s':>11} {'ratio':>6}")
    for label, shape, batch in CASES:
        job = parse_spec(
            {
                "name": "bench",
                "model": {"preset": "gpt-tiny", **shape},
                "steps": args.steps,
                "global_batch": batch,
                "precision": "fp32",
                "parallelism": "ddp",
            }
        )
        assert isinstance(job, TrainingJob)
        estimated = estimate_training(job, Hardware(None, 0, 1), calibration=cal).step_seconds
        measured = measure(job.model, batch=batch, steps=args.steps, threads=args.threads)
        real = measured.median_step_seconds
        print(f"{label:<20} {batch:>5} {estimated:>12.4f} {real:>11.4f} {estimated / real:>6.2f}")


if __name__ == "__main__":
    main()
