"""The bundled GPT's training: one loop for Ray Train and for a single local process.

On an allocation it runs as the training loop :func:`gpt_worker` of a Ray job
(``workloads.driver`` in ``train`` mode, one worker per node); in a single process,
through :func:`run_local`. Both write checkpoints in one format,
``<storage>/<name>/checkpoint_*/state.pt`` plus ``meta.json`` with the step, and both
report progress: as event lines on stdout under Ray (the broker reads them from the
job's output), or as JSON lines appended to ``metrics_path`` in one process.

On CPU each worker uses gloo and one thread; on GPU, NCCL and bf16 autocast.
"""

from __future__ import annotations

import json
import os
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
    storage_path: str  # a folder, or a storage URI (s3://, gs://, file://)
    metrics_path: str | None  # None: progress goes to stdout as event lines
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

    @property
    def run_uri(self) -> str:
        from workloads import storage

        return storage.join(self.storage_path, self.name)


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


def _append_metrics(path: str | None, record: dict[str, Any]) -> None:
    if path is None:
        from workloads.driver import emit

        payload = dict(record)
        emit(str(payload.pop("event", "progress")), **payload)
        return
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


def _local_copy(folder: Path) -> Path:
    """A copy of a checkpoint folder that outlives Ray's temporary view of it."""
    import shutil

    target = Path(tempfile.mkdtemp(prefix="gpubroker-resume-"))
    shutil.copytree(folder, target, dirs_exist_ok=True)
    return target


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
        that checkpoint; it is in storage all the same, so the scan finds it. A job
        planned again on other nodes starts a new fit and finds its checkpoints there too.
        """
        import ray.train

        from workloads import storage

        best: tuple[str, int] | None = storage.latest_checkpoint(self.cfg.run_uri)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                restored = latest_checkpoint(folder)
                if restored is not None and (best is None or restored[1] >= best[1]):
                    return _local_copy(restored[0])
        if best is None:
            return None
        local = Path(tempfile.mkdtemp(prefix="gpubroker-resume-"))
        storage.download(best[0], local)
        return local

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = (
            ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        )
        ray.train.report(metrics, checkpoint=checkpoint)
        if checkpoint_dir is not None:
            import shutil

            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def gpt_worker(config: dict[str, Any]) -> None:
    """The bundled GPT as a Ray Train loop: ``train: workloads.train:gpt_worker``."""
    cfg = TrainConfig(**config)
    train_loop(cfg, RaySession(cfg))
