"""The GCE launch builders alone, with no server: the instance resource a launch sends and
the record a listing of that instance gives back."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from broker.domain import InstanceState, Pricing
from providers.base import TAG_NODE, TAG_REQUEST, LaunchRequest, request_tags
from providers.gcp import launch as ln
from providers.gcp.families import n1_shape


def _request(**changes: Any) -> LaunchRequest:
    base = LaunchRequest(
        request_id="Alloc:7/Try.1",
        region="us-central1",
        zone="us-central1-a",
        instance_type=n1_shape("n1-standard-16", 2, "nvidia-tesla-t4"),
        nodes=2,
        owner="Team A",
        installation="inst-1",
        tags={"gpubroker-job": "7"},
    )
    return replace(base, **changes)


def _listed(resource: Any, number: int, status: str) -> Any:
    """What a listing returns for the instance made from ``resource``."""
    from google.cloud import compute_v1

    instance = compute_v1.Instance.deserialize(compute_v1.Instance.serialize(resource))
    instance.id = number
    instance.status = status
    instance.zone = "https://compute.googleapis.com/compute/v1/projects/p/zones/us-central1-a"
    instance.creation_timestamp = "2026-01-02T03:04:05.000-08:00"
    instance.network_interfaces[0].network_i_p = "10.0.0.5"
    instance.network_interfaces[0].access_configs[0].nat_i_p = "34.1.2.3"
    return instance


def test_a_spot_node_with_ingress_round_trips_to_its_record() -> None:
    req = _request(pricing=Pricing.SPOT, ingress_cidr="203.0.113.0/24", ports=(8265,))
    policy = ln.policy_url("p", "us-central1", req.request_id)
    resource = ln.instance_resource(req, 1, "us-central1-a", "p", policy)

    assert resource.name == ln.instance_name(req.request_id, 1)
    assert resource.machine_type == "zones/us-central1-a/machineTypes/n1-standard-16"
    accelerator = resource.guest_accelerators[0]
    assert accelerator.accelerator_count == 2
    assert accelerator.accelerator_type.endswith(
        "/zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4"
    )
    assert resource.scheduling.provisioning_model == "SPOT"
    assert resource.scheduling.instance_termination_action == "DELETE"
    assert not resource.scheduling.automatic_restart
    assert list(resource.resource_policies) == [policy]
    assert list(resource.tags.items) == [ln.request_stem(req.request_id)]
    items = {item.key: item.value for item in resource.metadata.items}
    assert items[TAG_NODE] == "1" and ln.STARTUP_METADATA_KEY not in items
    tags = request_tags(req, 1)
    assert dict(resource.labels) == ln.labels_for(tags)
    assert all(ln.label_value(v) == v for v in resource.labels.values())

    record = ln.instance_record(_listed(resource, 4242, "RUNNING"))
    assert record.instance_id == f"us-central1-a/{resource.name}/4242"
    assert (record.region, record.zone) == ("us-central1", "us-central1-a")
    assert record.instance_type == req.instance_type  # the N1 host with its GPUs
    assert (record.state, record.pricing) == (InstanceState.RUNNING, Pricing.SPOT)
    assert (record.address, record.private_address) == ("34.1.2.3", "10.0.0.5")
    assert dict(record.tags) == tags  # verbatim, though the labels had to change
    assert (record.request_id, record.node_index) == (req.request_id, 1)
    assert ln.split_instance_id(record.instance_id) == ("us-central1-a", resource.name, "4242")


def test_an_on_demand_node_without_extras_and_a_damaged_tag_item() -> None:
    req = _request(instance_type="a3-highgpu-8g", user_data="#!/bin/sh\ntrue\n", image="img")
    resource = ln.instance_resource(req, 0, "us-central1-a", "p", None)
    assert not resource.guest_accelerators and not resource.resource_policies
    assert not resource.tags.items
    assert resource.scheduling.provisioning_model == "STANDARD"
    assert resource.scheduling.automatic_restart
    assert resource.disks[0].initialize_params.source_image == "img"
    items = {item.key: item.value for item in resource.metadata.items}
    assert items[ln.STARTUP_METADATA_KEY] == req.user_data

    listed = _listed(resource, 1, "STOPPING")
    for item in listed.metadata.items:
        if item.key == ln.TAGS_METADATA_KEY:
            item.value = "{not json"
    record = ln.instance_record(listed)
    assert record.state is InstanceState.TERMINATING
    assert dict(record.tags) == dict(resource.labels)  # the labels stand in
    assert record.tags[ln.label_key(TAG_REQUEST)] == ln.label_value(req.request_id)
