"""Launch, list and terminate GCE instances: convergent, all-or-nothing, idempotent.

Identity: node ``i`` of request ``r`` is the instance ``gpb-<hash(r)>-<i>``; its instance id
is ``ZONE/NAME/ID`` with GCE's numeric id, so a node re-created under the same name is a new
instance (and terminating the old id leaves the new one alone). Each node carries the
request's tags twice: as GCE labels (lower-cased, ``[a-z0-9_-]``, at most 63 characters,
so a value that had to change gets a hash suffix to stay distinct) for the list filter,
and verbatim as the metadata item ``gpubroker-tags`` so a listing returns them exactly.
Each insert passes a ``requestId`` (see ``request_uuid``), so a retried call is the same
call to GCE; a repeated launch finds the named nodes and creates only the missing.

Each node also carries the metadata item ``gpubroker-node`` (its index), which its boot
script reads from the metadata service; ``metadata.set_metadata`` adds more later.

Operations are polled with ``ZoneOperationsClient.wait`` (the extended-operation
``result()`` ignores a custom endpoint). Multi-node gangs of families that support it get
a compact placement policy, and a request with ``ingress_cidr`` gets its firewall rules
(see ``firewalls``): one of each per request, deleted with the last node.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from broker.domain import InstanceState, Pricing
from broker.errors import BrokerError, CapacityError, ProviderError, UserError
from providers.base import (
    TAG_NODE,
    TAG_OWNER,
    TAG_REQUEST,
    InstanceRecord,
    LaunchRequest,
    request_tags,
)
from providers.gcp import families, firewalls
from providers.gcp import operations as ops
from providers.gcp.errors import PROVIDER, call
from providers.gcp.operations import request_uuid
from providers.gcp.session import Session

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


def request_stem(request_id: str) -> str:
    """``gpb-<hash>``: what the names of a request's resources start with, and the network
    tag its nodes carry when it opens ingress."""
    return f"gpb-{_digest(request_id, 16)}"


def instance_name(request_id: str, node: int) -> str:
    return f"{request_stem(request_id)}-{node}"


def policy_name(request_id: str) -> str:
    return f"{request_stem(request_id)}-compact"


def _region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def split_instance_id(instance_id: str) -> tuple[str, str, str | None]:
    """``ZONE/NAME/ID`` (or ``ZONE/NAME``) -> (zone, name, GCE numeric id or None)."""
    parts = instance_id.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UserError(f"gcp instance id {instance_id!r} is not ZONE/NAME/ID")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


class Launcher:
    def __init__(self, session: Session) -> None:
        self.session = session

    # --- listing ---------------------------------------------------------------------

    def _instances(self, labels: dict[str, str]) -> list[Any]:
        """Every instance (all zones) whose labels include ``labels``."""
        from google.cloud import compute_v1

        client = self.session.compute("InstancesClient")
        expression = " ".join(f'(labels.{key} = "{value}")' for key, value in labels.items())
        request = compute_v1.AggregatedListInstancesRequest(
            project=self.session.project, filter=expression
        )
        found: list[Any] = []
        token = ""
        while True:
            request.page_token = token
            pager = call(
                lambda: client.aggregated_list(request=request, retry=None, timeout=60.0),
                what="list instances",
                policy=self.session.policy,
            )
            page = next(iter(pager.pages))
            for scoped in page.items.values():
                found.extend(
                    instance
                    for instance in scoped.instances
                    if all(instance.labels.get(key) == value for key, value in labels.items())
                )
            token = page.next_page_token
            if not token:
                return found

    def record(self, instance: Any) -> InstanceRecord:
        zone = _last(instance.zone)
        items = {item.key: item.value for item in instance.metadata.items}
        try:
            tags = dict(json.loads(items[TAGS_METADATA_KEY]))
        except (KeyError, ValueError, TypeError):
            tags = dict(instance.labels)
        machine_type = _last(instance.machine_type)
        attached = list(instance.guest_accelerators)
        if machine_type.startswith("n1-") and attached:
            machine_type = families.n1_shape(
                machine_type, attached[0].accelerator_count, _last(attached[0].accelerator_type)
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
            region=_region_of(zone),
            zone=zone,
            instance_type=machine_type,
            state=_STATES.get(instance.status, InstanceState.PENDING),
            pricing=Pricing.SPOT if spot else Pricing.ON_DEMAND,
            address=address,
            launched_at=_parse_time(instance.creation_timestamp),
            tags=tags,
            private_address=private,
        )

    def list_instances(self, owner_tag: str) -> list[InstanceRecord]:
        records = [
            self.record(instance)
            for instance in self._instances({label_key(TAG_OWNER): label_value(owner_tag)})
        ]
        mine = [record for record in records if record.tags.get(TAG_OWNER) == owner_tag]
        return sorted(mine, key=lambda record: record.instance_id)

    def _by_request(self, request_id: str) -> dict[int, Any]:
        found: dict[int, Any] = {}
        for instance in self._instances({label_key(TAG_REQUEST): label_value(request_id)}):
            record = self.record(instance)
            if record.request_id == request_id and record.node_index is not None:
                found[record.node_index] = instance
        return found

    # --- launch ----------------------------------------------------------------------

    def _pick_zone(self, req: LaunchRequest, machine_type: str, accelerator: str | None) -> str:
        if req.zone:
            return req.zone
        region = self.session.compute("RegionsClient")
        found = call(
            lambda: region.get(
                project=self.session.project, region=req.region, retry=None, timeout=60.0
            ),
            what=f"get region {req.region}",
            policy=self.session.policy,
        )
        machine_types = self.session.compute("MachineTypesClient")
        accelerator_types = self.session.compute("AcceleratorTypesClient")
        for zone in sorted(_last(url) for url in found.zones):
            has_type = call(
                lambda z=zone: machine_types.get(
                    project=self.session.project,
                    zone=z,
                    machine_type=machine_type,
                    retry=None,
                    timeout=60.0,
                ),
                what=f"get machine type in {zone}",
                policy=self.session.policy,
                if_missing=None,
            )
            if has_type is None:
                continue
            if (
                accelerator is not None
                and call(
                    lambda z=zone: accelerator_types.get(
                        project=self.session.project,
                        zone=z,
                        accelerator_type=accelerator,
                        retry=None,
                        timeout=60.0,
                    ),
                    what=f"get accelerator type in {zone}",
                    policy=self.session.policy,
                    if_missing=None,
                )
                is None
            ):
                continue
            return zone
        raise ProviderError(PROVIDER, f"{req.instance_type} is not offered in {req.region}")

    def _ensure_placement(self, req: LaunchRequest, zone: str, nonce: str) -> str:
        from google.cloud import compute_v1

        region = _region_of(zone)
        name = policy_name(req.request_id)
        resource = compute_v1.ResourcePolicy(
            name=name,
            region=region,
            description="compact placement for one gang",
            group_placement_policy=compute_v1.ResourcePolicyGroupPlacementPolicy(
                collocation="COLLOCATED"
            ),
        )
        request = compute_v1.InsertResourcePolicyRequest(
            project=self.session.project,
            region=region,
            resource_policy_resource=resource,
            request_id=request_uuid(req.request_id, "placement", nonce),
        )
        client = self.session.compute("ResourcePoliciesClient")
        what = f"create placement policy in {region}"
        op = call(
            lambda: client.insert_unary(request=request, retry=None, timeout=60.0),
            what=what,
            policy=self.session.policy,
            if_conflict=None,
        )
        if op is not None:
            error = ops.failure(
                ops.wait(self.session, op, region=region, what=what), what=what, zone=zone
            )
            if error is not None:
                raise error
        return f"projects/{self.session.project}/regions/{region}/resourcePolicies/{name}"

    def _instance(self, req: LaunchRequest, node: int, zone: str, policy: str | None) -> Any:
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
                    accelerator_type=(
                        f"projects/{self.session.project}/zones/{zone}/acceleratorTypes/"
                        f"{accelerator}"
                    ),
                    accelerator_count=count,
                )
            ]
        if policy is not None:
            instance.resource_policies = [policy]
        if req.ingress_cidr:
            instance.tags = compute_v1.Tags(items=[request_stem(req.request_id)])
        return instance

    def _insert(
        self, req: LaunchRequest, node: int, zone: str, policy: str | None, call_id: str
    ) -> Any:
        """Start creating node ``node``; the operation, or None if it already exists."""
        from google.cloud import compute_v1

        request = compute_v1.InsertInstanceRequest(
            project=self.session.project,
            zone=zone,
            instance_resource=self._instance(req, node, zone, policy),
            request_id=request_uuid(req.request_id, node, call_id),
        )
        client = self.session.compute("InstancesClient")
        return call(
            lambda: client.insert_unary(request=request, retry=None, timeout=60.0),
            what=f"create instance in {zone}",
            policy=self.session.policy,
            zone=zone,
            if_conflict=None,
        )

    def _create(
        self, req: LaunchRequest, nodes: Iterable[int], zone: str, policy: str | None, call_id: str
    ) -> list[BrokerError]:
        started: list[tuple[int, Any]] = []
        failures: list[BrokerError] = []
        for node in nodes:
            try:
                op = self._insert(req, node, zone, policy, call_id)
            except (CapacityError, ProviderError) as exc:
                failures.append(exc)
                if req.gang:
                    break
                continue
            if op is not None:
                started.append((node, op))
        for _, op in started:
            what = f"create instance in {zone}"
            try:
                failure = ops.failure(
                    ops.wait(self.session, op, zone=zone, what=what), what=what, zone=zone
                )
            except (CapacityError, ProviderError) as exc:
                failure = exc
            if failure is not None:
                failures.append(failure)
        return failures

    def launch(self, req: LaunchRequest) -> list[InstanceRecord]:
        if req.nodes < 1:
            raise UserError(f"nodes must be >= 1, got {req.nodes}")
        machine_type, accelerator, _ = families.split_shape(req.instance_type)
        existing = self._by_request(req.request_id)
        zones = {_last(instance.zone) for instance in existing.values()}
        if len(zones) > 1:
            raise ProviderError(PROVIDER, f"request {req.request_id} has nodes in several zones")
        zone = zones.pop() if zones else self._pick_zone(req, machine_type, accelerator)
        family = families.family_of(machine_type)
        policy = None
        nonce = uuid.uuid4().hex  # one per call: see request_uuid
        if req.ingress_cidr and any(node not in existing for node in range(req.nodes)):
            firewalls.ensure(self.session, req, request_stem(req.request_id), nonce)
        for attempt in range(2):
            missing = [node for node in range(req.nodes) if node not in existing]
            if not missing:
                break
            if policy is None and req.nodes > 1 and family and family.compact_placement:
                policy = self._ensure_placement(req, zone, nonce)
            failures = self._create(req, missing, zone, policy, f"{nonce}/{attempt}")
            existing = self._by_request(req.request_id)
            if failures:
                if req.gang or not existing:
                    self._release(req, list(existing.values()))
                    raise _first(failures)
                break
        else:
            if any(node not in existing for node in range(req.nodes)):
                raise ProviderError(PROVIDER, f"request {req.request_id}: nodes did not appear")
        return [self.record(existing[node]) for node in sorted(existing)]

    # --- terminate -------------------------------------------------------------------

    def _release(self, req: LaunchRequest, instances: Sequence[Any]) -> None:
        """Roll a failed launch back: its nodes, and then (as ``terminate`` does once the
        last node is gone) its firewall rules, which no node holds when none was made."""
        ids = [self.record(instance).instance_id for instance in instances]
        if ids:
            self.terminate(ids, request_uuid("release", *ids))
        elif req.ingress_cidr:
            firewalls.delete(self.session, request_stem(req.request_id))

    def terminate(self, instance_ids: Sequence[str], request_id: str) -> None:
        """Delete the instances (ones gone already are fine), then the placement policy and
        firewall rules of their requests once no node of those requests is left."""
        from google.cloud import compute_v1

        client = self.session.compute("InstancesClient")
        project = self.session.project
        started: list[tuple[str, Any]] = []
        policies: set[str] = set()
        opened: set[str] = set()  # requests whose nodes carry their firewall rules' tag
        for instance_id in instance_ids:
            zone, name, number = split_instance_id(instance_id)
            found = call(
                lambda z=zone, n=name: client.get(
                    project=project, zone=z, instance=n, retry=None, timeout=60.0
                ),
                what=f"get instance in {zone}",
                policy=self.session.policy,
                if_missing=None,
            )
            if found is None or (number is not None and str(found.id) != number):
                continue  # gone already, or a later node now carries the name
            policies.update(url for url in found.resource_policies if _last(url).startswith("gpb-"))
            owner_request = self.record(found).request_id
            if owner_request and request_stem(owner_request) in found.tags.items:
                opened.add(owner_request)
            request = compute_v1.DeleteInstanceRequest(
                project=project,
                zone=zone,
                instance=name,
                request_id=request_uuid("delete", request_id, zone, name, found.id),
            )
            op = call(
                lambda r=request: client.delete_unary(request=r, retry=None, timeout=60.0),
                what=f"delete instance in {zone}",
                policy=self.session.policy,
                if_missing=None,
            )
            if op is not None:
                started.append((zone, op))
        for zone, op in started:
            what = f"delete instance in {zone}"
            op = ops.wait(self.session, op, zone=zone, what=what)
            codes = [error.code for error in op.error.errors] if op.error else []
            if codes and "RESOURCE_NOT_FOUND" not in codes:
                failure = ops.failure(op, what=what, zone=zone)
                if failure is not None:
                    raise failure
        for url in sorted(policies):
            self._delete_policy(url)
        for owner_request in sorted(opened):
            if not self._by_request(owner_request):
                firewalls.delete(self.session, request_stem(owner_request))

    def _delete_policy(self, url: str) -> None:
        """Best effort: a policy still used by other nodes of the gang stays until they go."""
        parts = url.rstrip("/").split("/")
        region, name = parts[parts.index("regions") + 1], parts[-1]
        client = self.session.compute("ResourcePoliciesClient")
        try:
            op = call(
                lambda: client.delete_unary(
                    project=self.session.project,
                    region=region,
                    resource_policy=name,
                    retry=None,
                    timeout=60.0,
                ),
                what=f"delete placement policy in {region}",
                policy=self.session.policy,
                if_missing=None,
            )
            if op is not None:
                ops.wait(self.session, op, region=region, what="delete placement policy")
        except ProviderError:
            return


def _first(failures: list[BrokerError]) -> BrokerError:
    for failure in failures:
        if isinstance(failure, CapacityError):
            return failure
    return failures[0]
