"""One attempt of a run on an allocation, and the watcher beside it.

A *runner* carries out the run once the nodes are up: :data:`ray_job_runner` (the product
path: the run as a Ray job submitted to the head of the cluster the nodes formed from
their boot script) or :data:`inprocess_runner` (the bundled GPT's loop in this process,
world size 1, with no cluster at all), which tests pick explicitly. The :class:`Monitor`
files the run's events into ``job_events``, renews the executor's lease, and says when to
stop (a cancel, or a node the provider took away). Crash points for tests live here too:
set ``GPUBROKER_CRASH_AT`` to one of :data:`CRASH_POINTS` and the process exits there.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from secrets import token_hex
from typing import TYPE_CHECKING, Any, Protocol

from broker.config import Settings
from broker.db.engine import Database
from broker.domain import (
    InstanceState,
    JobState,
)
from broker.errors import BrokerError, ProviderError
from broker.services import budgets, leases, ray_jobs, serving
from broker.services import jobs as jobs_service
from broker.services.node_boot import STOP_WAIT_S

if TYPE_CHECKING:
    from broker.services.node_boot import ClusterSpec
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


def executor_alive(db: Database, allocation_id: int) -> bool:
    """Whether a process still holds the allocation's lease (checked by pid on this host)."""
    from providers.local import processes

    holder = leases.holder_of(db, lease_name(allocation_id))
    if holder is None:
        return False
    host, _, pid = holder.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return processes.alive(int(pid))
    return True  # another host's executor: trust its unexpired lease


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
    nodes: int
    gpu: str | None
    gpus_per_node: int
    provider: str = "local"
    head: ray_jobs.Head | None = None  # None: the runner needs no cluster
    cluster: ClusterSpec | None = None

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


class Runner(Protocol):
    """Carries out one attempt; ``needs_cluster``: whether the nodes must boot Ray.

    A plain function is a runner too; the executor boots a cluster for it.
    """

    def __call__(self, ctx: RunContext, monitor: Monitor) -> Outcome: ...


def needs_cluster(runner: Runner) -> bool:
    return bool(getattr(runner, "needs_cluster", True))


def train_config(ctx: RunContext, *, metrics_path: str | None, storage_path: str) -> Any:
    """The ``workloads.train.TrainConfig`` of the bundled GPT for this job."""
    from workloads.gpus import resolve
    from workloads.spec import parse_spec
    from workloads.train import TrainConfig

    spec = parse_spec(ctx.spec)
    assert spec.kind == "training" and spec.model is not None
    peak = None
    use_gpu = bool(ctx.gpu) and ctx.gpus_per_node > 0
    if use_gpu and ctx.gpu:
        resolved = resolve(ctx.gpu)
        if resolved.spec is not None:
            peak = resolved.spec.bf16_tflops * 1e12  # a worker drives one GPU
    steps = spec.total_steps()
    return TrainConfig(
        name=ctx.run_dir.name,
        storage_path=storage_path,
        metrics_path=metrics_path,
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
        num_workers=ctx.nodes * gpt_workers_per_node(ctx),
        use_gpu=use_gpu,
        peak_flops_per_worker=peak,
    )


class InProcessRunner:
    """The bundled GPT's loop in this process (world size 1): fast, no cluster; for tests."""

    needs_cluster = False

    def __call__(self, ctx: RunContext, monitor: Monitor) -> Outcome:
        from workloads.train import Stopped, run_local

        cfg = train_config(
            ctx, metrics_path=str(ctx.metrics_path), storage_path=str(ctx.run_dir.parent)
        )
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


inprocess_runner = InProcessRunner()


def run_spec(ctx: RunContext) -> Any:
    """The ``workloads.driver.RunSpec`` of this job: a command, a loop, or the GPT."""
    from workloads.driver import RunSpec
    from workloads.spec import parse_spec

    spec = parse_spec(ctx.spec)
    assert spec.kind == "training" and ctx.cluster is not None
    storage = spec.storage or default_storage(ctx)
    common = {
        "resource": ctx.cluster.resource,
        "nodes": ctx.nodes,
        "gpus_per_node": ctx.gpus_per_node if ctx.gpu else 0,
        "envs": dict(spec.envs),
        "name": ctx.run_dir.name,
        "storage": storage,
        "max_failures": spec.max_failures,
        "join_timeout_s": ctx.settings.head_timeout_s,
    }
    if spec.run is not None:
        return RunSpec(mode="command", setup=spec.setup, run=spec.run, **common)
    if spec.train is not None:
        return RunSpec(mode="train", train=spec.train, **common)
    cfg = train_config(ctx, metrics_path=None, storage_path=storage or str(ctx.run_dir.parent))
    return RunSpec(
        mode="train",
        train=GPT_LOOP,
        config=asdict(cfg),
        workers_per_node=gpt_workers_per_node(ctx),
        **common,
    )


GPT_LOOP = "workloads.train:gpt_worker"


def serve_run_spec(ctx: RunContext, low: int, high: int) -> Any:
    """The ``workloads.driver.RunSpec`` of a serving allocation holding ``low``..``high``
    replicas: the user's Serve app, or the bundled GPT (fresh, or a training job's weights)."""
    from workloads.driver import RunSpec
    from workloads.spec import parse_spec

    spec = parse_spec(ctx.spec)
    assert spec.kind == "inference" and ctx.cluster is not None
    checkpoint = None
    if spec.source_job is not None:
        source = jobs_service.get(ctx.db, spec.source_job)
        checkpoint = newest_checkpoint(ctx.settings, source.id, source.spec)
        if checkpoint is None:
            raise BrokerError(f"model_from: job {source.id} has no checkpoint to serve")
    serve = {
        "port": ctx.settings.serve_port,
        "min_replicas": low,
        "max_replicas": high,
        "app": spec.serve,
        "model": spec.shape.gpt_config().to_dict(),
        "checkpoint": checkpoint,
        "max_batch_size": spec.max_batch_size,
        "batch_wait_s": spec.batch_wait_ms / 1000,
    }
    return RunSpec(
        mode="serve",
        resource=ctx.cluster.resource,
        nodes=ctx.nodes,
        gpus_per_node=ctx.gpus_per_node if ctx.gpu else 0,
        envs=dict(spec.envs),
        name=ctx.run_dir.name,
        join_timeout_s=ctx.settings.head_timeout_s,
        serve=serve,
    )


def newest_checkpoint(settings: Settings, job_id: int, spec: dict[str, Any]) -> str | None:
    """Where the job's newest checkpoint is: under its ``storage:``, else its run folder
    (a storage URI, or a local path)."""
    from workloads import storage

    folder = run_dir(settings, job_id)
    where = storage.join(spec["storage"], folder.name) if spec.get("storage") else str(folder)
    try:
        found = storage.latest_checkpoint(where)
    except (BrokerError, OSError):  # storage out of reach from here: say nothing
        return None
    return None if found is None else found[0]


def gpt_workers_per_node(ctx: RunContext) -> int:
    """The bundled GPT is data-parallel over every GPU: one worker each (one per CPU node)."""
    return ctx.gpus_per_node if ctx.gpu and ctx.gpus_per_node > 0 else 1


def default_storage(ctx: RunContext) -> str | None:
    """Where checkpoints go without ``storage:``: the runs folder when every node is this
    machine; on cloud nodes, nowhere shared (a lost node's work cannot resume elsewhere)."""
    return f"file://{ctx.run_dir.parent.resolve()}" if ctx.provider == "local" else None


class RayJobRunner:
    """The run as a Ray job on the allocation's own cluster, followed until it ends."""

    needs_cluster = True

    def __call__(self, ctx: RunContext, monitor: Monitor) -> Outcome:
        from workloads.spec import parse_spec

        assert ctx.head is not None and ctx.cluster is not None
        spec = parse_spec(ctx.spec)
        client = ray_jobs.connect(
            ctx.head, ctx.settings.head_timeout_s, give_up=lambda: monitor.poll() is not None
        )
        if client is None:
            return Outcome(ok=False, stop=monitor.stop_reason)
        if spec.kind == "inference":
            url = f"http://{ctx.head.host}:{ctx.settings.serve_port}"
            low, high = serving.open_endpoint(ctx.db, ctx.allocation_id, url, spec.min_replicas)
            monitor.endpoint = url
            run = serve_run_spec(ctx, low, high)
        else:
            run = run_spec(ctx)
        submission = ray_jobs.submit(
            client,
            f"gpubroker-{ctx.cluster.key}-{token_hex(4)}",
            ctx.settings.head_timeout_s,
            give_up=lambda: monitor.poll() is not None,
            entrypoint=ray_jobs.ENTRYPOINT,
            runtime_env=ray_jobs.runtime_env(run.to_env(), dict(spec.envs), spec.workdir),
        )
        if submission is None:
            return Outcome(ok=False, stop=monitor.stop_reason)
        monitor.event("ray_job", {"submission_id": submission, "head": ctx.head.url})
        output = ray_jobs.OutputCopy(
            ctx.run_dir, f"allocation {ctx.allocation_id}, Ray job {submission}"
        )
        return _follow(client, submission, output, monitor)


ray_job_runner = RayJobRunner()


def _follow(client: Any, submission: str, output: ray_jobs.OutputCopy, monitor: Monitor) -> Outcome:
    """Copy the job's output and events until it ends or must stop."""
    from ray.job_submission import JobStatus

    failures = 0
    while True:
        reason = monitor.poll()
        if reason is not None:
            _stop(client, submission)
            with contextlib.suppress(Exception):  # the last words, while the head still answers
                _copy(client, submission, output, monitor)
            monitor.poll(force=True)  # file them (a serving run's final counts)
            return Outcome(ok=False, stop=reason)
        try:
            status = client.get_job_status(submission)
            _copy(client, submission, output, monitor)
            failures = 0
        except Exception:  # a head that went away: the monitor sees the lost node next
            failures += 1
            if failures > MAX_HEAD_FAILURES:
                return Outcome(ok=False, error="lost the connection to the Ray head")
            time.sleep(POLL_S)
            continue
        if status == JobStatus.SUCCEEDED:
            monitor.poll(force=True)
            return Outcome(ok=True, metrics=monitor.last_metrics)
        if status in (JobStatus.FAILED, JobStatus.STOPPED):
            if monitor.poll(force=True) is not None:  # e.g. a node lost mid-run
                return Outcome(ok=False, stop=monitor.stop_reason)
            try:
                code = getattr(client.get_job_info(submission), "driver_exit_code", None)
            except Exception:  # the head went away right after: the output still tells
                code = None
            tail = " | ".join(output.tail(5))
            what = f"exited with code {code}" if code is not None else str(status.value).lower()
            return Outcome(ok=False, error=f"the run {what}; last output: {tail}"[:2000])
        time.sleep(POLL_S)


MAX_HEAD_FAILURES = 20


def _copy(client: Any, submission: str, output: ray_jobs.OutputCopy, monitor: Monitor) -> None:
    lines = output.update(client.get_job_logs(submission))
    monitor.feed(ray_jobs.parse_events(lines))


def _stop(client: Any, submission: str) -> None:
    """Stop the Ray job and wait for it to end, as long as the head lets it take (a
    serving run drains its requests); teardown follows either way."""
    try:
        client.stop_job(submission)
        deadline = time.monotonic() + STOP_WAIT_S + 5.0
        while time.monotonic() < deadline and not client.get_job_status(submission).is_terminal():
            time.sleep(POLL_S)
    except Exception:  # the head is gone already: teardown stops what is left
        return


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
        self._fed: list[dict[str, Any]] = []
        self._recent: deque[str] = deque(maxlen=256)
        self.head_id = instance_ids[0] if instance_ids else None
        self.endpoint: str | None = None  # a serving allocation's URL
        # Set for serving: called with the ids of lost nodes other than the head, which
        # the run survives (Serve restarts their replicas on the nodes left).
        self.on_lost: Callable[[list[str]], None] | None = None

    def feed(self, records: list[dict[str, Any]]) -> None:
        """Events that arrived another way than the metrics file (a Ray job's output).

        Ray may forward a restarted worker group's lines twice; a record equal to a recent
        one (they carry their own timestamp) is that echo, not a new event.
        """
        for record in records:
            key = json.dumps(record, sort_keys=True)
            if key in self._recent:
                continue
            self._recent.append(key)
            self._fed.append(record)

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
        records, self._fed = self._fed + self._read_new(), []
        ctx = self.ctx
        with ctx.db.session() as session:
            for record in records:
                kind = str(record.pop("event", "progress"))
                if kind == "serving":
                    changed = serving.record(session, ctx.allocation_id, record)
                    if changed is None:
                        continue  # a routine report: the endpoint row holds it
                    self._announce(changed, record)
                if kind == "failed":
                    self.last_error = str(record.get("error"))
                if kind in ("progress", "finished"):
                    self.last_metrics = record
                jobs_service.record_event(session, ctx.job_id, kind, record)
            job = jobs_service.load_row(session, ctx.job_id)
            budgets.enforce_running(session, job)  # the team's budget, checked every tick
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
                if lost and self._survives(lost):
                    assert self.on_lost is not None
                    self.on_lost(lost)
                    self.instance_ids -= set(lost)
                elif lost:
                    self.stop_reason = f"preempted: node {lost[0]} was taken away"
        return self.stop_reason

    def _survives(self, lost: list[str]) -> bool:
        return (
            self.on_lost is not None
            and self.head_id not in lost
            and len(lost) < len(self.instance_ids)
        )

    def _announce(self, state: str, record: dict[str, Any]) -> None:
        if self.progress is not None:
            replicas = record.get("replicas", 0)
            self.progress(
                Progress(
                    job_id=self.ctx.job_id,
                    state=JobState.RUNNING.value,
                    message=f"endpoint {self.endpoint} {state.lower()} ({replicas} replicas)",
                )
            )

    def _lost_nodes(self) -> list[str]:
        try:
            listed = self.provider.list_instances(self.ctx.settings.owner_tag)
        except ProviderError:
            return []  # a flaky listing is not a lost node; the next poll looks again
        running = {r.instance_id for r in listed if r.state == InstanceState.RUNNING}
        return sorted(self.instance_ids - running)
