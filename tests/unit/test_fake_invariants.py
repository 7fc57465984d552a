"""Whatever the sequence of calls and faults, the fake cloud's books stay straight."""

from __future__ import annotations

import contextlib
from collections import Counter
from decimal import Decimal

from hypothesis import example, given, settings
from hypothesis import strategies as st

from broker.domain import InstanceState, Pricing
from broker.errors import AuthError, BrokerError, CapacityError, ProviderError
from providers.base import LaunchRequest, OfferRecord
from providers.fake import FakeProvider, FaultPlan, LaunchFailure, ManualClock

ZONES = ("r1-a", "r1-b")
GPUS = {"big": 4, "small": 1}
TYPES = tuple(GPUS)
CAPACITY = {
    (Pricing.ON_DEMAND, "big"): 1,
    (Pricing.SPOT, "big"): 1,
    (Pricing.ON_DEMAND, "small"): 2,
    (Pricing.SPOT, "small"): 2,
}
QUOTA = 6  # binds before the capacities do (two big nodes already pass it)
OFFERS = [
    OfferRecord(
        provider="fake",
        region="r1",
        zone=zone,
        instance_type=itype,
        gpu="L4",
        gpus_per_node=GPUS[itype],
        gpu_memory_gib=24,
        vcpus=8,
        memory_gib=32,
        pricing=pricing,
        price_per_hour=Decimal("1"),
        capacity_nodes=capacity,
    )
    for zone in ZONES
    for (pricing, itype), capacity in CAPACITY.items()
]

launch = st.tuples(
    st.just("launch"),
    st.integers(0, 5),  # request id (repeats are retries)
    st.sampled_from(ZONES),
    st.sampled_from(TYPES),
    st.sampled_from([Pricing.ON_DEMAND, Pricing.SPOT]),
    st.integers(1, 4),
    st.booleans(),
)
terminate = st.tuples(st.just("terminate"), st.integers(0, 30))
preempt = st.tuples(st.just("preempt"), st.integers(0, 30))
plans = st.builds(
    FaultPlan,
    throttle_rate=st.sampled_from([0.0, 0.3]),
    launch_failures=st.lists(
        st.builds(
            LaunchFailure,
            kind=st.sampled_from(["capacity", "quota", "auth", "error", "unavailable"]),
            at_node=st.integers(1, 3),
            times=st.sampled_from([1, 2]),
        ),
        max_size=2,
    ).map(tuple),
    grant_at_most=st.sampled_from([None, 2]),
    timeout_after_create=st.integers(0, 2),
)


@settings(max_examples=100, deadline=None, derandomize=True)
@example(
    plan=FaultPlan(), seed=0, calls=[("launch", 0, "r1-a", "small", Pricing.ON_DEMAND, 3, False)]
)
@example(
    plan=FaultPlan(),
    seed=0,
    calls=[("launch", n, "r1-a", "big", pricing, 1, True) for n, pricing in enumerate(Pricing)],
)
@given(
    plan=plans,
    seed=st.integers(0, 3),
    calls=st.lists(st.one_of(launch, terminate, preempt), max_size=30),
)
def test_books_stay_straight(plan: FaultPlan, seed: int, calls: list[tuple]) -> None:  # type: ignore[type-arg]
    fake = FakeProvider(
        seed=seed, faults=plan, clock=ManualClock(), offers=OFFERS, quotas={"r1": QUOTA}
    )
    shapes: dict[int, tuple] = {}  # type: ignore[type-arg]
    for call in calls:
        if call[0] == "launch":
            _, rid, zone, itype, pricing, nodes, gang = call
            zone, itype, pricing, nodes, gang = shapes.setdefault(
                rid, (zone, itype, pricing, nodes, gang)
            )  # a request id always means the same request
            req = LaunchRequest(f"r{rid}", "r1", zone, itype, nodes, pricing=pricing, gang=gang)
            try:
                got = fake.launch(req)
            except (CapacityError, AuthError, ProviderError) as err:
                got = None
                refused = not isinstance(err, ProviderError) or not err.retryable
                if req.gang and req.nodes > 1 and refused:  # a refused gang is rolled back
                    left = [i for i in fake.instances() if i.request_id == req.request_id]
                    assert all(i.state != InstanceState.RUNNING for i in left)
            if got is not None:
                assert 1 <= len(got) <= req.nodes
                assert len({r.node_index for r in got}) == len(got)
                if req.gang:
                    assert len(got) == req.nodes
        else:
            everything = fake.instances()
            if everything:
                target = everything[call[1] % len(everything)].instance_id
                if call[0] == "terminate":
                    with contextlib.suppress(BrokerError):  # injected failures
                        fake.terminate([target], "t")
                else:
                    fake.preempt([target])
        live = [i for i in fake.instances() if i.state == InstanceState.RUNNING]
        per_pool = Counter((i.zone, i.instance_type, i.pricing) for i in live)
        for (zone, itype, pricing), used in per_pool.items():
            assert used <= CAPACITY[(pricing, itype)], (zone, itype, pricing)
        gpus = sum(GPUS[i.instance_type] for i in live)
        assert gpus <= QUOTA
        per_node = Counter((i.request_id, i.node_index) for i in live)
        assert max(per_node.values(), default=1) == 1  # never two live copies of a node
        assert len({i.zone for i in live if i.request_id == "r0"}) <= 1
    assert fake.stats.most_retries <= plan.max_attempts - 1
