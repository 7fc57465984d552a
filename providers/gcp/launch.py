"""The pieces of a GCE launch: names, labels, the instance and placement-policy resources,
records. Pure builders; ``provider.GcpProvider`` strings them together with the calls.

Identity: node ``i`` of request ``r`` is the instance ``gpb-<hash(r)>-<i>``; its instance id
is ``ZONE/NAME/ID`` with GCE's numeric id, so a node re-created under the same name is a new
instance (and terminating the old id leaves the new one alone). Each node carries the
request's tags twice: as GCE labels (lower-cased, ``[a-z0-9_-]``, at most 63 characters,
so a value that had to change gets a hash suffix to stay distinct) for the list filter,
and verbatim as the metadata item ``gpubroker-tags`` so a listing returns them exactly.
Each node also carries the metadata item ``gpubroker-node`` (its index), which its boot
script reads from the metadata service.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any

from broker.domain import InstanceState, Pricing
from broker.errors import UserError
from providers.base import TAG_NODE, InstanceRecord, LaunchRequest, request_tags
from providers.gcp import families
from providers.gcp.errors import PROVIDER
from providers.gcp.session import last_segment

TAGS_METADATA_KEY = "gpubroker-tags"
STARTUP_METADATA_KEY = "startup-script"
DEFAULT_IMAGE = "projects/debian-cloud/global/images/family/debian-12"
BOOT_DISK_GB = 200
_LABEL_OK = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_VALUE_OK = re.compile(r"^[a-z0-9_-]{0,63}$")

_STATES = {
    "PROVISIONING": InstanceState.PENDING,
    "STAGING": InstanceState.PENDING,
    "REPAIRING": InstanceState.PENDING,
    "RUNNING": InstanceState.RUNNING,
    "STOPPING": InstanceState.TERMINATING,
    "SUSPENDING": InstanceState.TERMINATING,
    "STOPPED": InstanceState.TERMINATED,
    "SUSPENDED": InstanceState.TERMINATED,
    "TERMINATED": InstanceState.TERMINATED,
}


def _digest(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def label_value(value: str) -> str:
    """A GCE label value for ``value``: kept when valid, else cleaned plus a hash suffix."""
    if _VALUE_OK.match(value):
        return value
    cleaned = re.sub(r"[^a-z0-9_-]", "_", value.lower())[:52]
    return f"{cleaned}-{_digest(value, 10)}"


def label_key(key: str) -> str:
    if _LABEL_OK.match(key):
        return key
    cleaned = re.sub(r"[^a-z0-9_-]", "_", key.lower())
    if not cleaned[:1].isalpha():
        cleaned = "k" + cleaned
    return f"{cleaned[:52]}-{_digest(key, 10)}"


def labels_for(tags: dict[str, str]) -> dict[str, str]:
    return {label_key(key): label_value(value) for key, value in tags.items()}


def label_filter(labels: dict[str, str]) -> str:
    """A list filter matching instances whose labels include ``labels``."""
    return " ".join(f'(labels.{key} = "{value}")' for key, value in labels.items())


def request_stem(request_id: str) -> str:
    """``gpb-<hash>``: what the names of a request's resources start with, and the network
    tag its nodes carry when it opens ingress."""
    return f"gpb-{_digest(request_id, 16)}"


def instance_name(request_id: str, node: int) -> str:
    return f"{request_stem(request_id)}-{node}"


def policy_name(request_id: str) -> str:
    return f"{request_stem(request_id)}-compact"


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def split_instance_id(instance_id: str) -> tuple[str, str, str | None]:
    """``ZONE/NAME/ID`` (or ``ZONE/NAME``) -> (zone, name, GCE numeric id or None)."""
    parts = instance_id.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UserError(f"gcp instance id {instance_id!r} is not ZONE/NAME/ID")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def policy_location(url: str) -> tuple[str, str]:
    """(region, name) of a resource policy URL ``.../regions/R/resourcePolicies/NAME``."""
    parts = url.rstrip("/").split("/")
    return parts[parts.index("regions") + 1], parts[-1]


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def instance_record(instance: Any) -> InstanceRecord:
    """Our record of a ``compute_v1.Instance``; tags from its ``gpubroker-tags`` metadata
    (its labels when that is missing or damaged)."""
    zone = last_segment(instance.zone)
    items = {item.key: item.value for item in instance.metadata.items}
    try:
        tags = dict(json.loads(items[TAGS_METADATA_KEY]))
    except (KeyError, ValueError, TypeError):
        tags = dict(instance.labels)
    machine_type = last_segment(instance.machine_type)
    attached = list(instance.guest_accelerators)
    if machine_type.startswith("n1-") and attached:
        machine_type = families.n1_shape(
            machine_type, attached[0].accelerator_count, last_segment(attached[0].accelerator_type)
        )
    address = private = None
    for interface in instance.network_interfaces:
        private = interface.network_i_p or None
        nat = [config.nat_i_p for config in interface.access_configs if config.nat_i_p]
        address = nat[0] if nat else private
        break
    spot = instance.scheduling.provisioning_model == "SPOT"
    return InstanceRecord(
        provider=PROVIDER,
        instance_id=f"{zone}/{instance.name}/{instance.id}",
        region=region_of(zone),
        zone=zone,
        instance_type=machine_type,
        state=_STATES.get(instance.status, InstanceState.PENDING),
        pricing=Pricing.SPOT if spot else Pricing.ON_DEMAND,
        address=address,
        launched_at=_parse_time(instance.creation_timestamp),
        tags=tags,
        private_address=private,
    )


def placement_policy(request_id: str, region: str) -> Any:
    """The compact-placement ``compute_v1.ResourcePolicy`` of one gang."""
    from google.cloud import compute_v1

    return compute_v1.ResourcePolicy(
        name=policy_name(request_id),
        region=region,
        description="compact placement for one gang",
        group_placement_policy=compute_v1.ResourcePolicyGroupPlacementPolicy(
            collocation="COLLOCATED"
        ),
    )


def policy_url(project: str, region: str, request_id: str) -> str:
    return f"projects/{project}/regions/{region}/resourcePolicies/{policy_name(request_id)}"


def instance_resource(
    req: LaunchRequest, node: int, zone: str, project: str, policy: str | None
) -> Any:
    """The ``compute_v1.Instance`` of node ``node``: named, labelled and tagged as the
    module docstring says, on the family's boot disk type, Spot when ``req`` asks."""
    from google.cloud import compute_v1

    machine_type, accelerator, count = families.split_shape(req.instance_type)
    family = families.family_of(machine_type)
    tags = request_tags(req, node)
    items = [
        compute_v1.Items(key=TAGS_METADATA_KEY, value=json.dumps(tags, sort_keys=True)),
        compute_v1.Items(key=TAG_NODE, value=str(node)),
    ]
    if req.user_data:
        items.append(compute_v1.Items(key=STARTUP_METADATA_KEY, value=req.user_data))
    spot = req.pricing is Pricing.SPOT
    scheduling = compute_v1.Scheduling(
        on_host_maintenance="TERMINATE",
        automatic_restart=not spot,
        provisioning_model="SPOT" if spot else "STANDARD",
    )
    if spot:
        scheduling.instance_termination_action = "DELETE"
    disk_type = family.boot_disk_type if family else "pd-balanced"
    instance = compute_v1.Instance(
        name=instance_name(req.request_id, node),
        machine_type=f"zones/{zone}/machineTypes/{machine_type}",
        labels=labels_for(tags),
        metadata=compute_v1.Metadata(items=items),
        scheduling=scheduling,
        disks=[
            compute_v1.AttachedDisk(
                boot=True,
                auto_delete=True,
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    source_image=req.image or DEFAULT_IMAGE,
                    disk_size_gb=BOOT_DISK_GB,
                    disk_type=f"zones/{zone}/diskTypes/{disk_type}",
                ),
            )
        ],
        network_interfaces=[
            compute_v1.NetworkInterface(
                network="global/networks/default",
                access_configs=[
                    compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")
                ],
            )
        ],
    )
    if accelerator is not None:
        instance.guest_accelerators = [
            compute_v1.AcceleratorConfig(
                accelerator_type=f"projects/{project}/zones/{zone}/acceleratorTypes/{accelerator}",
                accelerator_count=count,
            )
        ]
    if policy is not None:
        instance.resource_policies = [policy]
    if req.ingress_cidr:
        instance.tags = compute_v1.Tags(items=[request_stem(req.request_id)])
    return instance
