"""DESIGN §4's promises, checked the same way against every provider (see conftest.py)."""

from __future__ import annotations

import pytest

from broker.errors import BrokerError, OutOfCapacity, ProviderError
from providers.base import (
    META_HEAD,
    TAG_NODE,
    TAG_OWNER,
    TAG_REQUEST,
    Capability,
    Launcher,
    OfferSource,
    ProviderCheck,
)
from tests.conformance.harness import CANARIES, FAILURE_TYPES, Target


def _ids(records: list) -> list[str]:  # type: ignore[type-arg]
    return sorted(r.instance_id for r in records)


def _assert_ours(err: BaseException) -> None:
    """Our own type, and no credential anywhere in what it says."""
    assert isinstance(err, BrokerError), f"{type(err).__module__}.{type(err).__name__}"
    assert type(err).__module__ == "broker.errors"
    text = f"{err} {err!r} {err.args!r}"
    for name, value in CANARIES.items():
        assert value not in text, f"{name} leaked into {type(err).__name__}"


def test_lists_offers_launches_and_checks_itself(target: Target) -> None:
    provider = target.provider
    assert isinstance(provider, OfferSource) and isinstance(provider, Launcher)
    assert {Capability.LIST_OFFERS, Capability.LAUNCH} <= provider.capabilities
    offers = list(provider.list_offers([target.region]))
    assert offers and {o.provider for o in offers} == {provider.name}
    assert target.instance_type in {o.instance_type for o in offers}
    for probe in (False, True):
        found = provider.check(probe)
        assert isinstance(found, ProviderCheck)
        assert (found.provider, found.usable) == (provider.name, True), found
        assert found.credentials and found.endpoint and found.detail
        text = repr(found.to_dict())
        for name, value in CANARIES.items():
            assert value not in text, f"{name} shown by check"


def test_same_request_twice_never_doubles(target: Target) -> None:
    req = target.request(2)
    first = target.provider.launch(req)
    second = target.provider.launch(req)
    assert len(first) == 2
    assert _ids(second) == _ids(first)
    listed = target.live()
    assert _ids(listed) == _ids(first)
    assert {r.tags[TAG_REQUEST] for r in listed} == {req.request_id}
    assert sorted(r.node_index for r in listed) == [0, 1]
    assert all(r.tags.get("gpubroker-job") == "1" for r in listed)


def test_launch_converges_after_nodes_were_lost(target: Target) -> None:
    req = target.request(2)
    first = target.provider.launch(req)
    keep = [r for r in first if r.node_index == 0]
    gone = [r for r in first if r.node_index == 1]
    target.provider.terminate([r.instance_id for r in gone], "conformance-lose-one")
    again = target.provider.launch(req)
    assert len(again) == 2 and sorted(r.node_index for r in again) == [0, 1]
    assert keep[0].instance_id in _ids(again) and gone[0].instance_id not in _ids(again)
    assert len(target.live()) == 2


def test_retry_after_a_lost_reply_converges(target: Target) -> None:
    if target.lost_reply is None:
        pytest.skip(f"{target.name} launches have no reply to lose")
    req = target.request(2)
    with target.lost_reply(), pytest.raises(ProviderError) as err:
        target.provider.launch(req)
    _assert_ours(err.value)
    assert err.value.retryable
    got = target.provider.launch(req)
    assert sorted(r.node_index for r in got) == [0, 1]
    assert _ids(target.live()) == _ids(got)  # what the lost call made was adopted, not doubled


@pytest.mark.parametrize("k", [2, 3])
def test_gang_is_all_or_nothing(target: Target, k: int) -> None:
    req = target.request(3)
    with target.capacity_fault(k), pytest.raises(OutOfCapacity) as err:
        target.provider.launch(req)
    _assert_ours(err.value)
    assert err.value.zone == target.zone and target.zone in str(err.value)
    assert [r for r in target.live() if r.request_id == req.request_id] == []


def test_gang_request_succeeds_whole_once_capacity_is_back(target: Target) -> None:
    """A failed gang leaves nothing tagged, so retrying the same request creates it all
    (the cloud's idempotency key must not replay the failed attempt)."""
    req = target.request(3)
    with target.capacity_fault(2), pytest.raises(OutOfCapacity):
        target.provider.launch(req)
    got = target.provider.launch(req)
    assert sorted(r.node_index for r in got) == [0, 1, 2]
    assert _ids(target.live()) == _ids(got)


def test_nodes_have_private_addresses_and_read_the_metadata_set(target: Target) -> None:
    req = target.request(2)
    got = target.provider.launch(req)
    private = {r.instance_id: r.private_address for r in got}
    assert all(private.values()) and len(set(private.values())) == 2
    head = {META_HEAD: str(got[0].private_address)}
    for _ in range(2):  # the second time changes nothing
        target.provider.set_metadata(list(private), head)
    listed = target.live()
    assert {r.instance_id: r.private_address for r in listed} == private
    for record in listed:
        seen = target.node_metadata(record)
        assert seen[META_HEAD] == head[META_HEAD] and seen[TAG_NODE] == str(record.node_index)
        assert record.request_id == req.request_id  # what the listing relies on survived


def test_ingress_is_open_to_the_cidr_until_the_last_node_goes(target: Target) -> None:
    if target.ingress is None:
        pytest.skip(f"{target.name} makes no ingress resources")
    req = target.request(2, ingress_cidr="203.0.113.0/24", ports=(6390, 8265))
    opened = ["all from gang", "tcp:6390 from 203.0.113.0/24", "tcp:8265 from 203.0.113.0/24"]
    got = target.provider.launch(req)
    assert target.ingress(req.request_id) == opened
    target.provider.launch(req)
    assert target.ingress(req.request_id) == opened  # a repeated launch doubles nothing
    target.provider.terminate([got[0].instance_id], req.request_id)
    assert target.ingress(req.request_id) == opened  # node 1 still runs behind them
    target.provider.terminate([got[1].instance_id], req.request_id)
    assert target.ingress(req.request_id) == []


def test_terminate_is_idempotent(target: Target) -> None:
    got = target.provider.launch(target.request(2))
    ids = [r.instance_id for r in got]
    target.provider.terminate(ids, "conformance-term")
    target.provider.terminate(ids, "conformance-term")
    target.provider.terminate(ids[:1], "conformance-term-again")
    assert target.live() == []


def test_list_by_owner_sees_exactly_ours(target: Target) -> None:
    ours = target.provider.launch(target.request(2))
    theirs = target.provider.launch(target.request(1, owner=f"{target.owner}-other"))
    foreign = target.foreign() if target.foreign is not None else None
    listed = target.live()
    assert _ids(listed) == _ids(ours)
    assert all(r.tags[TAG_OWNER] == target.owner for r in listed)
    assert theirs[0].instance_id not in _ids(listed) and foreign not in _ids(listed)
    assert _ids(target.live(f"{target.owner}-other")) == _ids(theirs)


def test_every_failure_is_our_typed_error(target: Target) -> None:
    assert set(target.failures) == set(FAILURE_TYPES), "each target injects every kind"
    for kind, inject in sorted(target.failures.items()):
        req = target.request(1)
        with inject(), pytest.raises(BrokerError) as err:
            target.provider.launch(req)
        _assert_ours(err.value)
        assert isinstance(err.value, FAILURE_TYPES[kind]), (kind, type(err.value))
        if kind in ("throttle", "server"):
            assert isinstance(err.value, ProviderError) and err.value.retryable, kind
        if kind == "auth":
            assert isinstance(err.value, ProviderError) and not err.value.retryable
    assert target.live() == []


def test_no_credential_in_any_error_text(target: Target) -> None:
    errors: list[BaseException] = []
    for kind in sorted(target.failures):
        with target.failures[kind]():
            for call in (
                lambda: target.provider.launch(target.request(2)),
                lambda: target.provider.list_instances(target.owner),
                lambda: list(target.provider.list_offers([target.region])),
            ):
                try:
                    call()
                except Exception as exc:
                    errors.append(exc)
    with target.capacity_fault(1):
        try:
            target.provider.launch(target.request(1))
        except Exception as exc:
            errors.append(exc)
    assert len(errors) >= len(target.failures)
    for err in errors:
        _assert_ours(err)
