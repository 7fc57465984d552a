"""Make the providers match the database after a crash, a lost node or a stray launch.

One pass:
1. an allocation being provisioned or run whose executor is gone (its lease expired, or
   its holder process on this host is dead) is torn down and marked ORPHANED; the job
   goes back to PENDING (via PREEMPTED when it was running) to be planned again;
2. every instance a provider lists under our owner tag, made by this installation (the id
   made once per database), that no live allocation owns is terminated (with its Ray
   processes: they run on the node), so a half-launched gang is never left behind.
   Instances of other installations sharing the owner tag are counted, never touched.
After it: no leaked instances, no live allocation without an executor, and every gang
either complete (its executor still runs it) or absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select

from broker.config import Settings
from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow
from broker.domain import AllocationState, InstanceState, JobState, utcnow
from broker.errors import BrokerError, UserError
from broker.services import execution, runners
from broker.services import jobs as jobs_service

if TYPE_CHECKING:
    from providers.base import InstanceRecord

_STARTED = (AllocationState.PROVISIONING.value, AllocationState.ACTIVE.value)


@dataclass
class ReconcileReport:
    terminated: list[str] = field(default_factory=list)  # "provider:instance id"
    orphaned_allocations: list[int] = field(default_factory=list)
    requeued_jobs: list[int] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # other installations' instances
    errors: list[str] = field(default_factory=list)
    failed_providers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[object]]:
        return {
            "terminated": list(self.terminated),
            "orphaned_allocations": list(self.orphaned_allocations),
            "requeued_jobs": list(self.requeued_jobs),
            "foreign": list(self.foreign),
            "errors": list(self.errors),
        }


def _orphan(db: Database, settings: Settings, allocation_id: int, report: ReconcileReport) -> None:
    execution.teardown(db, settings, allocation_id)
    with jobs_service.guarded(db) as session:
        alloc = session.get(AllocationRow, allocation_id)
        if alloc is None or not AllocationState(alloc.state).live:
            return
        alloc.state = AllocationState.ORPHANED.value
        job = jobs_service.load_row(session, alloc.job_id)
        state = JobState(job.state)
        message = "its executor stopped; planned again"
        if state is JobState.RUNNING:
            jobs_service.transition(session, job, JobState.PREEMPTED, message)
            state = JobState.PREEMPTED
        if state in (JobState.PREEMPTED, JobState.PROVISIONING, JobState.PLANNED):
            jobs_service.transition(session, job, JobState.PENDING, message)
            report.requeued_jobs.append(job.id)
        jobs_service.record_event(
            session, job.id, "reconcile", {"allocation": allocation_id, "orphaned": True}
        )
    report.orphaned_allocations.append(allocation_id)


def strays(listed: Sequence[InstanceRecord], live: set[int]) -> dict[str, list[str]]:
    """The rule for what reconcile terminates: every listed instance not on its way out
    whose allocation tag names no live allocation, grouped by request id."""
    from providers.base import TAG_ALLOCATION

    found: dict[str, list[str]] = {}
    for record in listed:
        if record.state in (InstanceState.TERMINATED, InstanceState.TERMINATING):
            continue
        owner = record.tags.get(TAG_ALLOCATION, "")
        if owner.isdigit() and int(owner) in live:
            continue
        found.setdefault(record.request_id or "", []).append(record.instance_id)
    return found


def split_installation(
    listed: Sequence[InstanceRecord], installation: str
) -> tuple[list[InstanceRecord], list[InstanceRecord]]:
    """(ours, foreign): an instance is ours only when it carries our installation id; one
    without any (made by an older broker or by hand) is foreign, so it is never touched."""
    ours = [r for r in listed if r.installation == installation]
    foreign = [r for r in listed if r.installation != installation]
    return ours, foreign


def _live_allocations(db: Database) -> dict[int, str]:
    with db.session() as session:
        rows = session.execute(
            select(AllocationRow.id, AllocationRow.state).where(
                AllocationRow.state.in_([s.value for s in AllocationState if s.live])
            )
        )
        return {row.id: row.state for row in rows}


def reconcile(
    db: Database,
    settings: Settings,
    providers: Sequence[str] | None = None,
    *,
    dry_run: bool = False,
) -> ReconcileReport:
    """One reconciliation pass over ``providers`` (default: every provider we launched on).
    With ``dry_run`` it reports what it would orphan and terminate and changes nothing."""
    from providers import registry

    for name in providers or ():
        if name not in registry.names():
            raise UserError(f"--provider {name!r} is unknown; known: {', '.join(registry.names())}")
    report = ReconcileReport()
    for allocation_id, state in sorted(_live_allocations(db).items()):
        if state in _STARTED and not runners.executor_alive(db, allocation_id):
            if dry_run:
                report.orphaned_allocations.append(allocation_id)
                continue
            try:
                _orphan(db, settings, allocation_id, report)
            except BrokerError as exc:
                report.errors.append(f"allocation {allocation_id}: {exc}")

    orphaned = set(report.orphaned_allocations)  # a dry run has left them live
    live = {a: s for a, s in _live_allocations(db).items() if a not in orphaned}
    with db.session() as session:
        used = set(session.scalars(select(InstanceRow.provider).distinct()))
    names = sorted(set(providers) if providers else used)
    installation = db.installation_id
    for name in names:
        try:
            provider = registry.get(name, settings)
            listed = provider.list_instances(settings.owner_tag)
        except BrokerError as exc:
            report.errors.append(f"{name}: {exc}")
            report.failed_providers.append(name)
            continue
        ours, foreign = split_installation(listed, installation)
        report.foreign.extend(
            f"{name}:{r.instance_id}" for r in foreign if r.state is not InstanceState.TERMINATED
        )
        for request_id, ids in sorted(strays(ours, set(live)).items()):
            if dry_run:
                report.terminated.extend(f"{name}:{i}" for i in sorted(ids))
                continue
            try:
                provider.terminate(ids, request_id)
            except BrokerError as exc:
                report.errors.append(f"{name}: {exc}")
                if name not in report.failed_providers:
                    report.failed_providers.append(name)
                continue
            report.terminated.extend(f"{name}:{i}" for i in sorted(ids))
            _mark_terminated(db, name, ids)

    return report


def _mark_terminated(db: Database, provider: str, instance_ids: list[str]) -> None:
    with db.session() as session:
        rows = session.scalars(
            select(InstanceRow).where(
                InstanceRow.provider == provider,
                InstanceRow.provider_instance_id.in_(instance_ids),
            )
        )
        for row in rows:
            if row.state != InstanceState.TERMINATED.value:
                row.state = InstanceState.TERMINATED.value
                row.terminated_at = row.terminated_at or utcnow()
