"""Training entry points: Ray Train over the allocated nodes, or one local process.

The broker never imports this module: it runs ``python -m workloads.train CONFIG.json``
as the Ray driver, in its own process, so a broker crash or a cancel can stop the driver
and the cluster alike. The same loop (:func:`train_loop`) runs under Ray Train and in
the single-process path (:func:`run_local`); both write checkpoints in one format,
``<storage>/<name>/checkpoint_*/state.pt`` plus ``meta.json`` with the step, and both
append progress as JSON lines to ``metrics_path``.

On CPU each worker uses gloo and one thread; on GPU, NCCL and bf16 autocast.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from workloads.gpt import GPTConfig, build_model, load_text, random_batch, token_tensor

CHECKPOINT_FILE = "state.pt"
META_FILE = "meta.json"


@dataclass
class TrainConfig:
    """Everything one run needs; written as JSON by the broker for the driver."""

    name: str  # the run's folder under storage_path (the job id)
    storage_path: str
    metrics_path: str
    model: dict[str, Any]  # GPTConfig fields
    steps: int
    global_batch: int  # sequences per step over all workers
    learning_rate: float = 3e-4
    checkpoint_every: int = 50
    report_every: int = 10
    data: str | None = None
    precision: str = "fp32"
    num_workers: int = 1
    use_gpu: bool = False
    resource: str | None = None  # custom resource, one unit per allocated node
    max_failures: int = 0
    address: str | None = None  # Ray head "ip:port"
    node_ip: str | None = None  # this driver's node address
    peak_flops_per_worker: float | None = None  # for MFU; None: not reported
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        return cls(**json.loads(Path(path).read_text()))

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @property
    def run_dir(self) -> Path:
        return Path(self.storage_path) / self.name


# --- checkpoints ------------------------------------------------------------------------


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, int] | None:
    """The checkpoint folder with the highest step under ``run_dir``, and that step."""
    best: tuple[Path, int] | None = None
    root = Path(run_dir)
    if not root.exists():
        return None
    for meta in root.glob(f"**/{META_FILE}"):
        if not (meta.parent / CHECKPOINT_FILE).exists():
            continue
        try:
            step = int(json.loads(meta.read_text())["step"])
        except (ValueError, KeyError, OSError):
            continue
        if best is None or step > best[1]:
            best = (meta.parent, step)
    return best


def _write_checkpoint(folder: Path, model: Any, optimizer: Any, step: int, tokens: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
    torch.save(state, folder / CHECKPOINT_FILE)
    (folder / META_FILE).write_text(json.dumps({"step": step, "tokens": tokens}))


# --- the loop ---------------------------------------------------------------------------


class Session:
    """What the loop needs from its runner: rank, resume point, reporting."""

    world_rank: int = 0
    world_size: int = 1

    def resume_from(self) -> Path | None:
        raise NotImplementedError

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        raise NotImplementedError

    def should_stop(self) -> bool:
        return False


class Stopped(Exception):
    """The runner asked the loop to stop (cancel or preemption)."""


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.use_gpu and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _append_metrics(path: str, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def train_loop(cfg: TrainConfig, session: Session) -> dict[str, Any]:
    """Train for ``cfg.steps`` steps from the latest checkpoint; returns the last metrics."""
    import torch.distributed as dist

    device = _device(cfg)
    if device.type == "cpu":
        torch.set_num_threads(1)
    gpt_config = GPTConfig(**cfg.model)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    model = build_model(gpt_config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    start_step, tokens_seen = 0, 0
    resume = session.resume_from()
    if resume is not None:
        state = torch.load(resume / CHECKPOINT_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        tokens_seen = int(json.loads((resume / META_FILE).read_text()).get("tokens", 0))
    distributed = dist.is_available() and dist.is_initialized() and session.world_size > 1
    wrapped = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(
            model, device_ids=[device.index] if device.index else None
        )
    tokens = token_tensor(load_text(cfg.data))
    per_worker = max(1, cfg.global_batch // session.world_size)
    step_tokens = per_worker * session.world_size * gpt_config.seq_len
    autocast = cfg.use_gpu and cfg.precision == "bf16" and device.type == "cuda"
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + session.world_rank)
    if session.world_rank == 0 and resume is not None:
        _append_metrics(cfg.metrics_path, {"event": "restored", "step": start_step})
    last: dict[str, Any] = {"step": start_step}
    window_start, window_steps, losses = time.perf_counter(), 0, []
    for step in range(start_step + 1, cfg.steps + 1):
        if session.should_stop():
            raise Stopped(f"stopped at step {step - 1}")
        generator.manual_seed(cfg.seed * 1_000_003 + step * 7919 + session.world_rank)
        x, y = random_batch(tokens, per_worker, gpt_config.seq_len, generator)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            _, loss = wrapped(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tokens_seen += step_tokens
        window_steps += 1
        losses.append(loss.detach())
        report = step % cfg.report_every == 0 or step == cfg.steps
        save = step % cfg.checkpoint_every == 0 or step == cfg.steps
        if not (report or save):
            continue
        mean_loss = torch.stack(losses).float().mean()
        if distributed:
            dist.all_reduce(mean_loss)
            mean_loss /= session.world_size
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - window_start
        tokens_per_s = window_steps * step_tokens / elapsed if elapsed > 0 else 0.0
        last = {
            "step": step,
            "steps": cfg.steps,
            "loss": float(mean_loss.item()),
            "tokens": tokens_seen,
            "tokens_per_s": tokens_per_s,
            "world_size": session.world_size,
            "time": time.time(),
        }
        if cfg.peak_flops_per_worker:
            achieved = gpt_config.flops_per_token() * tokens_per_s
            last["mfu"] = achieved / (cfg.peak_flops_per_worker * session.world_size)
        checkpoint_dir = None
        if save and session.world_rank == 0:
            checkpoint_dir = Path(tempfile.mkdtemp(prefix="gpubroker-ckpt-"))
            _write_checkpoint(checkpoint_dir, model, optimizer, step, tokens_seen)
            last["checkpoint"] = True
        if save:  # a Ray Train report synchronises the workers: only at checkpoints
            session.report(last, checkpoint_dir)
        if session.world_rank == 0:  # after the report: a checkpoint named here is persisted
            _append_metrics(cfg.metrics_path, {"event": "progress", **last})
        window_start, window_steps, losses = time.perf_counter(), 0, []
    return last


# --- the single-process runner ----------------------------------------------------------


class LocalSession(Session):
    """One process, no Ray: checkpoints go straight to ``<run_dir>/checkpoint_<step>``."""

    def __init__(self, cfg: TrainConfig, should_stop: Callable[[], bool] | None = None) -> None:
        self.cfg = cfg
        self._should_stop = should_stop

    def resume_from(self) -> Path | None:
        found = latest_checkpoint(self.cfg.run_dir)
        return found[0] if found else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            return
        target = self.cfg.run_dir / f"checkpoint_{metrics['step']:06d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            import shutil

            shutil.rmtree(target)
        checkpoint_dir.rename(target)

    def should_stop(self) -> bool:
        return bool(self._should_stop and self._should_stop())


def run_local(cfg: TrainConfig, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train in this process (world size 1), same loop and checkpoint format as Ray."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    return train_loop(cfg, LocalSession(cfg, should_stop))


# --- Ray Train --------------------------------------------------------------------------


class RaySession(Session):
    def __init__(self, cfg: TrainConfig) -> None:
        import ray.train

        context = ray.train.get_context()
        self.cfg = cfg
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        node = ray.util.get_node_ip_address()
        _append_metrics(
            cfg.metrics_path, {"event": "worker", "rank": self.world_rank, "node": node}
        )

    def resume_from(self) -> Path | None:
        """The newer of Ray's restored checkpoint and the newest one persisted in storage.

        A worker killed right after its report may die before the controller registered
        that checkpoint; it is in storage all the same, so the scan finds it.
        """
        import ray.train

        found = latest_checkpoint(self.cfg.run_dir)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:  # local storage: a folder read in place
            restored = latest_checkpoint(checkpoint.path)
            if restored is not None and (found is None or restored[1] >= found[1]):
                return restored[0]
        return found[0] if found else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = (
            ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        )
        ray.train.report(metrics, checkpoint=checkpoint)
        if checkpoint_dir is not None:
            import shutil

            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _ray_worker(config: dict[str, Any]) -> None:
    cfg = TrainConfig(**config)
    train_loop(cfg, RaySession(cfg))


def run_ray(cfg: TrainConfig) -> dict[str, Any]:
    """Run ``cfg`` with a TorchTrainer whose workers sit one per allocated node."""
    import ray
    from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init(address=cfg.address, _node_ip_address=cfg.node_ip, log_to_driver=False)
    resources: dict[str, float] = {"CPU": 1}
    if cfg.resource:
        resources[cfg.resource] = 1
    found = latest_checkpoint(cfg.run_dir)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config=asdict(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        resume_from_checkpoint=Checkpoint.from_directory(str(found[0])) if found else None,
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    ray.shutdown()
    return metrics


def main(argv: list[str] | None = None) -> int:
    """``python -m workloads.train CONFIG.json [--local]``: the driver the broker starts."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.stderr.write("usage: python -m workloads.train CONFIG.json [--local]\n")
        return 2
    cfg = TrainConfig.from_json(args[0])
    try:
        metrics = run_local(cfg) if "--local" in args[1:] else run_ray(cfg)
    except Exception as exc:
        _append_metrics(
            cfg.metrics_path, {"event": "failed", "error": f"{type(exc).__name__}: {exc}"}
        )
        raise
    _append_metrics(cfg.metrics_path, {"event": "finished", **metrics})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
