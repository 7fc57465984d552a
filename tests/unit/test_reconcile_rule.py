"""What reconcile terminates, decided apart from doing it."""

from __future__ import annotations

from broker.domain import InstanceState
from broker.services.reconcile import strays
from providers.base import TAG_ALLOCATION, TAG_REQUEST, InstanceRecord


def _node(
    instance: str, state: InstanceState, allocation: str | None, request: str
) -> InstanceRecord:
    tags = {TAG_REQUEST: request}
    if allocation is not None:
        tags[TAG_ALLOCATION] = allocation
    return InstanceRecord("aws", instance, "us-east-1", "us-east-1a", "g5.xlarge", state, tags=tags)


def test_instances_of_no_live_allocation_are_strays_grouped_by_request() -> None:
    listed = [
        _node("i-1", InstanceState.RUNNING, "7", "r7"),  # live allocation: kept
        _node("i-2", InstanceState.RUNNING, "8", "r8"),  # allocation 8 is over: stray
        _node("i-3", InstanceState.PENDING, "8", "r8"),
        _node("i-4", InstanceState.TERMINATING, "9", "r9"),  # on its way out already
        _node("i-5", InstanceState.TERMINATED, None, "r0"),
        _node("i-6", InstanceState.RUNNING, None, "r-half"),  # a launch cut short: no tag
        _node("i-7", InstanceState.PREEMPTED, "x", "r-odd"),  # unreadable tag: not ours live
    ]
    assert strays(listed, {7}) == {"r8": ["i-2", "i-3"], "r-half": ["i-6"], "r-odd": ["i-7"]}
    assert strays(listed, {7, 8}) == {"r-half": ["i-6"], "r-odd": ["i-7"]}
    assert strays([], {1}) == {}
