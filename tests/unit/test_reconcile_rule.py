"""What reconcile terminates, decided apart from doing it."""

from __future__ import annotations

from broker.domain import AllocationState, InstanceState
from broker.services.execution.reconcile_rules import KnownAllocation, Listing, Terminate, decide
from providers.base import TAG_ALLOCATION, TAG_INSTALLATION, TAG_REQUEST, InstanceRecord

MINE = "a1b2c3d4e5f60718"


def _node(
    instance: str, state: InstanceState, allocation: str | None, request: str
) -> InstanceRecord:
    tags = {TAG_REQUEST: request, TAG_INSTALLATION: MINE}
    if allocation is not None:
        tags[TAG_ALLOCATION] = allocation
    return InstanceRecord("aws", instance, "us-east-1", "us-east-1a", "g5.xlarge", state, tags=tags)


def _live(*ids: int) -> list[KnownAllocation]:
    return [KnownAllocation(i, AllocationState.ACTIVE, "aws", f"r{i}") for i in ids]


def test_instances_of_no_live_allocation_are_strays_grouped_by_request() -> None:
    listed = Listing(
        "aws",
        (
            _node("i-1", InstanceState.RUNNING, "7", "r7"),  # live allocation: kept
            _node("i-2", InstanceState.RUNNING, "8", "r8"),  # allocation 8 is unknown: stray
            _node("i-3", InstanceState.PENDING, "8", "r8"),
            _node("i-4", InstanceState.TERMINATING, "9", "r9"),  # on its way out already
            _node("i-5", InstanceState.TERMINATED, None, "r0"),
            _node("i-6", InstanceState.RUNNING, None, "r-half"),  # a launch cut short: no tag
            _node("i-7", InstanceState.PREEMPTED, "x", "r-odd"),  # unreadable tag: not ours live
        ),
    )
    assert decide(_live(7), [listed], [], MINE) == [
        Terminate("aws", "r-half", ("i-6",)),
        Terminate("aws", "r-odd", ("i-7",)),
        Terminate("aws", "r8", ("i-2", "i-3")),
    ]
    assert decide(_live(7, 8), [listed], [], MINE) == [
        Terminate("aws", "r-half", ("i-6",)),
        Terminate("aws", "r-odd", ("i-7",)),
    ]
    assert decide(_live(1), [Listing("aws", ())], [], MINE) == []
