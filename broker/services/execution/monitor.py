"""The watcher beside a run: files its events into ``job_events``, renews the executor's
lease, enforces the team's budget, and says when to stop (a cancel, or a node the provider
took away)."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from broker.db import leases
from broker.domain import InstanceState, JobState
from broker.errors import ProviderError
from broker.services import budgets
from broker.services.execution import endpoints
from broker.services.execution.run_context import (
    LEASE_TTL_S,
    POLL_S,
    Progress,
    ProgressFn,
    RunContext,
    crash_point,
    lease_holder,
    lease_name,
)
from broker.services.jobs import store as jobs_service

if TYPE_CHECKING:
    from providers.base import Launcher


class Monitor:
    """Streams the run's metrics into job_events and watches for cancel and node loss."""

    def __init__(
        self,
        ctx: RunContext,
        provider: Launcher,
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
                    changed = endpoints.record(session, ctx.allocation_id, record)
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
