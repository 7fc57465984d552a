"""Run a planned allocation: provision, run on its own cluster, tear down, meter (DESIGN §6).

Provisioning (``provision``) commits the instance rows before any cloud call; the run goes
to the cluster's head as a Ray job whose output and events are copied as they come; then
teardown (``release``) terminates the nodes and writes one usage row per instance.

No node runs anything but its own boot and the run: the broker never trains on a
stand-in for a node it pays for. Crash points for tests: set ``GPUBROKER_CRASH_AT`` to
one of ``run_context.CRASH_POINTS``.

The run is carried out by a *runner* (:mod:`broker.services.execution.runners`): the Ray
job on the cluster, or, in tests, the bundled loop in this process with no cluster booted.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

from broker.config import Settings
from broker.db import leases
from broker.db.engine import Database
from broker.db.models import JobRow
from broker.domain import AllocationState, EndpointState, JobKind, JobState, utcnow
from broker.errors import BrokerError, CapacityError, ConfigError, ConflictError, StaleWrite
from broker.services.execution import endpoints, node_boot, ray_jobs
from broker.services.execution.monitor import Monitor
from broker.services.execution.provision import (
    STALE_RETRIES,
    begin,
    launch,
    load_allocation,
    publish_head,
    wait_running,
)
from broker.services.execution.release import retire_nodes, teardown
from broker.services.execution.run_context import (
    Outcome,
    Progress,
    ProgressFn,
    RunContext,
    cluster_key,
    crash_point,
    lease_holder,
    lease_name,
)
from broker.services.execution.runners import Runner, needs_cluster, ray_job_runner
from broker.services.jobs import store as jobs_service

# Providers whose nodes are reached over the internet: a launch needs ``ingress_cidr``.
NEEDS_INGRESS = ("aws", "gcp")


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
        provider = load_allocation(session, allocation_id).provider
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
    job_id, go = begin(db, settings, allocation_id)
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
        alloc = load_allocation(session, allocation_id)
        provider_name, gpu, gpus_per_node = alloc.provider, alloc.gpu, alloc.gpus_per_node
        price = alloc.price_at_plan if alloc.price_at_plan is not None else Decimal(0)
        spec = dict(jobs_service.load_row(session, job_id).spec)
    _notify(progress, job_id, JobState.PROVISIONING, f"launching on {provider_name}")
    run = runner or ray_job_runner
    serving = spec.get("kind") == JobKind.INFERENCE.value
    cluster = (
        node_boot.cluster_spec(settings, provider_name, cluster_key(allocation_id), serving=serving)
        if needs_cluster(run)
        else None
    )
    head: ray_jobs.Head | None = None
    try:
        provider = registry.launcher(provider_name, settings)
        launch(db, settings, allocation_id, provider, cluster)
        running = wait_running(db, settings, allocation_id, job_id, provider)
        if running is not None and cluster is not None:
            head = publish_head(settings, provider, running, cluster)
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
        monitor.on_lost = lambda ids: retire_nodes(db, settings, allocation_id, provider, ids)
    started = utcnow()  # the clock the ledger bills by (a simulation's virtual one too)
    try:
        outcome = run(ctx, monitor)
    except BrokerError as exc:
        outcome = Outcome(ok=False, error=str(exc))
    busy = (utcnow() - started).total_seconds()
    if serving:
        gone = outcome.ok or outcome.stop == "cancelled"
        endpoints.close(db, allocation_id, EndpointState.STOPPED if gone else EndpointState.LOST)
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
                alloc = load_allocation(session, allocation_id)
                job = jobs_service.load_row(session, job_id)
                jobs_service.transition(session, job, JobState.RUNNING)
                alloc.state = AllocationState.ACTIVE.value
            return True
        except StaleWrite:  # another allocation of the job moved it: read it again
            continue
        except ConflictError:
            return False
    return False


def _notify(progress: ProgressFn | None, job_id: int, state: JobState, message: str) -> None:
    if progress is not None:
        progress(Progress(job_id=job_id, state=state.value, message=message))


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
                alloc = load_allocation(session, allocation_id)
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
    return any(a.id != allocation_id and AllocationState(a.state).live for a in job.allocations)


def _cooldown(
    db: Database, settings: Settings, allocation_id: int, reason: str, *, whole_zone: bool
) -> None:
    """Keep the pool (capacity) or its whole zone (a lost node) out of the next plans."""
    from broker.services.planning.inputs import add_cooldown

    with db.session() as session:
        alloc = load_allocation(session, allocation_id)
        pool = (alloc.provider, alloc.region, alloc.zone, alloc.instance_type)
    add_cooldown(
        db,
        settings,
        provider=pool[0],
        region=pool[1],
        zone=pool[2],
        instance_type=None if whole_zone else pool[3],
        reason=reason,
    )
