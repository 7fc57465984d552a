"""One attempt of a run on an allocation, once its nodes are up.

A *runner* carries out the run: :data:`ray_job_runner` (the product path: the run as a Ray
job submitted to the head of the cluster the nodes formed from their boot script) or
:data:`inprocess_runner` (the bundled GPT's loop in this process, world size 1, with no
cluster at all), which tests pick explicitly. Beside it a
:class:`~broker.services.execution.monitor.Monitor` files the run's events and says when
to stop.
"""

from __future__ import annotations

import contextlib
import time
from secrets import token_hex
from typing import Any, Protocol

from broker.services.execution import endpoints, ray_jobs
from broker.services.execution.monitor import Monitor
from broker.services.execution.node_boot import STOP_WAIT_S
from broker.services.execution.run_context import POLL_S, Outcome, RunContext
from broker.services.execution.run_specs import run_spec, serve_run_spec, train_config


class Runner(Protocol):
    """Carries out one attempt; ``needs_cluster``: whether the nodes must boot Ray.

    A plain function is a runner too; the executor boots a cluster for it.
    """

    def __call__(self, ctx: RunContext, monitor: Monitor) -> Outcome: ...


def needs_cluster(runner: Runner) -> bool:
    return bool(getattr(runner, "needs_cluster", True))


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
            low, high = endpoints.open_endpoint(ctx.db, ctx.allocation_id, url, spec.min_replicas)
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
