"""The local provider: loopback nodes in a state file shared by every process."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from broker.config import load_settings
from broker.domain import InstanceState, Pricing
from broker.errors import OutOfCapacity
from providers.base import TAG_ALLOCATION, LaunchRequest
from providers.local import LocalProvider


def _settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_settings({"GPUBROKER_HOME": str(tmp_path)})


def _request(request_id: str, nodes: int, owner: str = "gpubroker") -> LaunchRequest:
    return LaunchRequest(
        request_id=request_id,
        region="local",
        zone="local",
        instance_type="local-node",
        nodes=nodes,
        owner=owner,
        tags={TAG_ALLOCATION: "7"},
    )


def test_offer_is_this_machine_for_free(tmp_path: Path) -> None:
    (offer,) = LocalProvider(_settings(tmp_path)).list_offers()
    assert offer.price_per_hour == Decimal("0")
    assert offer.pricing is Pricing.ON_DEMAND
    assert offer.vcpus and offer.vcpus >= 1
    assert offer.capacity_nodes == 4
    assert list(LocalProvider(_settings(tmp_path)).list_offers(regions=["us-east-1"])) == []


def test_launch_is_convergent_across_provider_objects(tmp_path: Path) -> None:
    first = LocalProvider(_settings(tmp_path)).launch(_request("r1", 2))
    # A second process (a new provider object over the same state file) retries.
    again = LocalProvider(_settings(tmp_path)).launch(_request("r1", 2))
    assert [r.instance_id for r in first] == [r.instance_id for r in again]
    assert [r.address for r in first] == ["127.0.0.2", "127.0.0.3"]
    assert all(r.state is InstanceState.RUNNING for r in first)
    assert [r.node_index for r in first] == [0, 1]
    assert first[0].tags[TAG_ALLOCATION] == "7"
    assert len(LocalProvider(_settings(tmp_path)).list_instances("gpubroker")) == 2


def test_gang_is_all_or_nothing(tmp_path: Path) -> None:
    provider = LocalProvider(_settings(tmp_path), nodes=3)
    provider.launch(_request("r1", 2))
    with pytest.raises(OutOfCapacity) as info:
        provider.launch(_request("r2", 2))
    assert info.value.zone == "local"
    assert {r.request_id for r in provider.list_instances("gpubroker")} == {"r1"}


def test_terminate_frees_addresses_and_owner_filters(tmp_path: Path) -> None:
    provider = LocalProvider(_settings(tmp_path), nodes=2)
    nodes = provider.launch(_request("r1", 2))
    assert provider.list_instances("someone-else") == []
    provider.terminate([r.instance_id for r in nodes], "r1")
    provider.terminate([r.instance_id for r in nodes], "r1")  # idempotent
    assert provider.list_instances("gpubroker") == []
    assert len(provider.launch(_request("r2", 2))) == 2


def test_preempt_takes_a_node_away(tmp_path: Path) -> None:
    provider = LocalProvider(_settings(tmp_path))
    nodes = provider.launch(_request("r1", 2))
    provider.preempt(nodes[1].instance_id)
    states = {r.instance_id: r.state for r in provider.list_instances("gpubroker")}
    assert states[nodes[1].instance_id] is InstanceState.PREEMPTED
    # The retry of the same request replaces the lost node, keeping node 0.
    again = provider.launch(_request("r1", 2))
    assert again[0].instance_id == nodes[0].instance_id
    assert again[1].instance_id != nodes[1].instance_id
