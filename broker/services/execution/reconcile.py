"""Make the providers match the database after a crash, a lost node or a stray launch.

A pass reads what is (each provider's instances under our owner tag, the allocations the
database knows, whether each allocation's executor still runs), lets :func:`decide` say what
to do, and :func:`apply` does it. The rules live in ``decide`` alone:

- an allocation being provisioned or run whose executor is gone is *orphaned*: torn down,
  marked ORPHANED, its job back to PENDING (via PREEMPTED when it was running);
- an ended allocation whose teardown did not finish (its nodes still listed, or its rows
  not marked terminated) and whose executor is gone has its teardown *retried*, which also
  writes the usage of the nodes that outlived it;
- an instance of this installation (the id made once per database) that no live allocation
  owns and no retried teardown covers is a *stray*: terminated, grouped by request id;
- an allocation that runs while its provider lists none of its nodes up has *lost* them:
  reported; its executor sees the loss and plans the job again;
- an instance of another installation sharing the owner tag, or without an installation id
  (an older broker's, or made by hand), is *foreign*: counted, never touched.

Nothing is decided about a provider that did not answer, except orphaning (the teardown
records its own failure). After a pass: no leaked instance, no live allocation without an
executor, and every gang either complete (its executor still runs it) or absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import or_, select

from broker.config import Settings
from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow
from broker.db.queries import live_allocation
from broker.domain import AllocationState, InstanceState, JobState, utcnow
from broker.errors import BrokerError, UserError
from broker.services.execution.provision import request_id_for
from broker.services.execution.reconcile_rules import (
    Action,
    Cluster,
    Foreign,
    KnownAllocation,
    Listing,
    Lost,
    Orphan,
    RetryTeardown,
    Terminate,
    allocation_tag,
    decide,
)
from broker.services.execution.release import teardown
from broker.services.execution.run_context import executor_alive
from broker.services.jobs import store as jobs_service

if TYPE_CHECKING:
    from providers.base import Launcher

_SETTLED_ROWS = (InstanceState.TERMINATED.value, InstanceState.FAILED.value)


# --- the report ------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    terminated: list[str] = field(default_factory=list)  # "provider:instance id"
    orphaned_allocations: list[int] = field(default_factory=list)
    requeued_jobs: list[int] = field(default_factory=list)
    retried_teardowns: list[int] = field(default_factory=list)  # allocation ids
    lost_allocations: list[int] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # other installations' instances
    errors: list[str] = field(default_factory=list)
    failed_providers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[object]]:
        """Every list but ``failed_providers`` (the errors name them)."""
        return {k: list(v) for k, v in asdict(self).items() if k != "failed_providers"}

    def provider_failed(self, name: str, error: str) -> None:
        self.errors.append(f"{name}: {error}")
        if name not in self.failed_providers:
            self.failed_providers.append(name)


def _record(report: ReconcileReport, action: Action) -> None:
    """Write ``action`` into the report as done (or, in a dry run, as to be done)."""
    match action:
        case Orphan():
            report.orphaned_allocations.append(action.allocation_id)
        case RetryTeardown():
            report.retried_teardowns.append(action.allocation_id)
            report.terminated.extend(f"{action.provider}:{i}" for i in action.instance_ids)
        case Terminate():
            report.terminated.extend(f"{action.provider}:{i}" for i in action.instance_ids)
        case Lost():
            report.lost_allocations.append(action.allocation_id)
        case Foreign():
            report.foreign.extend(f"{action.provider}:{i}" for i in action.instance_ids)


# --- apply -----------------------------------------------------------------------------


def apply(
    actions: Sequence[Action],
    db: Database,
    settings: Settings,
    report: ReconcileReport | None = None,
) -> ReconcileReport:
    """Carry out ``actions`` in order; one that fails is reported and the rest go on."""
    from providers import registry

    report = report or ReconcileReport()
    launchers: dict[str, Launcher] = {}

    def launcher(name: str) -> Launcher:
        if name not in launchers:
            launchers[name] = registry.launcher(name, settings)
        return launchers[name]

    for action in actions:
        try:
            match action:
                case Orphan():
                    _orphan(db, settings, action.allocation_id, report)
                case RetryTeardown():
                    if action.instance_ids:
                        launcher(action.provider).terminate(
                            list(action.instance_ids), action.request_id
                        )
                    # Rows and usage; it lists and terminates again, which is idempotent.
                    teardown(db, settings, action.allocation_id)
                case Terminate():
                    launcher(action.provider).terminate(
                        list(action.instance_ids), action.request_id
                    )
                    _mark_terminated(db, action.provider, action.instance_ids)
        except BrokerError as exc:
            if isinstance(action, Orphan):
                report.errors.append(f"allocation {action.allocation_id}: {exc}")
            else:
                report.provider_failed(action.provider, str(exc))
            continue
        _record(report, action)
    return report


def _orphan(db: Database, settings: Settings, allocation_id: int, report: ReconcileReport) -> None:
    teardown(db, settings, allocation_id)
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


def _mark_terminated(db: Database, provider: str, instance_ids: Sequence[str]) -> None:
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


# --- one pass --------------------------------------------------------------------------


def reconcile(
    db: Database,
    settings: Settings,
    providers: Sequence[str] | None = None,
    *,
    dry_run: bool = False,
) -> ReconcileReport:
    """One pass over ``providers`` (default: every provider we launched on). With
    ``dry_run`` it reports what it would do and changes nothing."""
    from providers import registry

    for name in providers or ():
        if name not in registry.LAUNCHERS:
            why = "launches no machines" if name in registry.names() else "is unknown"
            allowed = ", ".join(registry.LAUNCHERS)
            raise UserError(f"--provider {name!r} {why}; allowed: {allowed}")
    report = ReconcileReport()
    listings = _list(db, settings, providers, report)
    # Read after the listings: an allocation made meanwhile is known, so its nodes are
    # never taken for strays.
    allocations = _known_allocations(db, settings, listings)
    clusters = [
        Cluster(a.id, executor_alive(db, a.id))
        for a in allocations
        if a.state is not AllocationState.PLANNED
    ]
    actions = decide(allocations, listings, clusters, db.installation_id)
    if not dry_run:
        return apply(actions, db, settings, report)
    for action in actions:
        _record(report, action)
    return report


def _list(
    db: Database, settings: Settings, providers: Sequence[str] | None, report: ReconcileReport
) -> list[Listing]:
    from providers import registry

    if providers:
        names = sorted(set(providers))
    else:
        with db.session() as session:
            names = sorted(set(session.scalars(select(InstanceRow.provider).distinct())))
    listings = []
    for name in names:
        try:
            listed = registry.launcher(name, settings).list_instances(settings.owner_tag)
        except BrokerError as exc:
            report.provider_failed(name, str(exc))
            continue
        listings.append(Listing(name, tuple(listed)))
    return listings


def _known_allocations(
    db: Database, settings: Settings, listings: Sequence[Listing]
) -> list[KnownAllocation]:
    """Live allocations, ended ones with open rows, and every one a listed node names."""
    tags = (allocation_tag(r) for listing in listings for r in listing.instances)
    named = {a for a in tags if a is not None}
    with db.session() as session:
        open_rows = set(
            session.scalars(
                select(InstanceRow.allocation_id)
                .where(InstanceRow.state.not_in(_SETTLED_ROWS))
                .distinct()
            )
        )
        rows = session.execute(
            select(AllocationRow.id, AllocationRow.state, AllocationRow.provider).where(
                or_(live_allocation(), AllocationRow.id.in_(named | open_rows))
            )
        ).all()
    return [
        KnownAllocation(
            row.id,
            AllocationState(row.state),
            row.provider,
            request_id_for(db, settings, row.id),
            open_rows=row.id in open_rows,
        )
        for row in rows
    ]
