"""The fake cloud: capacity, quotas, convergence, determinism and every injected fault."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from broker.domain import InstanceState, Pricing
from broker.errors import (
    AuthError,
    OutOfCapacity,
    ProviderError,
    QuotaExceeded,
    Throttled,
    UserError,
)
from providers.base import META_HEAD, TAG_REQUEST, LaunchRequest, OfferRecord, Provider
from providers.fake import FakeProvider, FaultPlan, LaunchFailure, ManualClock, Preemption

ZONE = "us-east-1a"
H100 = "fake-h100x8"  # capacity 4 on-demand, 6 spot per zone in the default offers
L4 = "fake-l4x1"


def make(**kwargs: object) -> FakeProvider:
    kwargs.setdefault("clock", ManualClock())
    return FakeProvider(**kwargs)  # type: ignore[arg-type]


def req(
    request_id: str,
    nodes: int = 1,
    *,
    itype: str = H100,
    zone: str | None = ZONE,
    region: str = "us-east-1",
    pricing: Pricing = Pricing.ON_DEMAND,
    gang: bool = True,
    owner: str = "gpubroker",
) -> LaunchRequest:
    return LaunchRequest(
        request_id=request_id,
        region=region,
        zone=zone,
        instance_type=itype,
        nodes=nodes,
        pricing=pricing,
        owner=owner,
        gang=gang,
        tags={"gpubroker-job": "7"},
    )


def live(provider: FakeProvider) -> list[str]:
    return [i.instance_id for i in provider.instances() if i.state == InstanceState.RUNNING]


def test_is_a_provider_with_a_default_offer_set() -> None:
    fake = make()
    assert isinstance(fake, Provider)
    offers = list(fake.list_offers())
    assert {o.region for o in offers} == {"us-east-1", "us-west-2", "eu-west-1"}
    assert {o.pricing for o in offers} == {Pricing.ON_DEMAND, Pricing.SPOT}
    assert len({o.gpu for o in offers}) >= 3
    assert all(o.zone and o.capacity_nodes and o.price_per_hour for o in offers)
    pools = {(o.zone, o.instance_type, o.pricing) for o in offers}
    assert len(pools) == len(offers)
    spot = {(o.zone, o.instance_type): o.price_per_hour for o in offers if o.pricing == "spot"}
    for o in offers:
        if o.pricing == Pricing.ON_DEMAND:
            assert spot[(o.zone, o.instance_type)] < o.price_per_hour
    assert {o.region for o in fake.list_offers(["eu-west-1"])} == {"eu-west-1"}
    assert {o.region for o in make(regions=["us-west-2"]).list_offers()} == {"us-west-2"}


def test_same_seed_same_calls_same_results_and_seeds_differ() -> None:
    plan = FaultPlan(throttle_rate=0.3)

    def run(seed: int) -> tuple[list[str], int]:
        fake = make(seed=seed, faults=plan)
        ids = [i.instance_id for n in range(4) for i in fake.launch(req(f"r{n}", itype=L4))]
        return ids, fake.stats.throttled["launch"]

    assert run(1) == run(1)
    assert run(1)[0] != run(2)[0]


def test_capacity_per_pool_and_terminate_frees_it() -> None:
    fake = make()
    got = fake.launch(req("a", 4))
    assert len(got) == 4 and fake.free_nodes(ZONE, H100, Pricing.ON_DEMAND) == 0
    with pytest.raises(OutOfCapacity) as err:
        fake.launch(req("b", 1))
    assert err.value.zone == ZONE and ZONE in str(err.value)
    # other pools are separate: spot in the same zone, on-demand in the other zone
    assert len(fake.launch(req("c", 2, pricing=Pricing.SPOT))) == 2
    assert len(fake.launch(req("d", 1, zone="us-east-1b"))) == 1
    fake.terminate([got[0].instance_id], "t1")
    assert fake.free_nodes(ZONE, H100, Pricing.ON_DEMAND) == 1
    assert len(fake.launch(req("b", 1))) == 1


def test_gang_is_all_or_nothing_on_capacity() -> None:
    fake = make()
    fake.launch(req("a", 2))
    before = live(fake)
    with pytest.raises(OutOfCapacity) as err:
        fake.launch(req("gang", 3))
    assert err.value.zone == ZONE
    assert live(fake) == before  # the two nodes it did create were rolled back
    assert not [i for i in fake.instances() if i.request_id == "gang" and i.state == "RUNNING"]


def test_non_gang_gets_a_partial_grant_and_a_retry_converges() -> None:
    fake = make()
    fake.launch(req("a", 1))
    got = fake.launch(req("b", 5, gang=False))
    assert len(got) == 3
    assert sorted(i.node_index for i in got) == [0, 1, 2]
    again = fake.launch(req("b", 5, gang=False))
    assert [i.instance_id for i in again] == [i.instance_id for i in got]
    with pytest.raises(OutOfCapacity):
        fake.launch(req("c", 2, gang=False))  # nothing at all to grant


def test_grant_at_most_fault() -> None:
    fake = make(faults=FaultPlan(grant_at_most=2))
    assert len(fake.launch(req("a", 3, itype=L4, gang=False))) == 2
    assert len(fake.launch(req("a", 3, itype=L4, gang=False))) == 3  # next call grants more
    with pytest.raises(OutOfCapacity):
        fake.launch(req("g", 3, itype=L4))
    assert len(live(fake)) == 3


def test_quota_counts_gpus_per_region() -> None:
    fake = make(quotas={"us-east-1": 24})
    fake.launch(req("a", 2))  # 16 GPUs
    with pytest.raises(QuotaExceeded) as err:
        fake.launch(req("b", 2, zone="us-east-1b"))
    assert "us-east-1" in err.value.quota
    assert len(live(fake)) == 2
    assert len(fake.launch(req("c", 8, itype=L4, gang=False))) == 8
    quota = {q.region: q for q in fake.quotas()}
    assert quota["us-east-1"].limit == 24 and quota["us-east-1"].used == 24
    assert len(fake.launch(req("d", 1, zone="eu-west-1a", region="eu-west-1"))) == 1


def test_same_request_twice_never_doubles() -> None:
    fake = make()
    first = fake.launch(req("r", 3))
    second = fake.launch(req("r", 3))
    assert [i.instance_id for i in second] == [i.instance_id for i in first]
    assert len(live(fake)) == 3
    assert all(i.tags["gpubroker-job"] == "7" and i.request_id == "r" for i in first)
    # a node lost to preemption is replaced on retry, the others are kept
    fake.preempt([first[1].instance_id])
    third = fake.launch(req("r", 3))
    assert {i.instance_id for i in third} & {i.instance_id for i in first} == {
        first[0].instance_id,
        first[2].instance_id,
    }
    assert sorted(i.node_index for i in third) == [0, 1, 2]


def test_zone_left_open_is_chosen_and_kept_on_retry() -> None:
    fake = make()
    fake.launch(req("a", 3))  # us-east-1a keeps one H100 node
    fake.faults = FaultPlan(timeout_after_create=1)
    with pytest.raises(ProviderError) as err:
        fake.launch(req("g", 2, zone=None))
    assert err.value.retryable
    got = fake.launch(req("g", 2, zone=None))
    assert {i.zone for i in got} == {"us-east-1b"}
    assert len([i for i in fake.instances() if i.request_id == "g"]) == 2


def test_timeout_after_create_retry_converges() -> None:
    fake = make(faults=FaultPlan(timeout_after_create=2))
    for request_id in ("r", "s"):
        with pytest.raises(ProviderError) as err:
            fake.launch(req(request_id, 2))
        assert err.value.retryable and not isinstance(err.value, Throttled)
    assert len(live(fake)) == 4  # the cloud made the nodes although the calls failed
    got = fake.launch(req("r", 2))
    assert len(got) == 2 and len(fake.launch(req("s", 2))) == 2
    assert len(live(fake)) == 4


def test_throttling_is_retried_at_most_three_times() -> None:
    clock = ManualClock()
    fake = make(faults=FaultPlan(throttle_rate=0.3), clock=clock, seed=3)
    for n in range(30):
        fake.launch(req(f"r{n}", itype=L4, zone=None, region="eu-west-1"))
        fake.list_instances("gpubroker")
    stats = fake.stats
    assert stats.throttled["launch"] > 0 and stats.throttled["list_instances"] > 0
    assert stats.most_retries <= 3
    assert stats.attempts["launch"] == stats.calls["launch"] + stats.throttled["launch"]
    assert 0 < clock.slept <= sum(stats.throttled.values()) * 1.0


def test_throttling_that_never_ends_raises_throttled() -> None:
    fake = make(faults=FaultPlan(throttle_rate=0.999, max_attempts=3))
    with pytest.raises(Throttled) as err:
        fake.list_instances("gpubroker")
    assert err.value.retryable
    assert fake.stats.attempts["list_instances"] == 3
    assert fake.stats.most_retries == 2


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("capacity", OutOfCapacity),
        ("quota", QuotaExceeded),
        ("auth", AuthError),
        ("error", ProviderError),
        ("unavailable", ProviderError),
    ],
)
def test_launch_failure_kinds_on_the_kth_node(kind: str, error: type[Exception]) -> None:
    fake = make(faults=FaultPlan(launch_failures=(LaunchFailure(kind, at_node=2),)))  # type: ignore[arg-type]
    with pytest.raises(error) as err:
        fake.launch(req("g", 3))
    if kind == "capacity":
        assert err.value.zone == ZONE  # type: ignore[attr-defined]
    if isinstance(err.value, ProviderError):
        assert err.value.retryable == (kind == "unavailable")
    assert live(fake) == []  # the gang's first node was rolled back
    assert len(fake.launch(req("g", 3))) == 3  # fired once, then gone


def test_launch_failure_filters_and_repeats() -> None:
    plan = FaultPlan(launch_failures=(LaunchFailure("capacity", times=None, zone="us-east-1b"),))
    fake = make(faults=plan)
    for _ in range(2):
        with pytest.raises(OutOfCapacity):
            fake.launch(req("b", 1, zone="us-east-1b"))
    assert len(fake.launch(req("a", 1))) == 1


def test_non_gang_auth_failure_raises_and_keeps_what_it_made() -> None:
    fake = make(faults=FaultPlan(launch_failures=(LaunchFailure("auth", at_node=2),)))
    with pytest.raises(AuthError):
        fake.launch(req("r", 3, gang=False))
    assert len(live(fake)) == 1
    assert len(fake.launch(req("r", 3, gang=False))) == 3
    assert len(live(fake)) == 3


def test_listing_lag_in_calls_and_seconds() -> None:
    fake = make(faults=FaultPlan(listing_lag_calls=2))
    fake.launch(req("r", 1, itype=L4))
    assert fake.list_instances("gpubroker") == []
    assert fake.list_instances("gpubroker") == []
    assert len(fake.list_instances("gpubroker")) == 1
    assert len(fake.launch(req("r", 1, itype=L4))) == 1  # convergence sees through the lag
    assert len(live(fake)) == 1

    clock = ManualClock()
    slow = make(faults=FaultPlan(listing_lag_seconds=30), clock=clock)
    slow.launch(req("r", 1, itype=L4))
    assert slow.list_instances("gpubroker") == []
    clock.advance(30)
    assert len(slow.list_instances("gpubroker")) == 1


def test_terminate_failures_then_idempotent() -> None:
    fake = make(faults=FaultPlan(terminate_failures=2))
    ids = [i.instance_id for i in fake.launch(req("r", 2))]
    for _ in range(2):
        with pytest.raises(ProviderError) as err:
            fake.terminate(ids, "t")
        assert err.value.retryable
    assert len(live(fake)) == 2
    fake.terminate(ids, "t")
    fake.terminate(ids, "t")
    fake.terminate(["fake-unknown"], "t")
    assert live(fake) == []
    assert fake.list_instances("gpubroker") == []


def test_list_instances_by_owner() -> None:
    fake = make()
    ours = fake.launch(req("a", 2))
    fake.launch(req("b", 1, owner="someone-else"))
    assert {i.instance_id for i in fake.list_instances("gpubroker")} == {
        i.instance_id for i in ours
    }
    assert len(fake.list_instances("someone-else")) == 1


def test_preemption_at_a_time_by_pool() -> None:
    clock = ManualClock()
    at = clock.now() + timedelta(hours=1)
    plan = FaultPlan(preemptions=(Preemption(at=at, zone=ZONE, pricing=Pricing.SPOT),))
    fake = make(faults=plan, clock=clock)
    spot = fake.launch(req("s", 2, pricing=Pricing.SPOT))
    fake.launch(req("o", 1))
    clock.advance(3599)
    assert {i.state for i in fake.list_instances("gpubroker")} == {InstanceState.RUNNING}
    clock.advance(1)
    states = {i.instance_id: i.state for i in fake.list_instances("gpubroker")}
    assert [states[i.instance_id] for i in spot] == [InstanceState.PREEMPTED] * 2
    assert sorted(states.values()).count(InstanceState.RUNNING) == 1
    assert fake.free_nodes(ZONE, H100, Pricing.SPOT) == 6  # preempted nodes hold nothing
    again = fake.launch(req("s2", 1, pricing=Pricing.SPOT))  # launched after T: stays
    assert fake.list_instances("gpubroker")[-1].instance_id == again[0].instance_id
    assert again[0].state == InstanceState.RUNNING


def test_preemption_after_seconds_and_direct() -> None:
    clock = ManualClock()
    fake = make(faults=FaultPlan(preemptions=(Preemption(after_seconds=60),)), clock=clock)
    first = fake.launch(req("a", 1, itype=L4))[0]
    clock.advance(30)
    second = fake.launch(req("b", 1, itype=L4))[0]
    clock.advance(30)
    states = {i.instance_id: i.state for i in fake.instances()}
    assert states[first.instance_id] == InstanceState.PREEMPTED
    assert states[second.instance_id] == InstanceState.RUNNING
    assert fake.preempt([second.instance_id, first.instance_id]) == [second.instance_id]


def test_custom_offers_and_unknown_pool() -> None:
    offer = OfferRecord(
        provider="x",
        region="r1",
        zone="r1-a",
        instance_type="t",
        gpu="T4",
        gpus_per_node=1,
        gpu_memory_gib=16,
        vcpus=4,
        memory_gib=16,
        pricing=Pricing.ON_DEMAND,
        price_per_hour=Decimal("0.5"),
        capacity_nodes=None,
    )
    fake = make(name="sim", offers=[offer], quotas={})
    assert [o.provider for o in fake.list_offers()] == ["sim"]
    got = fake.launch(req("a", 50, itype="t", zone="r1-a", region="r1"))
    assert len(got) == 50 and got[0].instance_id.startswith("sim-")
    with pytest.raises(ProviderError, match="not offered"):
        fake.launch(req("b", 1, itype="t", zone="r1-b", region="r1"))
    with pytest.raises(UserError):
        fake.launch(req("c", 0, itype="t", zone="r1-a", region="r1"))
    with pytest.raises(ValueError, match="no zone"):
        FakeProvider(offers=[OfferRecord(**{**offer.__dict__, "zone": None})])


def test_instances_carry_request_tags() -> None:
    fake = make()
    got = fake.launch(req("r", 2))
    assert [i.tags[TAG_REQUEST] for i in got] == ["r", "r"]
    assert [i.node_index for i in got] == [0, 1]
    assert all(i.address and i.launched_at for i in got)


def test_set_metadata_lands_in_tags_shared_through_the_state_file(tmp_path: Path) -> None:
    path = tmp_path / "cloud.json"
    nodes = make(state_path=path).launch(req("meta-1", nodes=2))
    addresses = [n.private_address for n in nodes]
    assert all(a and a.startswith("10.") for a in addresses) and len(set(addresses)) == 2
    other = make(state_path=path)  # another process's view of the same cloud
    other.set_metadata([n.instance_id for n in nodes], {META_HEAD: str(addresses[0])})
    listed = make(state_path=path).list_instances("gpubroker")
    assert {r.tags[META_HEAD] for r in listed} == {addresses[0]}
    assert sorted(r.private_address for r in listed) == sorted(addresses)
    with pytest.raises(ProviderError, match="fake-nope"):
        other.set_metadata([nodes[0].instance_id, "fake-nope"], {META_HEAD: "10.9.9.9"})
    assert {r.tags[META_HEAD] for r in other.list_instances("gpubroker")} == {addresses[0]}
