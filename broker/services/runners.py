"""One training attempt of an allocation and the watcher beside it.

A *runner* trains: :func:`ray_runner` (the product path, Ray Train in a driver process over
the allocated nodes) or :func:`inprocess_runner` (the same loop and checkpoint format in
this process, world size 1), which tests pick explicitly. The :class:`Monitor` streams the
run's metrics into ``job_events``, renews the executor's lease, and says when to stop
(a cancel, or a node the provider took away). Crash points for tests live here too: set
``GPUBROKER_CRASH_AT`` to one of :data:`CRASH_POINTS` and the process exits right there.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.config import Settings
from broker.db.engine import Database
from broker.domain import (
    InstanceState,
    JobState,
)
from broker.errors import (
    ProviderError,
)
from broker.services import jobs as jobs_service
from broker.services import leases, ray_cluster

if TYPE_CHECKING:
    from providers.base import Provider

CRASH_ENV = "GPUBROKER_CRASH_AT"
CRASH_POINTS = ("after_launch_record", "after_cloud_create", "before_ray_start", "mid_training")
CRASH_EXIT_CODE = 71
LEASE_TTL_S = 120.0
POLL_S = 0.5


def crash_point(name: str) -> None:
    """Exit the process on the spot when ``GPUBROKER_CRASH_AT`` names this point."""
    if os.environ.get(CRASH_ENV) == name:
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)


def lease_name(allocation_id: int) -> str:
    return f"alloc-{allocation_id}"


def lease_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def cluster_key(allocation_id: int) -> str:
    return f"a{allocation_id}"


def run_dir(settings: Settings, job_id: int) -> Path:
    return settings.runs_dir / f"job-{job_id}"


# --- progress ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """One progress line of a run, as the CLI's bar shows it."""

    job_id: int
    state: str
    step: int | None = None
    steps: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    cost: Decimal = Decimal(0)
    message: str | None = None


ProgressFn = Callable[[Progress], None]


# --- runners ----------------------------------------------------------------------------


@dataclass
class RunContext:
    db: Database
    settings: Settings
    job_id: int
    allocation_id: int
    spec: dict[str, Any]
    addresses: list[str]
    gpu: str | None
    gpus_per_node: int

    @property
    def run_dir(self) -> Path:
        return run_dir(self.settings, self.job_id)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"


@dataclass
class Outcome:
    """How a training attempt ended: ``ok``, or stopped (cancel/preemption), or an error."""

    ok: bool
    stop: str | None = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


Runner = Callable[[RunContext, "Monitor"], Outcome]


def train_config(ctx: RunContext, **ray: Any) -> Any:
    """The ``workloads.train.TrainConfig`` for this job (imports the training module)."""
    from providers.local import detect_machine
    from workloads.gpus import resolve
    from workloads.spec import parse_spec
    from workloads.train import TrainConfig

    spec = parse_spec(ctx.spec)
    peak = None
    # The training runs on this machine's nodes: GPUs only where this machine has them.
    use_gpu = bool(ctx.gpu) and ctx.gpus_per_node > 0 and detect_machine().gpus > 0
    if use_gpu and ctx.gpu:
        resolved = resolve(ctx.gpu)
        if resolved.spec is not None:
            peak = resolved.spec.bf16_tflops * 1e12
    steps = spec.total_steps()
    return TrainConfig(
        name=ctx.run_dir.name,
        storage_path=str(ctx.run_dir.parent),
        metrics_path=str(ctx.metrics_path),
        model={
            "n_layer": spec.model.layers,
            "n_head": spec.model.heads,
            "d_model": spec.model.d_model,
            "seq_len": spec.model.seq_len,
            "vocab_size": spec.model.vocab,
        },
        steps=steps,
        global_batch=spec.global_batch,
        learning_rate=spec.learning_rate,
        checkpoint_every=spec.checkpoint_every,
        report_every=max(1, min(25, steps // 20)),
        data=spec.data,
        precision=spec.precision,
        max_failures=spec.max_failures,
        use_gpu=use_gpu,
        peak_flops_per_worker=peak,
        **ray,
    )


def inprocess_runner(ctx: RunContext, monitor: Monitor) -> Outcome:
    """The training loop in this process (world size 1): fast, no Ray; for tests."""
    from workloads.train import Stopped, run_local

    cfg = train_config(ctx)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        metrics = run_local(cfg, should_stop=lambda: monitor.poll() is not None)
    except Stopped:
        monitor.poll(force=True)
        return Outcome(ok=False, stop=monitor.stop_reason or "stopped")
    except Exception as exc:  # the training itself failed: the job fails, we tear down
        return Outcome(ok=False, error=f"{type(exc).__name__}: {exc}")
    monitor.poll(force=True)
    return Outcome(ok=True, metrics=metrics)


def ray_runner(ctx: RunContext, monitor: Monitor) -> Outcome:
    """Ray Train over the allocated nodes: a local cluster, the driver in its own process."""
    settings = ctx.settings
    key = cluster_key(ctx.allocation_id)
    cpus = max(1, (os.cpu_count() or 1) // max(1, len(ctx.addresses)))
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        cluster = ray_cluster.start(settings, key, ctx.addresses, cpus_per_node=cpus)
        monitor.event("ray", {"address": cluster.address, "nodes": cluster.addresses})
        cfg = train_config(
            ctx,
            num_workers=len(ctx.addresses),
            resource=cluster.resource,
            address=cluster.address,
            node_ip=cluster.head_ip,
        )
        config_path = ctx.run_dir / f"train-a{ctx.allocation_id}.json"
        cfg.to_json(config_path)
        with open(ctx.run_dir / "driver.log", "ab") as log:
            driver = subprocess.Popen(
                [sys.executable, "-m", "workloads.train", str(config_path)],
                env=ray_cluster.ray_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ray_cluster.record_driver(settings, cluster, driver.pid)
        while driver.poll() is None:
            reason = monitor.poll()
            if reason is not None:
                driver.kill()
                driver.wait()
                return Outcome(ok=False, stop=reason)
            time.sleep(POLL_S)
        if monitor.poll(force=True) is not None:  # e.g. a cancel that stopped the cluster
            return Outcome(ok=False, stop=monitor.stop_reason)
        if driver.returncode != 0:
            return Outcome(
                ok=False, error=monitor.last_error or f"driver exited {driver.returncode}"
            )
        return Outcome(ok=True, metrics=monitor.last_metrics)
    finally:
        ray_cluster.stop(settings, key)


# --- the monitor ------------------------------------------------------------------------


class Monitor:
    """Streams the run's metrics into job_events and watches for cancel and node loss."""

    def __init__(
        self,
        ctx: RunContext,
        provider: Provider,
        instance_ids: list[str],
        progress: ProgressFn | None,
        price_per_hour: Decimal,
    ) -> None:
        self.ctx = ctx
        self.provider = provider
        self.instance_ids = set(instance_ids)
        self.progress = progress
        self.price_per_hour = price_per_hour
        self.started = time.monotonic()
        self.stop_reason: str | None = None
        self.last_error: str | None = None
        self.last_metrics: dict[str, Any] = {}
        self._offset = ctx.metrics_path.stat().st_size if ctx.metrics_path.exists() else 0
        self._last_poll = 0.0
        self._progress_seen = False

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        with self.ctx.db.session() as session:
            jobs_service.record_event(session, self.ctx.job_id, kind, payload)

    def _read_new(self) -> list[dict[str, Any]]:
        path = self.ctx.metrics_path
        if not path.exists():
            return []
        with open(path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        records = []
        for line in complete.splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def poll(self, *, force: bool = False) -> str | None:
        """Ingest new metrics; return why the run must stop, or None. Rate-limited."""
        now = time.monotonic()
        if not force and now - self._last_poll < POLL_S:
            return self.stop_reason
        self._last_poll = now
        records = self._read_new()
        ctx = self.ctx
        with ctx.db.session() as session:
            for record in records:
                kind = str(record.pop("event", "progress"))
                if kind == "failed":
                    self.last_error = str(record.get("error"))
                if kind in ("progress", "finished"):
                    self.last_metrics = record
                jobs_service.record_event(session, ctx.job_id, kind, record)
            job = jobs_service.load_row(session, ctx.job_id)
            state = job.state
        leases.acquire(ctx.db, lease_name(ctx.allocation_id), lease_holder(), LEASE_TTL_S)
        if records and any(r for r in records if "step" in r) and self.progress:
            hours = Decimal(str((now - self.started) / 3600))
            nodes = len(self.instance_ids)
            m = self.last_metrics
            self.progress(
                Progress(
                    job_id=ctx.job_id,
                    state=JobState.RUNNING.value,
                    step=m.get("step"),
                    steps=m.get("steps"),
                    loss=m.get("loss"),
                    tokens_per_s=m.get("tokens_per_s"),
                    mfu=m.get("mfu"),
                    cost=(self.price_per_hour * nodes * hours).quantize(Decimal("0.000001")),
                )
            )
        if self.last_metrics and not self._progress_seen:
            self._progress_seen = True
            crash_point("mid_training")
        if self.stop_reason is None:
            if state == JobState.CANCELLED.value:
                self.stop_reason = "cancelled"
            else:
                lost = self._lost_nodes()
                if lost:
                    self.stop_reason = f"preempted: node {lost[0]} was taken away"
        return self.stop_reason

    def _lost_nodes(self) -> list[str]:
        try:
            listed = self.provider.list_instances(self.ctx.settings.owner_tag)
        except ProviderError:
            return []  # a flaky listing is not a lost node; the next poll looks again
        running = {r.instance_id for r in listed if r.state == InstanceState.RUNNING}
        return sorted(self.instance_ids - running)
