"""The broker daemon: one loop that keeps the fleet moving.

Each tick:
1. the *leader* (holder of lease ``daemon-leader``) refreshes offers when the refresh
   interval has passed (a timer lease, so the whole group refreshes once per interval),
   plans pending jobs and reconciles the providers with the database;
2. every daemon starts planned allocations, each in a thread of its own under a claim
   lease ``allocation:<id>`` and only while it is still PLANNED, so no allocation is
   launched by two daemons and a long run holds up neither the next tick nor the others;
3. every daemon makes the scheduled reports that are due (``reports`` is unique on
   schedule and due time, so each is made once).
Several daemons on one PostgreSQL database thus share the work with no double launch;
if the leader dies its lease expires and another daemon takes over. A background
heartbeat renews the leases this daemon holds while a long step runs. SIGTERM and SIGINT
stop the loop after the step in progress; the runs already started go on to their end
(each tears its nodes down), then the daemon gives its leases back.

The steps are injectable (:class:`Steps`) so a test can drive the loop with its own
planner and executor.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from broker.config import Settings
from broker.db import leases
from broker.db.engine import Database
from broker.db.models import AllocationRow, JobRow
from broker.domain import AllocationState, JobState, utcnow
from broker.errors import BrokerError, UserError

log = logging.getLogger("gpubroker.daemon")
LEADER = "daemon-leader"
MAX_INTERVAL_S = 30 * 86400.0
REFRESH = "catalog-refresh"


@dataclass
class Steps:
    """What a tick does; the defaults call the broker's services."""

    refresh: Callable[[], Any]
    schedule: Callable[[], Any]
    run_allocation: Callable[[int], Any]
    reconcile: Callable[[], Any]
    reports: Callable[[datetime], list[Any]]


def _configured_live_providers(settings: Settings) -> list[str]:
    live = []
    if settings.aws_regions:
        live.append("aws")
    if settings.gcp_project:
        live.append("gcp")
    return live


def default_steps(db: Database, settings: Settings) -> Steps:
    def refresh() -> Any:
        from broker.services.offers import refresh as live_refresh
        from broker.services.offers.bootstrap import ensure_catalog

        ensure_catalog(db, settings)
        live = _configured_live_providers(settings)
        return live_refresh.refresh(db, settings, live, None) if live else None

    def schedule() -> Any:
        from broker.services.planning.schedule import schedule

        with db.session() as session:
            pending = session.scalar(
                select(JobRow.id).where(JobRow.state == JobState.PENDING.value).limit(1)
            )
        # Nothing to plan: skip loading the solver at all.
        return None if pending is None else schedule(db, settings)

    def run_allocation(allocation_id: int) -> Any:
        from broker.services.execution.executor import run_allocation

        return run_allocation(db, settings, allocation_id)

    def reconcile() -> Any:
        from broker.services.execution import reconcile as reconcile_service

        return reconcile_service.reconcile(db, settings)

    def reports(now: datetime) -> list[Any]:
        from broker.services.reports import schedules

        return schedules.run_due(db, now=now, settings=settings)

    return Steps(refresh, schedule, run_allocation, reconcile, reports)


@dataclass
class TickReport:
    leader: bool = False
    refreshed: bool = False
    scheduled: bool = False
    reconciled: bool = False
    launched: list[int] = field(default_factory=list)
    reports: int = 0
    foreign: int = 0  # instances of other installations that reconcile saw and left alone
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"leader={'yes' if self.leader else 'no'} refreshed={self.refreshed} "
            f"launched={len(self.launched)} reports={self.reports} foreign={self.foreign} "
            f"errors={len(self.errors)}"
        )


class Daemon:
    """One broker daemon. ``tick()`` runs one round; ``run()`` loops until stopped."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        steps: Steps | None = None,
        holder: str | None = None,
        interval: float = 30.0,
        refresh_interval: float = 3600.0,
        lease_ttl: float | None = None,
    ) -> None:
        for name, value, most in (
            ("interval", interval, MAX_INTERVAL_S),
            ("refresh interval", refresh_interval, MAX_INTERVAL_S),
            ("lease ttl", lease_ttl or 1.0, MAX_INTERVAL_S),
        ):
            if not 0 < value <= most:  # also refuses nan and inf
                raise UserError(f"daemon {name}: must be > 0 and at most {most:.0f} seconds")
        self.db = db
        self.settings = settings
        self.steps = steps or default_steps(db, settings)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.interval = interval
        self.refresh_interval = refresh_interval
        self.lease_ttl = lease_ttl or max(3 * interval, 60.0)
        self._stop = threading.Event()
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self._runs: dict[int, threading.Thread] = {}

    # --- control ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _acquire(self, name: str) -> bool:
        if leases.acquire(self.db, name, self.holder, self.lease_ttl):
            with self._held_lock:
                self._held.add(name)
            return True
        return False

    def _release(self, name: str) -> None:
        with self._held_lock:
            self._held.discard(name)
        leases.release(self.db, name, self.holder)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_ttl / 3):
            with self._held_lock:
                names = sorted(self._held)
            for name in names:
                try:
                    leases.acquire(self.db, name, self.holder, self.lease_ttl)
                except Exception:  # a database blip must not kill the heartbeat
                    log.warning("could not renew lease %s", name, exc_info=True)

    # --- one round ----------------------------------------------------------------------

    def _step(self, report: TickReport, name: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except BrokerError as exc:
            report.errors.append(f"{name}: {exc}")
            log.warning("%s: %s", name, exc)
        except Exception as exc:
            report.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            # One line in the log; the stack only at debug level.
            log.error("%s failed: %s: %s", name, type(exc).__name__, exc)
            log.debug("%s failed", name, exc_info=True)
        return None

    def _planned_allocations(self) -> list[int]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(AllocationRow.id)
                    .where(AllocationRow.state == AllocationState.PLANNED.value)
                    .order_by(AllocationRow.id)
                ).all()
            )

    def _still_planned(self, allocation_id: int) -> bool:
        with self.db.session() as session:
            state = session.scalar(
                select(AllocationRow.state).where(AllocationRow.id == allocation_id)
            )
        return state == AllocationState.PLANNED.value

    def _run_planned(self, report: TickReport) -> None:
        self._runs = {a: t for a, t in self._runs.items() if t.is_alive()}
        for allocation_id in self._planned_allocations():
            if self.stopping:
                return
            claim = f"allocation:{allocation_id}"
            if allocation_id in self._runs or not self._acquire(claim):
                continue
            # Re-read under the claim: another daemon may have run it since we listed it.
            if not self._still_planned(allocation_id):
                self._release(claim)
                continue
            report.launched.append(allocation_id)
            thread = threading.Thread(
                target=self._run_one,
                args=(report, allocation_id, claim),
                name=f"allocation-{allocation_id}",
            )
            self._runs[allocation_id] = thread
            thread.start()

    def _run_one(self, report: TickReport, allocation_id: int, claim: str) -> None:
        try:
            self._step(
                report,
                f"run allocation {allocation_id}",
                lambda: self.steps.run_allocation(allocation_id),
            )
        finally:
            self._release(claim)

    def wait_for_runs(self) -> None:
        """Until every run this daemon started has ended."""
        for thread in list(self._runs.values()):
            thread.join()

    def tick(self, now: datetime | None = None) -> TickReport:
        report = TickReport()
        now = now or utcnow()
        report.leader = self._acquire(LEADER)
        if report.leader:
            if leases.acquire(
                self.db, REFRESH, self.holder, self.refresh_interval, now=now, renew=False
            ):
                report.refreshed = True
                done = self._step(report, "refresh", self.steps.refresh)
                report.errors.extend(
                    f"refresh: {r.provider} {r.region or '(all)'}: {r.error}"
                    for r in getattr(done, "results", ())
                    if not r.ok
                )
            if not self.stopping:
                report.scheduled = True
                self._step(report, "schedule", self.steps.schedule)
        if not self.stopping:
            self._run_planned(report)
        if report.leader and not self.stopping:
            report.reconciled = True
            done = self._step(report, "reconcile", self.steps.reconcile)
            report.foreign = len(getattr(done, "foreign", ()))
            report.errors.extend(f"reconcile: {e}" for e in getattr(done, "errors", ()))
        if not self.stopping:
            made = self._step(report, "reports", lambda: self.steps.reports(now))
            report.reports = len(made or [])
        return report

    # --- the loop -----------------------------------------------------------------------

    def run(self, *, once: bool = False) -> list[TickReport]:
        """Tick every ``interval`` seconds until stopped (or once); give leases back after."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        heartbeat = threading.Thread(target=self._heartbeat, name="lease-heartbeat", daemon=True)
        heartbeat.start()
        ticks = []
        try:
            while not self.stopping:
                tick = self.tick()
                ticks.append(tick)
                if once:
                    self.wait_for_runs()
                log.info("tick: %s", tick.summary())
                if once:
                    break
                self._stop.wait(self.interval)
        finally:
            self._stop.set()
            self.wait_for_runs()
            with self._held_lock:
                names = sorted(self._held)
            for name in names:
                self._release(name)
            heartbeat.join(timeout=5)
        return ticks
