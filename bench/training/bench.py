"""Training throughput: the product path (a Ray job on booted nodes) against plain
torch.distributed, same loop, same steps.

    python bench/training/bench.py                 # CPU: gpt-tiny, 2 workers (loopback nodes)
    python bench/training/bench.py --gpu           # GPU: gpt-125m, bf16, one GPU, prints MFU

Both runs use ``workloads.train.train_loop`` with the same config and world size. The Ray
run is what ``gpubroker submit`` does on the local provider: the nodes boot the generated
script, the broker publishes the head and submits ``workloads.driver`` as a Ray job whose
progress events it reads from the job's logs. The steady-state rate counts only the steps
after ``--warmup`` (from the timestamps of the progress records); the cluster's boot
(launch to a head that answers) and the Ray job's overhead (submit to the first measured
step) are reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from workloads.train import Session, TrainConfig, train_loop  # noqa: E402

TINY = {"n_layer": 4, "n_head": 4, "d_model": 144, "seq_len": 64, "vocab_size": 256}
GPT_125M = {"n_layer": 12, "n_head": 12, "d_model": 768, "seq_len": 1024, "vocab_size": 50257}


class PlainSession(Session):
    """torch.distributed already set up by the bench; no checkpoints kept."""

    def __init__(self, rank: int, world: int) -> None:
        self.world_rank, self.world_size = rank, world

    def resume_from(self) -> Path | None:
        return None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _plain_worker(rank: int, world: int, port: int, config: dict[str, Any]) -> None:
    import torch.distributed as dist

    cfg = TrainConfig(**config)
    backend = "nccl" if cfg.use_gpu else "gloo"
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        train_loop(cfg, PlainSession(rank, world))
    finally:
        dist.destroy_process_group()


def run_plain(cfg: TrainConfig) -> float:
    """Seconds from start to the end of the run; metrics land in cfg.metrics_path."""
    from dataclasses import asdict

    import torch.multiprocessing as mp

    started = time.time()
    if cfg.num_workers == 1:
        train_loop(cfg, PlainSession(0, 1))
    else:
        mp.spawn(
            _plain_worker,
            args=(cfg.num_workers, _free_port(), asdict(cfg)),
            nprocs=cfg.num_workers,
            join=True,
        )
    return started


def run_ray(cfg: TrainConfig, home: Path) -> tuple[float, float, list[dict[str, Any]]]:
    """Boot the nodes, run the GPT as a Ray job; (launch time, submit time, progress)."""
    from dataclasses import asdict

    from broker.config import load_settings
    from broker.services.execution import node_boot, ray_jobs
    from broker.services.execution.run_specs import GPT_LOOP
    from providers.base import META_HEAD, LaunchRequest
    from providers.local import LocalProvider
    from workloads.driver import RunSpec

    settings = load_settings(
        {
            "GPUBROKER_HOME": str(home),
            "GPUBROKER_RAY_PORT": "6480",
            "GPUBROKER_RAY_DASHBOARD_PORT": "8275",
        }
    )
    provider = LocalProvider(settings)
    cluster = node_boot.cluster_spec(settings, "local", "bench")
    launched = time.time()
    nodes = provider.launch(
        LaunchRequest(
            request_id="bench",
            region="local",
            zone="local",
            instance_type="local-node",
            nodes=cfg.num_workers,
            owner="gpubroker-bench",
            user_data=node_boot.boot_script(cluster),
        )
    )
    ids = [node.instance_id for node in nodes]
    try:
        provider.set_metadata(ids, {META_HEAD: nodes[0].private_address or ""})
        head = ray_jobs.Head(f"http://{nodes[0].address}:{cluster.dashboard_port}", cluster.token)
        client = ray_jobs.connect(head, 300)
        run = RunSpec(
            mode="train",
            resource=cluster.resource,
            nodes=cfg.num_workers,
            train=GPT_LOOP,
            config=asdict(replace(cfg, metrics_path=None)),
            name=cfg.name,
            storage=cfg.storage_path,
        )
        submitted = time.time()
        job = client.submit_job(
            entrypoint=ray_jobs.ENTRYPOINT,
            runtime_env=ray_jobs.runtime_env(run.to_env(), {}, None),
        )
        while not client.get_job_status(job).is_terminal():
            time.sleep(1.0)
        events = ray_jobs.parse_events(client.get_job_logs(job).splitlines())
        if str(client.get_job_status(job).value) != "SUCCEEDED":
            raise SystemExit(f"the Ray job failed: {client.get_job_logs(job)[-2000:]}")
    finally:
        provider.terminate(ids, "bench")
    return launched, submitted, [e for e in events if e.get("event") == "progress"]


def progress_of(metrics_path: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    return [r for r in records if r.get("event") == "progress"]


def steady(progress: list[dict[str, Any]], warmup: int, started: float) -> dict[str, float]:
    base = next(r for r in progress if r["step"] >= warmup)
    last = progress[-1]
    seconds = last["time"] - base["time"]
    out = {
        "tokens_per_s": (last["tokens"] - base["tokens"]) / seconds,
        "to_first_step_s": base["time"] - started,
        "total_s": last["time"] - started,
        "loss": last["loss"],
    }
    if "mfu" in last:
        out["mfu"] = sum(r["mfu"] for r in progress if r["step"] > warmup) / max(
            1, len([r for r in progress if r["step"] > warmup])
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="gpt-125m, bf16, one GPU, MFU")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16, help="global batch (sequences)")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpubroker-bench-"))
    base = TrainConfig(
        name="bench",
        storage_path=str(work / "runs"),
        metrics_path="",
        model=TINY,
        steps=args.steps,
        global_batch=args.batch,
        learning_rate=1e-3,
        checkpoint_every=args.steps,
        report_every=5,
        num_workers=args.world,
    )
    if args.gpu:
        import torch

        from workloads.gpus import resolve

        if not torch.cuda.is_available():
            print("no GPU here: the --gpu mode needs one", file=sys.stderr)
            return 2
        spec = resolve(torch.cuda.get_device_name(0)).spec
        base = replace(
            base,
            model=GPT_125M,
            precision="bf16",
            use_gpu=True,
            num_workers=1,
            peak_flops_per_worker=spec.bf16_tflops * 1e12 if spec else None,
        )
        args.skip_ray = True
    if not args.gpu:
        # What Ray sets for each one-CPU worker; without it the plain workers' OpenMP pools
        # fight over the cores and the baseline runs at half speed.
        os.environ["OMP_NUM_THREADS"] = "1"
    results: dict[str, dict[str, float]] = {}
    plain_cfg = replace(base, metrics_path=str(work / "plain.jsonl"))
    started = run_plain(plain_cfg)
    results["torch.distributed"] = steady(
        progress_of(Path(plain_cfg.metrics_path)), args.warmup, started
    )
    boot_s = None
    if not args.skip_ray:
        launched, submitted, progress = run_ray(replace(base, name="bench-ray"), work / "home")
        results["ray job"] = steady(progress, args.warmup, submitted)
        boot_s = submitted - launched
    model = "gpt-125m bf16" if args.gpu else "gpt-tiny fp32"
    print(
        f"model {model}, world {base.num_workers}, steps {args.steps}, warmup {args.warmup}, "
        f"global batch {args.batch}"
    )
    print(
        f"{'runner':<18} {'tokens/s':>10} {'to step ' + str(args.warmup):>12} {'total s':>8}"
        f" {'final loss':>10} {'MFU':>6}"
    )
    for name, r in results.items():
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(
            f"{name:<18} {r['tokens_per_s']:>10.0f} {r['to_first_step_s']:>11.1f}s"
            f" {r['total_s']:>8.1f} {r['loss']:>10.3f} {mfu:>6}"
        )
    if "ray job" in results and boot_s is not None:
        plain, ray = results["torch.distributed"], results["ray job"]
        print(
            f"steady-state ratio ray/plain: {ray['tokens_per_s'] / plain['tokens_per_s']:.3f}"
            f" (target >= 0.9); cluster boot (launch to a head that answers): {boot_s:.1f}s; "
            f"Ray job overhead (submit to step {args.warmup}) beyond plain: "
            f"{ray['to_first_step_s'] - plain['to_first_step_s']:.1f}s"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
