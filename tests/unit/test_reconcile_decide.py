"""reconcile's decisions over generated states: every combination of one allocation and one
instance, and random fleets, checked against the invariants a pass must keep."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain import AllocationState, InstanceState
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
    decide,
)
from providers.base import TAG_ALLOCATION, TAG_INSTALLATION, TAG_REQUEST, InstanceRecord

MINE, OTHER = "a1b2c3d4e5f60718", "0000000000000000"
STARTED = (AllocationState.PROVISIONING, AllocationState.ACTIVE)
UP = (InstanceState.PENDING, InstanceState.RUNNING)
LEAVING = (InstanceState.TERMINATING, InstanceState.TERMINATED)
CHANGES = (Orphan, RetryTeardown, Terminate)


def _request(allocation: int) -> str:
    return f"gpubroker-{MINE}-alloc-{allocation}"


def _node(
    provider: str,
    instance: str,
    state: InstanceState,
    *,
    allocation: str | None,
    request: str,
    installation: str | None,
) -> InstanceRecord:
    tags = {TAG_REQUEST: request}
    if allocation is not None:
        tags[TAG_ALLOCATION] = allocation
    if installation is not None:
        tags[TAG_INSTALLATION] = installation
    return InstanceRecord(provider, instance, "r1", "r1-a", "gpu-x1", state, tags=tags)


def _ids(action: Action) -> tuple[str, ...]:
    return getattr(action, "instance_ids", ())


def _changed(actions: list[Action]) -> list[Action]:
    return [a for a in actions if isinstance(a, CHANGES)]


def _naming(actions: list[Action], allocation_id: int) -> list[Action]:
    return [a for a in actions if getattr(a, "allocation_id", None) == allocation_id]


# --- every combination of one allocation and one instance ------------------------------

OWNERS = ("mine", "foreign", "untagged")
CASES = list(
    itertools.product(
        (None, *AllocationState),  # None: the database does not know the allocation
        (None, *InstanceState),  # None: the provider lists no instance
        OWNERS,
        (True, False),  # the allocation's cluster (its executor) alive
        (True, False),  # the allocation has rows not marked terminated yet
        (True, False),  # the instance carries the allocation's own request id
        (True, False),  # the provider answered
    )
)


def _case(
    alloc_state: AllocationState | None,
    instance_state: InstanceState | None,
    owner: str,
    alive: bool,
    open_rows: bool,
    same_request: bool,
    answered: bool,
) -> tuple[list[KnownAllocation], list[Listing], list[Cluster]]:
    allocations = (
        []
        if alloc_state is None
        else [KnownAllocation(5, alloc_state, "aws", _request(5), open_rows=open_rows)]
    )
    instances = ()
    if instance_state is not None:
        installation = {"mine": MINE, "foreign": OTHER, "untagged": None}[owner]
        request = _request(5) if same_request else "hand-made"
        node = _node(
            "aws", "i-1", instance_state, allocation="5", request=request, installation=installation
        )
        instances = (node,)
    listings = [Listing("aws", instances)] if answered else []
    clusters = [Cluster(5, alive)] if alloc_state not in (None, AllocationState.PLANNED) else []
    return allocations, listings, clusters


def test_every_single_allocation_and_instance_state_keeps_the_invariants() -> None:
    assert len(CASES) == 7 * 8 * 3 * 2**4
    seen: Counter[str] = Counter()
    for case in CASES:
        alloc_state, instance_state, owner, alive, open_rows, same_request, answered = case
        allocations, listings, clusters = _case(*case)
        actions = decide(allocations, listings, clusters, MINE)
        seen.update(type(a).__name__ for a in actions)
        on_node = [a for a in actions if "i-1" in _ids(a)]
        live = alloc_state is not None and alloc_state.live
        started = alloc_state in STARTED
        up = instance_state in UP and owner == "mine"

        # Never an action on a foreign or untagged instance: it is only counted.
        if owner != "mine" and instance_state is not None:
            counted = answered and instance_state is not InstanceState.TERMINATED
            assert [type(a) for a in on_node] == ([Foreign] if counted else []), case
        # A node of ours on its way out is left to finish.
        if owner == "mine" and instance_state in LEAVING:
            assert on_node == [], case
        # A started allocation whose executor is gone is orphaned exactly once, whatever
        # the provider says; nothing else is ever orphaned.
        orphans = [a for a in actions if isinstance(a, Orphan)]
        assert len(orphans) == (1 if started and not alive else 0), case
        # A live allocation's nodes are never terminated by an action of their own (an
        # orphaned allocation's teardown ends them).
        if live:
            assert not any(isinstance(a, (Terminate, RetryTeardown)) for a in on_node), case
        # A provider that did not answer gets nothing but orphaning.
        if not answered:
            assert all(isinstance(a, Orphan) for a in actions), case
            continue
        # Every live allocation without a node up gets exactly one action, unless it is
        # still being launched by a running executor or waits to be launched.
        if live and not up:
            waiting = alloc_state is AllocationState.PLANNED or (
                alloc_state is AllocationState.PROVISIONING and alive
            )
            assert len(_naming(actions, 5)) == (0 if waiting else 1), case
        if live and up:
            assert all(isinstance(a, Orphan) for a in _naming(actions, 5)), case
        # A node of ours that nothing live owns is ended by exactly one action: a retried
        # teardown when it is an ended allocation's own node and no executor tears it down
        # now; else a stray's terminate (unknown allocation, or not under its request).
        ours_to_end = owner == "mine" and instance_state is not None and not live
        if ours_to_end and instance_state not in LEAVING:
            own = alloc_state is not None and same_request
            if own and alive:
                assert on_node == [], case
            else:
                assert [type(a) for a in on_node] == [RetryTeardown if own else Terminate], case
        # An ended allocation whose rows are open is retried once its executor is gone.
        if alloc_state is not None and not live and open_rows and not alive:
            assert [type(a) for a in _naming(actions, 5)] == [RetryTeardown], case
        if alloc_state is None or live or alive:
            assert not any(isinstance(a, RetryTeardown) for a in actions), case
    # Each kind of decision happens somewhere in the table.
    assert set(seen) == {"Orphan", "RetryTeardown", "Terminate", "Lost", "Foreign"}


# --- random fleets ----------------------------------------------------------------------

PROVIDERS = ("aws", "gcp")


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[KnownAllocation], list[Listing], list[Cluster]]:
    allocations: list[KnownAllocation] = []
    clusters: list[Cluster] = []
    for allocation_id in range(1, draw(st.integers(0, 6)) + 1):
        state = draw(st.sampled_from(AllocationState))
        provider = draw(st.sampled_from(PROVIDERS))
        open_rows = draw(st.booleans())
        allocations.append(
            KnownAllocation(allocation_id, state, provider, _request(allocation_id), open_rows)
        )
        if state is not AllocationState.PLANNED:
            clusters.append(Cluster(allocation_id, draw(st.booleans())))
    by_provider: dict[str, list[InstanceRecord]] = {p: [] for p in PROVIDERS}
    providers = {a.id: a.provider for a in allocations}
    for n in range(draw(st.integers(0, 12))):
        tag = draw(st.sampled_from([None, "x", *map(str, range(1, 9))]))
        # The broker launches a node on its allocation's provider, under a request named
        # after the allocation; a node of no known allocation is anywhere, under any request.
        known = tag is not None and tag.isdigit() and int(tag) in providers
        provider = providers[int(tag)] if known else draw(st.sampled_from(PROVIDERS))
        request = _request(int(tag)) if known else draw(st.sampled_from("pq"))
        node = _node(
            provider,
            f"i-{n}",
            draw(st.sampled_from(InstanceState)),
            allocation=tag,
            request=request,
            installation=draw(st.sampled_from([MINE, MINE, OTHER, None])),
        )
        by_provider[provider].append(node)
    answered = draw(st.sets(st.sampled_from(PROVIDERS)))
    listings = [Listing(p, tuple(by_provider[p])) for p in sorted(answered)]
    return allocations, listings, clusters


def _after(
    actions: list[Action],
    allocations: list[KnownAllocation],
    listings: list[Listing],
) -> tuple[list[KnownAllocation], list[Listing]]:
    """What the world looks like once ``actions`` are applied: a teardown ends its
    allocation's rows and every node under its request id; a terminate ends the nodes."""
    ended: set[tuple[str, str]] = set()
    torn: set[int] = set()
    for action in actions:
        if isinstance(action, (Orphan, RetryTeardown)):
            torn.add(action.allocation_id)
        if isinstance(action, (RetryTeardown, Terminate)):
            ended.update((action.provider, i) for i in action.instance_ids)
    requests = {(a.provider, a.request_id) for a in allocations if a.id in torn}
    after_allocations = [
        dataclasses.replace(
            a,
            state=AllocationState.ORPHANED if a.state.live else a.state,
            open_rows=False,
        )
        if a.id in torn
        else a
        for a in allocations
    ]

    def end(r: InstanceRecord) -> InstanceRecord:
        gone = (r.provider, r.instance_id) in ended or (r.provider, r.request_id) in requests
        return dataclasses.replace(r, state=InstanceState.TERMINATED) if gone else r

    after_listings = [Listing(x.provider, tuple(map(end, x.instances))) for x in listings]
    return after_allocations, after_listings


@settings(max_examples=300, deadline=None)
@given(fleets(), st.randoms(use_true_random=False))
def test_random_fleets_keep_the_invariants(
    fleet: tuple[list[KnownAllocation], list[Listing], list[Cluster]], rnd: random.Random
) -> None:
    allocations, listings, clusters = fleet
    actions = decide(allocations, listings, clusters, MINE)
    records = {(x.provider, r.instance_id): r for x in listings for r in x.instances}

    # Never a change on a foreign or untagged instance, nor on one not listed.
    for action in _changed(actions):
        for instance_id in _ids(action):
            record = records[(getattr(action, "provider", ""), instance_id)]
            assert record.installation == MINE
            assert record.state not in LEAVING
    # No instance is named twice, and no allocation gets two actions.
    named = [(getattr(a, "provider", ""), i) for a in actions for i in _ids(a)]
    assert len(named) == len(set(named))
    per_allocation = Counter(getattr(a, "allocation_id", None) for a in actions)
    assert all(n == 1 for key, n in per_allocation.items() if key is not None)
    # The foreign count is every foreign instance not terminated, of answering providers.
    foreign = {(a.provider, i) for a in actions if isinstance(a, Foreign) for i in a.instance_ids}
    assert foreign == {
        key
        for key, r in records.items()
        if r.installation != MINE and r.state is not InstanceState.TERMINATED
    }
    # A lost allocation runs on an answering provider with none of its nodes up there.
    answered = {x.provider for x in listings}
    for lost in (a for a in actions if isinstance(a, Lost)):
        assert lost.provider in answered
        assert not any(
            r.tags.get(TAG_ALLOCATION) == str(lost.allocation_id)
            and r.installation == MINE
            and r.state in UP
            for r in records.values()
        )
    # The order of the inputs does not matter.
    shuffled = [
        Listing(x.provider, tuple(rnd.sample(x.instances, len(x.instances)))) for x in listings
    ]
    assert (
        decide(
            rnd.sample(allocations, len(allocations)),
            rnd.sample(shuffled, len(shuffled)),
            rnd.sample(clusters, len(clusters)),
            MINE,
        )
        == actions
    )
    # One pass is enough: after it, a second pass changes nothing.
    after_allocations, after_listings = _after(actions, allocations, listings)
    assert _changed(decide(after_allocations, after_listings, clusters, MINE)) == []
