"""Run a planned allocation: provision, run on its own cluster, tear down, meter (DESIGN §6).

The order is what makes crashes recoverable:
1. the job and allocation go PROVISIONING and one instance row per node, carrying the
   launch's request id, is committed *before* the provider is called;
2. ``provider.launch`` (convergent by request id) with the nodes' boot script, then the
   rows get the provider's ids;
3. once every node runs, the head's private address is published to the nodes
   (``Provider.set_metadata``); they form their Ray cluster themselves, and the run goes
   to the head as a Ray job whose output and events are copied as they come;
4. teardown (terminate), then one usage row per instance.

No node runs anything but its own boot and the run: the broker never trains on a
stand-in for a node it pays for. The executor holds the lease ``alloc-<id>`` while it
works; the reconciler treats an allocation whose executor is gone as orphaned. Crash
points for tests: set ``GPUBROKER_CRASH_AT`` to one of ``runners.CRASH_POINTS``.

The run is carried out by a *runner* (:mod:`broker.services.runners`): the Ray job on the
cluster, or, in tests, the bundled loop in this process with no cluster booted.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from broker.config import Settings
from broker.db.engine import Database
from broker.db.models import AllocationRow, InstanceRow, JobRow, OfferRow, UsageRow
from broker.domain import (
    MICRO,
    AllocationState,
    EndpointState,
    InstanceState,
    JobKind,
    JobState,
    Pricing,
    as_utc,
    utcnow,
)
from broker.errors import (
    BrokerError,
    BudgetExceeded,
    CapacityError,
    ConfigError,
    ConflictError,
    Infeasible,
    NotFound,
    OutOfCapacity,
    StaleWrite,
)
from broker.services import jobs as jobs_service
from broker.services import leases, metering, node_boot, ray_jobs
from broker.services import serving as serving_service
from broker.services.runners import (
    LEASE_TTL_S,
    POLL_S,
    Monitor,
    Outcome,
    Progress,
    ProgressFn,
    RunContext,
    Runner,
    cluster_key,
    crash_point,
    executor_alive,
    lease_holder,
    lease_name,
    needs_cluster,
    newest_checkpoint,
    ray_job_runner,
)

if TYPE_CHECKING:
    from providers.base import InstanceRecord, Provider

RUNNING_TIMEOUT_S = 600.0
STALE_RETRIES = 5  # optimistic-lock races between one job's allocations, retried
# Providers whose nodes are reached over the internet: a launch needs ``ingress_cidr``.
NEEDS_INGRESS = ("aws", "gcp")


def request_id_for(db: Database, settings: Settings, allocation_id: int) -> str:
    """Unique across installations sharing a cloud account: it carries the database's
    installation id, and so do the client tokens and names derived from it."""
    return f"{settings.owner_tag}-{db.installation_id}-alloc-{allocation_id}"


# --- the executor -----------------------------------------------------------------------


def _allocation(session: Any, allocation_id: int) -> AllocationRow:
    row = session.get(AllocationRow, allocation_id)
    if row is None:
        raise NotFound(f"allocation {allocation_id} does not exist")
    return row


def _on_demand_price(session: Any, alloc: AllocationRow) -> Decimal | None:
    if alloc.pricing == Pricing.ON_DEMAND.value:
        return alloc.price_at_plan
    return session.scalar(
        select(OfferRow.price_per_hour).where(
            OfferRow.provider == alloc.provider,
            OfferRow.region == alloc.region,
            OfferRow.zone == alloc.zone,
            OfferRow.instance_type == alloc.instance_type,
            OfferRow.pricing == Pricing.ON_DEMAND.value,
        )
    )


def _check_budget(session: Any, job: JobRow, alloc: AllocationRow) -> None:
    """Refuse a launch that would take the team or the job past its budget."""
    from broker.db.models import BudgetRow
    from broker.services import budgets

    if job.budget is not None and alloc.est_cost > job.budget:
        raise BudgetExceeded(
            f"job {job.id}: estimated cost {alloc.est_cost:.2f} USD exceeds its budget "
            f"{job.budget:.2f} USD"
        )
    row = session.scalar(select(BudgetRow).where(BudgetRow.team == job.team))
    if row is None:
        return
    # spent() already counts this allocation's estimate, since it is live.
    spent = budgets.spent(session, job.team, budgets.period_start(row.period, utcnow()))
    if spent > row.amount:
        raise BudgetExceeded(
            f"team {job.team}: launching allocation {alloc.id} would spend {spent:.2f} USD "
            f"of a {row.amount:.2f} USD {row.period} budget"
        )


def _begin(db: Database, settings: Settings, allocation_id: int) -> tuple[int, bool]:
    """PLANNED -> PROVISIONING and the instance rows; returns (job id, go on?)."""
    # The lease comes first, so the reconciler never sees a PROVISIONING allocation
    # without an executor that is still alive.
    if not leases.acquire(db, lease_name(allocation_id), lease_holder(), LEASE_TTL_S):
        raise ConflictError(f"allocation {allocation_id} is being run by another executor")
    attempts = 0
    while True:
        try:
            return _begin_once(db, settings, allocation_id)
        except StaleWrite:  # a serving job's other allocation moved the job: read it again
            attempts += 1
            if attempts >= STALE_RETRIES:
                leases.release(db, lease_name(allocation_id), lease_holder())
                raise


def _begin_once(db: Database, settings: Settings, allocation_id: int) -> tuple[int, bool]:
    failed: BudgetExceeded | None = None
    with jobs_service.guarded(db) as session:
        alloc = _allocation(session, allocation_id)
        job = jobs_service.load_row(session, alloc.job_id)
        job_id = job.id
        if not AllocationState(alloc.state).live or JobState(job.state).terminal:
            done = True
            if alloc.state == AllocationState.PLANNED.value:
                alloc.state = AllocationState.RELEASED.value  # its job ended: never launched
        else:
            done = False
            try:
                _check_budget(session, job, alloc)
            except BudgetExceeded as exc:
                failed = exc
                alloc.state = AllocationState.FAILED.value
                jobs_service.transition(session, job, JobState.FAILED, str(exc))
            else:
                _provision_rows(session, request_id_for(db, settings, allocation_id), job, alloc)
    if done or failed is not None:
        leases.release(db, lease_name(allocation_id), lease_holder())
    if failed is not None:
        raise failed
    return job_id, not done


def _provision_rows(session: Any, request_id: str, job: JobRow, alloc: AllocationRow) -> None:
    """Job and allocation to PROVISIONING; one REQUESTED instance row per missing node."""
    if job.state == JobState.PLANNED.value:
        jobs_service.transition(session, job, JobState.PROVISIONING)
        job.attempts += 1
    alloc.state = AllocationState.PROVISIONING.value
    have = {row.node_index for row in alloc.instances}
    price = alloc.price_at_plan if alloc.price_at_plan is not None else Decimal(0)
    for index in range(alloc.nodes):
        if index in have:
            continue
        session.add(
            InstanceRow(
                allocation_id=alloc.id,
                provider=alloc.provider,
                region=alloc.region,
                zone=alloc.zone,
                instance_type=alloc.instance_type,
                pricing=alloc.pricing,
                request_id=request_id,
                node_index=index,
                state=InstanceState.REQUESTED.value,
                price_per_hour=price,
            )
        )


def _launch(
    db: Database,
    settings: Settings,
    allocation_id: int,
    provider: Provider,
    cluster: node_boot.ClusterSpec | None,
) -> list[InstanceRecord]:
    from providers.base import TAG_ALLOCATION, TAG_JOB, LaunchRequest

    with db.session() as session:
        alloc = _allocation(session, allocation_id)
        request = LaunchRequest(
            request_id=request_id_for(db, settings, allocation_id),
            region=alloc.region,
            zone=alloc.zone or None,
            instance_type=alloc.instance_type,
            nodes=alloc.nodes,
            pricing=Pricing(alloc.pricing),
            owner=settings.owner_tag,
            installation=db.installation_id,
            tags={TAG_JOB: str(alloc.job_id), TAG_ALLOCATION: str(alloc.id)},
            user_data=node_boot.boot_script(cluster) if cluster is not None else None,
            ingress_cidr=settings.ingress_cidr if cluster is not None else None,
            ports=cluster.ports if cluster is not None else (),
        )
    records = provider.launch(request)
    crash_point("after_cloud_create")
    _record_launch(db, allocation_id, records)
    return records


def _record_launch(db: Database, allocation_id: int, records: list[InstanceRecord]) -> None:
    by_index = {r.node_index: r for r in records}
    with db.session() as session:
        alloc = _allocation(session, allocation_id)
        for row in alloc.instances:
            record = by_index.get(row.node_index)
            if record is None or row.state == InstanceState.TERMINATED.value:
                continue
            row.provider_instance_id = record.instance_id
            row.state = record.state.value
            row.address = record.address or record.private_address
            row.launched_at = row.launched_at or record.launched_at or utcnow()


def _wait_running(
    db: Database, settings: Settings, allocation_id: int, job_id: int, provider: Provider
) -> list[InstanceRecord] | None:
    """Poll until every node runs; None when the job was cancelled meanwhile."""
    deadline = time.monotonic() + RUNNING_TIMEOUT_S
    request_id = request_id_for(db, settings, allocation_id)
    while True:
        with db.session() as session:
            if jobs_service.load_row(session, job_id).state == JobState.CANCELLED.value:
                return None
            alloc = _allocation(session, allocation_id)
            nodes, zone = alloc.nodes, alloc.zone
        mine = [
            r for r in provider.list_instances(settings.owner_tag) if r.request_id == request_id
        ]
        _record_launch(db, allocation_id, mine)
        running = sorted(
            (r for r in mine if r.state == InstanceState.RUNNING), key=lambda r: r.node_index or 0
        )
        if len(running) == nodes:
            return running
        gone = [r for r in mine if r.state in (InstanceState.PREEMPTED, InstanceState.FAILED)]
        if gone or time.monotonic() > deadline:
            raise OutOfCapacity(provider.name, zone, "nodes did not all reach RUNNING")
        leases.acquire(db, lease_name(allocation_id), lease_holder(), LEASE_TTL_S)
        time.sleep(POLL_S)


def teardown(
    db: Database, settings: Settings, allocation_id: int, *, busy_seconds: float | None = None
) -> int:
    """Stop Ray, terminate every node of the allocation, write the usage rows. Idempotent.

    Returns the number of instances terminated now.
    """
    from providers import registry

    serving_service.close(db, allocation_id, EndpointState.STOPPED)  # if it served, and is open

    with db.session() as session:
        alloc = _allocation(session, allocation_id)
        provider_name = alloc.provider
        request_id = request_id_for(db, settings, allocation_id)
        known = [r.provider_instance_id for r in alloc.instances if r.provider_instance_id]
    try:
        provider = registry.get(provider_name, settings)
        listed = [
            r for r in provider.list_instances(settings.owner_tag) if r.request_id == request_id
        ]
        _record_launch(db, allocation_id, listed)  # nodes a crash kept us from recording
        ids = sorted({*known, *(r.instance_id for r in listed)})
        if ids:
            provider.terminate(ids, request_id)
    except BrokerError as exc:
        # Recorded, never raised: the caller still ends the job, and once the allocation is
        # over its nodes are strays that ``reconcile`` terminates when the provider answers.
        _note_teardown_failure(db, allocation_id, exc)
        return 0
    now = utcnow()
    with db.session() as session:
        alloc = _allocation(session, allocation_id)
        job = jobs_service.load_row(session, alloc.job_id)
        on_demand = _on_demand_price(session, alloc)
        for row in alloc.instances:
            if row.state != InstanceState.TERMINATED.value:
                row.state = (
                    InstanceState.TERMINATED.value
                    if row.provider_instance_id or row.launched_at
                    else InstanceState.FAILED.value
                )
                row.terminated_at = row.terminated_at or now
            _write_usage(session, alloc, job, row, on_demand, busy_seconds)
    return len([r for r in listed if r.state != InstanceState.TERMINATED])


def _note_teardown_failure(db: Database, allocation_id: int, exc: BrokerError) -> None:
    with db.session() as session:
        job_id = _allocation(session, allocation_id).job_id
        jobs_service.record_event(
            session,
            job_id,
            "teardown_failed",
            {"allocation": allocation_id, "error": str(exc), "retry": "gpubroker reconcile"},
        )


def _write_usage(
    session: Any,
    alloc: AllocationRow,
    job: JobRow,
    row: InstanceRow,
    on_demand: Decimal | None,
    busy_seconds: float | None,
) -> None:
    if row.launched_at is None or row.terminated_at is None:
        return  # never ran: nothing to bill
    if session.scalar(select(UsageRow.id).where(UsageRow.instance_id == row.id)) is not None:
        return
    start, end = as_utc(row.launched_at), as_utc(row.terminated_at)
    lifetime = max(0.0, (end - start).total_seconds())
    price = row.price_per_hour if row.price_per_hour is not None else Decimal(0)
    # The launch price until the offer's price moves (spot), then each observed price.
    cost = metering.metered_cost(
        session, offer_id=alloc.offer_id, price_per_hour=price, start=start, end=end
    )
    session.add(
        UsageRow(
            instance_id=row.id,
            job_id=job.id,
            team=job.team,
            provider=row.provider,
            region=row.region,
            zone=row.zone,
            instance_type=row.instance_type,
            pricing=row.pricing,
            gpu=alloc.gpu,
            gpus=alloc.gpus_per_node,
            start=start,
            end=end,
            price_per_hour=price,
            on_demand_price_per_hour=on_demand,
            busy_seconds=None if busy_seconds is None else min(busy_seconds, lifetime),
            cost=cost.quantize(MICRO),
        )
    )
    try:
        session.flush()
    except IntegrityError:  # a concurrent teardown wrote it first
        session.rollback()


def _finish(
    db: Database,
    allocation_id: int,
    job_state: JobState,
    alloc_state: AllocationState,
    message: str | None = None,
) -> JobState:
    """Final states of the job and allocation; a concurrent cancel wins over ours.

    A serving job answers from several allocations: one that ends while others still
    serve leaves the job as it is (the event says why), so the other areas keep answering.
    """
    for _ in range(3):
        try:
            with jobs_service.guarded(db) as session:
                alloc = _allocation(session, allocation_id)
                job = jobs_service.load_row(session, alloc.job_id)
                if AllocationState(alloc.state).live:
                    alloc.state = alloc_state.value
                current = JobState(job.state)
                if current.terminal:
                    return current
                if job_state is not JobState.CANCELLED and _others_serve(job, allocation_id):
                    payload = {"allocation": allocation_id, "reason": message or "ended"}
                    jobs_service.record_event(session, job.id, "allocation_ended", payload)
                    return current
                if job_state is JobState.PENDING and current is JobState.RUNNING:
                    jobs_service.transition(session, job, JobState.PREEMPTED, message)
                jobs_service.transition(session, job, job_state, message)
                return job_state
        except ConflictError:
            continue
    raise ConflictError(f"allocation {allocation_id}: could not record its final state")


def _others_serve(job: JobRow, allocation_id: int) -> bool:
    """Whether ``job`` serves from a live allocation other than ``allocation_id``."""
    if job.kind != JobKind.INFERENCE.value:
        return False
    return any(
        a.id != allocation_id and AllocationState(a.state).live for a in job.allocations
    )


def _retire_nodes(
    db: Database, settings: Settings, allocation_id: int, provider: Provider, ids: list[str]
) -> None:
    """Nodes the provider took from a serving allocation that goes on without them:
    terminated (if anything is left of them), their rows closed and metered."""
    request_id = request_id_for(db, settings, allocation_id)
    try:
        provider.terminate(ids, request_id)
    except BrokerError as exc:  # reconcile terminates it once the provider answers
        _note_teardown_failure(db, allocation_id, exc)
    now = utcnow()
    with db.session() as session:
        alloc = _allocation(session, allocation_id)
        job = jobs_service.load_row(session, alloc.job_id)
        on_demand = _on_demand_price(session, alloc)
        for row in alloc.instances:
            if row.provider_instance_id in ids and row.state != InstanceState.TERMINATED.value:
                row.state = InstanceState.TERMINATED.value
                row.terminated_at = now
                _write_usage(session, alloc, job, row, on_demand, None)
        jobs_service.record_event(
            session, job.id, "node_lost", {"allocation": allocation_id, "instances": ids}
        )


def _cooldown(
    db: Database, settings: Settings, allocation_id: int, reason: str, *, whole_zone: bool
) -> None:
    """Keep the pool (capacity) or its whole zone (a lost node) out of the next plans."""
    from broker.services import planning

    with db.session() as session:
        alloc = _allocation(session, allocation_id)
        pool = (alloc.provider, alloc.region, alloc.zone, alloc.instance_type)
    planning.add_cooldown(
        db,
        settings,
        provider=pool[0],
        region=pool[1],
        zone=pool[2],
        instance_type=None if whole_zone else pool[3],
        reason=reason,
    )


def run_allocation(
    db: Database,
    settings: Settings,
    allocation_id: int,
    *,
    progress: ProgressFn | None = None,
    runner: Runner | None = None,
) -> JobState:
    """Provision, train and tear down one allocation; returns the job's state after it.

    Safe to call again after a crash: rows and the launch are keyed by the request id.
    PENDING comes back when the job lost its nodes (capacity or preemption) and should be
    planned again; the pool is put on cool-down first.
    """
    cluster = needs_cluster(runner or ray_job_runner)
    with db.session() as session:
        provider = _allocation(session, allocation_id).provider
    if cluster and provider in NEEDS_INGRESS and settings.ingress_cidr is None:
        raise ConfigError(
            f"GPUBROKER_INGRESS_CIDR: required to launch on {provider} (the addresses the "
            "broker reaches the nodes' Ray ports from, e.g. 203.0.113.7/32)"
        )
    with _machine_turn(settings, provider if cluster else None):
        return _run_begun(db, settings, allocation_id, progress, runner)


@contextmanager
def _machine_turn(settings: Settings, provider: str | None) -> Iterator[None]:
    """Local clusters take turns: their heads share this machine's Ray ports."""
    if provider != "local":
        yield
        return
    path = settings.home / "local" / "cluster.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run_begun(
    db: Database,
    settings: Settings,
    allocation_id: int,
    progress: ProgressFn | None,
    runner: Runner | None,
) -> JobState:
    job_id, go = _begin(db, settings, allocation_id)
    if not go:
        return JobState(jobs_service.get(db, job_id).state)
    try:
        return _provision_and_train(db, settings, allocation_id, job_id, progress, runner)
    except KeyboardInterrupt:
        # Ctrl-C at the terminal: leave nothing running, then let the interrupt through.
        teardown(db, settings, allocation_id)
        _finish(db, allocation_id, JobState.CANCELLED, AllocationState.RELEASED, "interrupted")
        raise
    finally:
        leases.release(db, lease_name(allocation_id), lease_holder())


def _provision_and_train(
    db: Database,
    settings: Settings,
    allocation_id: int,
    job_id: int,
    progress: ProgressFn | None,
    runner: Runner | None,
) -> JobState:
    from providers import registry

    crash_point("after_launch_record")
    with db.session() as session:
        alloc = _allocation(session, allocation_id)
        provider_name, gpu, gpus_per_node = alloc.provider, alloc.gpu, alloc.gpus_per_node
        price = alloc.price_at_plan if alloc.price_at_plan is not None else Decimal(0)
        spec = dict(jobs_service.load_row(session, job_id).spec)
    _notify(progress, job_id, JobState.PROVISIONING, f"launching on {provider_name}")
    run = runner or ray_job_runner
    serving = spec.get("kind") == JobKind.INFERENCE.value
    cluster = (
        node_boot.cluster_spec(
            settings, provider_name, cluster_key(allocation_id), serving=serving
        )
        if needs_cluster(run)
        else None
    )
    head: ray_jobs.Head | None = None
    try:
        provider = registry.get(provider_name, settings)
        _launch(db, settings, allocation_id, provider, cluster)
        running = _wait_running(db, settings, allocation_id, job_id, provider)
        if running is not None and cluster is not None:
            head = _publish_head(settings, provider, running, cluster)
    except CapacityError as exc:
        teardown(db, settings, allocation_id)
        _cooldown(db, settings, allocation_id, str(exc), whole_zone=False)
        return _finish(db, allocation_id, JobState.PENDING, AllocationState.FAILED, str(exc))
    except BrokerError as exc:
        teardown(db, settings, allocation_id)
        return _finish(db, allocation_id, JobState.FAILED, AllocationState.FAILED, str(exc))
    if running is None:  # cancelled while provisioning
        teardown(db, settings, allocation_id)
        return _finish(db, allocation_id, JobState.CANCELLED, AllocationState.RELEASED)
    crash_point("before_ray_start")
    if not _mark_running(db, allocation_id, job_id):  # cancelled in the meantime
        teardown(db, settings, allocation_id)
        return _finish(db, allocation_id, JobState.CANCELLED, AllocationState.RELEASED)
    _notify(progress, job_id, JobState.RUNNING, f"{len(running)} nodes running")
    ctx = RunContext(
        db=db,
        settings=settings,
        job_id=job_id,
        allocation_id=allocation_id,
        spec=spec,
        nodes=len(running),
        gpu=gpu,
        gpus_per_node=gpus_per_node,
        provider=provider_name,
        head=head,
        cluster=cluster,
    )
    monitor = Monitor(ctx, provider, [r.instance_id for r in running], progress, price)
    if serving:  # a lost node that is not the head: Serve restarts its replicas elsewhere
        monitor.on_lost = lambda ids: _retire_nodes(db, settings, allocation_id, provider, ids)
    started = utcnow()  # the clock the ledger bills by (a simulation's virtual one too)
    try:
        outcome = run(ctx, monitor)
    except BrokerError as exc:
        outcome = Outcome(ok=False, error=str(exc))
    busy = (utcnow() - started).total_seconds()
    if serving:
        gone = outcome.ok or outcome.stop == "cancelled"
        serving_service.close(
            db, allocation_id, EndpointState.STOPPED if gone else EndpointState.LOST
        )
    teardown(db, settings, allocation_id, busy_seconds=busy)
    if outcome.ok:
        return _finish(db, allocation_id, JobState.SUCCEEDED, AllocationState.RELEASED)
    if outcome.stop == "cancelled":
        return _finish(db, allocation_id, JobState.CANCELLED, AllocationState.RELEASED)
    if outcome.stop is not None:
        _cooldown(db, settings, allocation_id, outcome.stop, whole_zone=True)
        return _finish(db, allocation_id, JobState.PENDING, AllocationState.FAILED, outcome.stop)
    return _finish(db, allocation_id, JobState.FAILED, AllocationState.FAILED, outcome.error)


def _mark_running(db: Database, allocation_id: int, job_id: int) -> bool:
    """Job RUNNING (if it is not yet: a serving job's other allocations may be first) and
    the allocation ACTIVE; False when the job was cancelled in the meantime."""
    for _ in range(STALE_RETRIES):
        try:
            with jobs_service.guarded(db) as session:
                alloc = _allocation(session, allocation_id)
                job = jobs_service.load_row(session, job_id)
                jobs_service.transition(session, job, JobState.RUNNING)
                alloc.state = AllocationState.ACTIVE.value
            return True
        except StaleWrite:  # another allocation of the job moved it: read it again
            continue
        except ConflictError:
            return False
    return False


def _publish_head(
    settings: Settings,
    provider: Provider,
    running: list[InstanceRecord],
    cluster: node_boot.ClusterSpec,
) -> ray_jobs.Head:
    """Tell every node where its head is (node 0's private address); where we reach it."""
    from providers.base import META_HEAD

    node = running[0]
    private = node.private_address or node.address
    reach = node.address if settings.cluster_network == "public" else private
    if private is None or reach is None:
        raise BrokerError(f"node {node.instance_id} has no address to reach its head at")
    provider.set_metadata([r.instance_id for r in running], {META_HEAD: private})
    return ray_jobs.Head(f"http://{reach}:{cluster.dashboard_port}", cluster.token)


def _notify(progress: ProgressFn | None, job_id: int, state: JobState, message: str) -> None:
    if progress is not None:
        progress(Progress(job_id=job_id, state=state.value, message=message))


# --- releasing and whole jobs -----------------------------------------------------------


def release_job(
    db: Database, settings: Settings, job_id: int, *, reason: str, grace_s: float = 0.0
) -> list[int]:
    """Tear down every live allocation of ``job_id``; returns their ids.

    With ``grace_s``, executors still running an allocation first get that long to stop
    their run themselves (a serving run drains its requests, a training run ends cleanly).
    """
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(
        executor_alive(db, i) for i in _live_allocations(db, job_id)
    ):
        time.sleep(POLL_S)
    ids = _live_allocations(db, job_id)
    for allocation_id in ids:
        teardown(db, settings, allocation_id)
        with jobs_service.guarded(db) as session:
            alloc = _allocation(session, allocation_id)
            if AllocationState(alloc.state).live:
                alloc.state = AllocationState.RELEASED.value
            jobs_service.record_event(
                session, job_id, "released", {"allocation": allocation_id, "reason": reason}
            )
    return ids


def schedule_job(db: Database, settings: Settings, job_id: int) -> list[int]:
    """Plan ``job_id`` now; its new allocation ids, or Infeasible with the reason."""
    from broker.services import planning

    result = planning.schedule(db, settings, job_ids=[job_id])
    if job_id in result.unplaced:
        raise Infeasible([f"job {job_id}: {result.unplaced[job_id]}"])
    return list(result.allocation_ids)


def run_job(
    db: Database,
    settings: Settings,
    job_id: int,
    *,
    progress: ProgressFn | None = None,
    runner: Runner | None = None,
    max_rounds: int | None = None,
) -> JobState:
    """Plan and run ``job_id`` until it ends, re-planning after capacity loss."""
    rounds = max_rounds or 2 + int(jobs_service.get(db, job_id).spec.get("max_failures", 3))
    state = JobState(jobs_service.get(db, job_id).state)
    for _ in range(rounds):
        if state.terminal:
            return state
        if state is JobState.PENDING:
            allocation_ids = schedule_job(db, settings, job_id)
        else:
            allocation_ids = _live_allocations(db, job_id)
        try:
            state = _run_allocations(db, settings, job_id, allocation_ids, progress, runner)
        except ConflictError as exc:
            holders = {leases.holder_of(db, lease_name(i)) for i in allocation_ids}
            if holders <= {None, lease_holder()}:
                raise exc
            return attach(db, job_id, progress)  # a daemon runs it: follow it to its end
    return state


def _run_allocations(
    db: Database,
    settings: Settings,
    job_id: int,
    allocation_ids: list[int],
    progress: ProgressFn | None,
    runner: Runner | None,
) -> JobState:
    """Run a job's allocations: one after another (a training gang has one), or, for a
    serving job, all at once (each area's endpoint runs until the job is cancelled)."""
    if len(allocation_ids) < 2 or jobs_service.get(db, job_id).kind != JobKind.INFERENCE:
        state = JobState(jobs_service.get(db, job_id).state)
        for allocation_id in allocation_ids:
            state = run_allocation(db, settings, allocation_id, progress=progress, runner=runner)
        return state
    errors: list[BaseException] = []

    def one(allocation_id: int) -> None:
        try:
            run_allocation(db, settings, allocation_id, progress=progress, runner=runner)
        except BaseException as exc:  # raised below, in the caller's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=one, args=(i,), name=f"alloc-{i}", daemon=True)
        for i in allocation_ids
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:  # only this thread hears it: stop every area, then go
        with contextlib.suppress(ConflictError):  # unless the job already ended
            jobs_service.cancel(db, settings, job_id)
        for thread in threads:
            thread.join(timeout=jobs_service.CANCEL_GRACE_S)
        raise
    if errors:
        raise errors[0]
    return JobState(jobs_service.get(db, job_id).state)


def attach(db: Database, job_id: int, progress: ProgressFn | None = None) -> JobState:
    """Follow a job another executor runs until it ends, passing its progress on."""
    after = 0
    while True:
        state = JobState(jobs_service.get(db, job_id).state)
        for event in jobs_service.events(db, job_id, after):
            after = event.id
            record = event.payload
            if progress is not None and event.kind == "progress":
                progress(
                    Progress(
                        job_id=job_id,
                        state=state.value,
                        step=record.get("step"),
                        steps=record.get("steps"),
                        loss=record.get("loss"),
                        tokens_per_s=record.get("tokens_per_s"),
                    )
                )
        if state.terminal:
            return state
        time.sleep(POLL_S * 2)


def _live_allocations(db: Database, job_id: int) -> list[int]:
    with db.session() as session:
        return list(
            session.scalars(
                select(AllocationRow.id)
                .where(
                    AllocationRow.job_id == job_id,
                    AllocationRow.state.in_([s.value for s in AllocationState if s.live]),
                )
                .order_by(AllocationRow.id)
            )
        )


def run_pending(
    db: Database,
    settings: Settings,
    *,
    progress: ProgressFn | None = None,
    runner: Runner | None = None,
) -> list[int]:
    """Schedule every PENDING job and run the PLANNED allocations; the job ids run."""
    from broker.services import planning

    planning.schedule(db, settings)
    with db.session() as session:
        ids = list(
            session.scalars(
                select(AllocationRow.id)
                .where(AllocationRow.state == AllocationState.PLANNED.value)
                .order_by(AllocationRow.id)
            )
        )
        # An inference job holds one allocation per pool of its replica mix.
        by_job: dict[int, list[int]] = {}
        for allocation_id in ids:
            by_job.setdefault(_allocation(session, allocation_id).job_id, []).append(allocation_id)
    for job_id, allocation_ids in by_job.items():
        _run_allocations(db, settings, job_id, allocation_ids, progress, runner)
    return list(by_job)


def usage_cost(db: Database, job_id: int) -> Decimal:
    """What the ledger has charged ``job_id`` so far."""
    from sqlalchemy import func

    with db.session() as session:
        total = session.scalar(
            select(func.coalesce(func.sum(UsageRow.cost), 0)).where(UsageRow.job_id == job_id)
        )
    return Decimal(str(total))


@dataclass(frozen=True)
class JobSummary:
    """What a finished (or running) job produced and cost, from its events and the ledger."""

    job_id: int
    state: str
    step: int | None
    steps: int | None
    first_loss: float | None
    last_loss: float | None
    tokens_per_s: float | None
    checkpoint: str | None
    cost: Decimal
    node_hours: float
    usage_rows: int
    message: str | None


def summary(db: Database, settings: Settings, job_id: int) -> JobSummary:
    view = jobs_service.get(db, job_id)
    progress = [e.payload for e in jobs_service.events(db, job_id) if e.kind == "progress"]
    with db.session() as session:
        rows = list(session.scalars(select(UsageRow).where(UsageRow.job_id == job_id)))
    found = newest_checkpoint(settings, job_id, view.spec)
    checkpoint = found.removeprefix("file://") if found else None  # a local folder: its path
    last = progress[-1] if progress else {}
    return JobSummary(
        job_id=job_id,
        state=view.state.value,
        step=last.get("step"),
        steps=last.get("steps"),
        first_loss=progress[0].get("loss") if progress else None,
        last_loss=last.get("loss"),
        tokens_per_s=last.get("tokens_per_s"),
        checkpoint=checkpoint,
        cost=sum((r.cost for r in rows), Decimal(0)),
        node_hours=sum((as_utc(r.end) - as_utc(r.start)).total_seconds() for r in rows) / 3600,
        usage_rows=len(rows),
        message=view.message,
    )
