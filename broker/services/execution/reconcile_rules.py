"""What reconcile does, decided without I/O: :func:`decide` reads what the providers list,
what the database knows and whether each executor still runs, and returns the actions.
The rules are stated in :mod:`broker.services.execution.reconcile`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from broker.domain import AllocationState, InstanceState
from providers.base import TAG_ALLOCATION, InstanceRecord

_STARTED = frozenset({AllocationState.PROVISIONING, AllocationState.ACTIVE})
_LEAVING = frozenset({InstanceState.TERMINATING, InstanceState.TERMINATED})
_UP = frozenset({InstanceState.PENDING, InstanceState.RUNNING})


# --- what decide reads -----------------------------------------------------------------


@dataclass(frozen=True)
class KnownAllocation:
    """An allocation as the database has it; ``open_rows``: some of its instance rows are
    not marked terminated or failed yet (a teardown that did not finish)."""

    id: int
    state: AllocationState
    provider: str
    request_id: str
    open_rows: bool = False


@dataclass(frozen=True)
class Listing:
    """What one provider answered when asked for the instances under our owner tag."""

    provider: str
    instances: tuple[InstanceRecord, ...]


@dataclass(frozen=True)
class Cluster:
    """Whether the executor that runs an allocation's cluster still holds its lease."""

    allocation_id: int
    alive: bool


# --- what decide returns ---------------------------------------------------------------


@dataclass(frozen=True)
class Orphan:
    allocation_id: int
    provider: str


@dataclass(frozen=True)
class RetryTeardown:
    allocation_id: int
    provider: str
    request_id: str
    instance_ids: tuple[str, ...]  # listed and not on their way out: terminated first


@dataclass(frozen=True)
class Terminate:
    provider: str
    request_id: str
    instance_ids: tuple[str, ...]


@dataclass(frozen=True)
class Lost:
    allocation_id: int
    provider: str


@dataclass(frozen=True)
class Foreign:
    provider: str
    instance_ids: tuple[str, ...]


Action = Orphan | RetryTeardown | Terminate | Lost | Foreign  # the last two are only reported


def decide(
    allocations: Iterable[KnownAllocation],
    listings: Iterable[Listing],
    clusters: Iterable[Cluster],
    installation: str,
) -> list[Action]:
    """What one pass does, from what it read; the same inputs in any order give the same
    actions. An allocation without a :class:`Cluster` is neither orphaned nor retried."""
    known = {a.id: a for a in allocations}
    alive = {c.allocation_id for c in clusters if c.alive}
    dead = {c.allocation_id for c in clusters if not c.alive} - alive
    actions: list[Action] = [
        Orphan(a.id, a.provider)
        for a in sorted(known.values(), key=lambda a: a.id)
        if a.state in _STARTED and a.id in dead
    ]
    for listing in sorted(listings, key=lambda listing: listing.provider):
        actions.extend(_decide_listing(listing, known, alive, dead, installation))
    return actions


def _decide_listing(
    listing: Listing,
    known: dict[int, KnownAllocation],
    alive: set[int],
    dead: set[int],
    installation: str,
) -> list[Action]:
    name = listing.provider
    foreign: list[str] = []
    up: set[int] = set()  # allocations with a node pending or running here
    retries: dict[int, list[str]] = {}
    strays: dict[str, list[str]] = {}
    for record in listing.instances:
        if record.installation != installation:
            if record.state is not InstanceState.TERMINATED:
                foreign.append(record.instance_id)
            continue
        tag = allocation_tag(record)
        owner = known.get(tag) if tag is not None else None
        if owner is not None and record.state in _UP:
            up.add(owner.id)
        if record.state in _LEAVING or (owner is not None and owner.state.live):
            continue  # its own allocation's, or an orphaned one's (its teardown ends it)
        if owner is not None and record.request_id == owner.request_id:
            if owner.id in dead:
                retries.setdefault(owner.id, []).append(record.instance_id)
            continue  # otherwise its executor is tearing it down now
        strays.setdefault(record.request_id or "", []).append(record.instance_id)
    for a in known.values():
        if a.provider == name and a.open_rows and not a.state.live and a.id in dead:
            retries.setdefault(a.id, [])
    actions: list[Action] = [
        RetryTeardown(a, name, known[a].request_id, tuple(sorted(ids)))
        for a, ids in sorted(retries.items())
    ]
    actions.extend(Terminate(name, r, tuple(sorted(ids))) for r, ids in sorted(strays.items()))
    actions.extend(
        Lost(a.id, name)
        for a in sorted(known.values(), key=lambda a: a.id)
        if a.provider == name
        and a.state is AllocationState.ACTIVE
        and a.id in alive
        and a.id not in up
    )
    if foreign:
        actions.append(Foreign(name, tuple(sorted(foreign))))
    return actions


def allocation_tag(record: InstanceRecord) -> int | None:
    owner = record.tags.get(TAG_ALLOCATION, "")
    return int(owner) if owner.isdigit() else None
