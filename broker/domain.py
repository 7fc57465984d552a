"""Plain values shared by every layer: enums for states and kinds, and money helpers.

Nothing here imports the database, a provider SDK or the solver, so any layer may use it.
Money is ``decimal.Decimal`` US dollars; time is timezone-aware UTC.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
MICRO = Decimal("0.000001")


def money(value: object) -> Decimal:
    """Coerce a number or numeric string to Decimal dollars (floats go through ``str``)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def round_cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


_clock: Callable[[], datetime] | None = None


def utcnow() -> datetime:
    """Now in UTC: the wall clock, or the virtual one a simulation has set (``use_clock``)."""
    return datetime.now(UTC) if _clock is None else _clock()


@contextmanager
def use_clock(now: Callable[[], datetime]) -> Iterator[None]:
    """Make ``utcnow`` (and so every timestamp the services write) read ``now`` for the
    duration: how a simulation replays weeks on a virtual clock through the real code.
    Process-wide, so every thread of the process sees the same virtual time."""
    global _clock
    previous, _clock = _clock, now
    try:
        yield
    finally:
        _clock = previous


def as_utc(value: datetime) -> datetime:
    """Attach UTC to a naive datetime (SQLite returns naive ones) or convert an aware one."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class Pricing(enum.StrEnum):
    ON_DEMAND = "on_demand"
    SPOT = "spot"
    RESERVED = "reserved"


class Fabric(enum.StrEnum):
    """Inter-node RDMA fabric of an instance type; NONE means plain TCP networking."""

    EFA = "efa"
    INFINIBAND = "infiniband"
    TCPX = "tcpx"
    TCPXO = "tcpxo"
    ROCE = "roce"
    NONE = "none"


class JobKind(enum.StrEnum):
    TRAINING = "training"
    INFERENCE = "inference"


class JobState(enum.StrEnum):
    PENDING = "PENDING"
    PLANNED = "PLANNED"
    PROVISIONING = "PROVISIONING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class AllocationState(enum.StrEnum):
    PLANNED = "PLANNED"
    PROVISIONING = "PROVISIONING"
    ACTIVE = "ACTIVE"
    RELEASED = "RELEASED"
    FAILED = "FAILED"
    ORPHANED = "ORPHANED"

    @property
    def live(self) -> bool:
        return self in (
            AllocationState.PLANNED,
            AllocationState.PROVISIONING,
            AllocationState.ACTIVE,
        )


class EndpointState(enum.StrEnum):
    """A serving allocation's endpoint: deploying, answering, answering with fewer replicas
    than wanted (a lost node, a failing replica), or gone."""

    STARTING = "STARTING"
    READY = "READY"
    DEGRADED = "DEGRADED"
    STOPPED = "STOPPED"
    LOST = "LOST"


class InstanceState(enum.StrEnum):
    REQUESTED = "REQUESTED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    PREEMPTED = "PREEMPTED"
    FAILED = "FAILED"


# Allowed job state transitions; anything else is a bug or a stale write.
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.PLANNED, JobState.CANCELLED, JobState.FAILED}),
    JobState.PLANNED: frozenset(
        {JobState.PROVISIONING, JobState.PENDING, JobState.CANCELLED, JobState.FAILED}
    ),
    JobState.PROVISIONING: frozenset(
        {
            JobState.RUNNING,
            JobState.PREEMPTED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.PENDING,
        }
    ),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.PREEMPTED}
    ),
    JobState.PREEMPTED: frozenset({JobState.PENDING, JobState.CANCELLED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def can_transition(old: JobState, new: JobState) -> bool:
    return new in JOB_TRANSITIONS[old]
