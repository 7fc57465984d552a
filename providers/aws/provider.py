"""``AwsProvider``: EC2 offers, quotas and instances through boto3 (DESIGN §4).

Launch promises, as every adapter keeps them:
- convergent: the nodes of a request are found by its tags first and only the missing
  node indices are created, one ``run_instances`` each with a ``ClientToken`` derived from
  the request id and node index (so a retry whose listing lags still gets the same node);
- a gang (``nodes > 1``) is all-or-nothing: short of a node, every node of the request is
  terminated and ``OutOfCapacity`` names the zone;
- multi-node gangs on EFA types get a cluster placement group and EFA interfaces; when the
  endpoint cannot make the group, the gang launches without it (and says so in the log);
- a request with ``ingress_cidr`` runs in a security group of its own (see ``network``),
  deleted by ``terminate`` once no node of the request holds it;
- ``set_metadata`` writes instance tags, which nodes read from the metadata service;
- errors leave as ``broker.errors`` types built from AWS error codes, never SDK text.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.config import Settings
from broker.domain import Pricing, utcnow
from broker.errors import BrokerError, OutOfCapacity, ProviderError, UserError
from providers.aws import launch as ln
from providers.aws import network as net
from providers.aws import offers as of
from providers.aws.check import check_credentials
from providers.aws.clients import Clients
from providers.aws.errors import NOT_FOUND_CODES, aws_call, error_code
from providers.aws.instance_types import GpuShape
from providers.aws.pricing import DEFAULT_TTL, on_demand_prices
from providers.aws.quotas import QUOTA_CODES, SERVICE_CODE, quota_code, quota_family, quota_record
from providers.base import (
    TAG_OWNER,
    TAG_REQUEST,
    Capability,
    InstanceRecord,
    LaunchRequest,
    OfferRecord,
    ProviderCheck,
    QuotaRecord,
)

log = logging.getLogger(__name__)

PROVIDER = "aws"
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_ID_CHUNK = 100
_RELAUNCH_TRIES = 3
SHAPES_TTL = timedelta(hours=6)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SHAPES: dict[tuple[str, str], tuple[float, dict[str, GpuShape]]] = {}


class AwsProvider:
    name = PROVIDER
    capabilities = frozenset(
        {
            Capability.LIST_OFFERS,
            Capability.QUOTAS,
            Capability.LAUNCH,
            Capability.SPOT,
            Capability.PLACEMENT_GROUPS,
        }
    )

    def __init__(
        self, settings: Settings, *, session: Any | None = None, price_ttl: timedelta = DEFAULT_TTL
    ) -> None:
        self.settings = settings
        self.price_ttl = price_ttl
        self.clients = Clients(settings.aws_max_attempts, session)
        # What could not be read or done, in words, for the caller to show (never secrets).
        self.notes: list[str] = []
        self._regions_cache: list[str] | None = None
        self._where: dict[str, str] = {}  # instance id -> region
        self._no_placement_groups: set[str] = set()
        # Seconds between tries to delete a request's security group that its shutting-down
        # nodes still hold (EC2 answers DependencyViolation until they are gone).
        self.group_delete_waits: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)

    # --- plumbing ----------------------------------------------------------------------

    def client(self, service: str, region: str) -> Any:
        """The boto3 client this provider uses for ``service`` in ``region``."""
        return self.clients.client(service, region)

    def register_event(self, event: str, handler: Callable[..., Any]) -> None:
        """Hook ``handler`` on a botocore event of every client (tests inject faults here)."""
        self.clients.register(event, handler)

    def unregister_event(self, event: str, handler: Callable[..., Any]) -> None:
        self.clients.unregister(event, handler)

    def _note(self, text: str) -> None:
        log.warning("aws: %s", text)
        self.notes.append(text)

    def regions(self, regions: Sequence[str] | None = None) -> list[str]:
        """The regions asked for, else the configured ones, else every enabled region."""
        if regions:
            chosen = list(dict.fromkeys(regions))
        elif self.settings.aws_regions:
            chosen = list(self.settings.aws_regions)
        else:
            if self._regions_cache is None:
                home = self.clients.default_region
                with aws_call("DescribeRegions", home):
                    answer = self.client("ec2", home).describe_regions()
                self._regions_cache = sorted(r["RegionName"] for r in answer.get("Regions", []))
            chosen = list(self._regions_cache)
        for region in chosen:
            if not _REGION.match(region):
                raise UserError(f"aws region {region!r} is not a region name like us-east-1")
        return chosen

    def check(self, probe: bool = False) -> ProviderCheck:
        """Credential source and endpoint, for ``gpubroker check`` (no secret in it)."""
        return check_credentials(self.clients, probe=probe)

    # --- offers ------------------------------------------------------------------------

    def gpu_shapes(self, region: str) -> dict[str, GpuShape]:
        """The region's GPU instance types. EC2 adds types a few times a year, so they are
        kept for the process (per endpoint and region) for ``SHAPES_TTL``."""
        ec2 = self.client("ec2", region)
        key = (str(ec2.meta.endpoint_url), region)
        cached = _SHAPES.get(key)
        if cached is not None and time.monotonic() - cached[0] < SHAPES_TTL.total_seconds():
            return cached[1]
        shapes = of.gpu_shapes(ec2, region)
        _SHAPES[key] = (time.monotonic(), shapes)
        return shapes

    def list_offers(self, regions: Sequence[str] | None = None) -> Iterator[OfferRecord]:
        for region in self.regions(regions):
            # A region's offers are all gathered before any is given out, so a failure
            # leaves the caller with none of that region rather than half of it.
            yield from self._region_offers(region)

    def _region_offers(self, region: str) -> list[OfferRecord]:
        ec2 = self.client("ec2", region)
        shapes = self.gpu_shapes(region)
        if not shapes:
            return []
        zones = of.zones_offering(ec2, region, list(shapes))
        table = on_demand_prices(
            self.settings.aws_price_list_url,
            region,
            self.settings.cache_dir,
            ttl=self.price_ttl,
        )
        now = utcnow()
        spot_types = [t for t, shape in shapes.items() if shape.spot and zones.get(t)]
        spot = of.spot_prices(ec2, region, spot_types, now) if spot_types else {}
        return of.build_offers(region, shapes, zones, table.prices, table.fetched_at, spot, now)

    # --- quotas ------------------------------------------------------------------------

    def quotas(self, regions: Sequence[str] | None = None) -> Iterator[QuotaRecord]:
        """vCPU quotas of the P and G families; a region whose quotas cannot be read
        yields none and leaves a line in ``notes``."""
        for region in self.regions(regions):
            try:
                records = self._region_quotas(region)
            except BrokerError as exc:
                self._note(f"quotas for {region} not read: {exc}")
                continue
            yield from records

    def _region_quotas(self, region: str) -> list[QuotaRecord]:
        service_quotas = self.client("service-quotas", region)
        values: list[tuple[Any, float]] = []
        missing: list[str] = []
        for quota in QUOTA_CODES:
            answer: dict[str, Any] = {}
            with aws_call("GetServiceQuota", region):
                try:
                    answer = service_quotas.get_service_quota(
                        ServiceCode=SERVICE_CODE, QuotaCode=quota.code
                    )
                except Exception as exc:
                    if error_code(exc) != "NoSuchResourceException":
                        raise
            value = answer.get("Quota", {}).get("Value")
            if value is None:
                missing.append(quota.code)
            else:
                values.append((quota, float(value)))
        if missing:
            self._note(f"quotas {', '.join(missing)} in {region} are not published by the endpoint")
        if not values:
            return []
        used = self._vcpus_in_use(region)
        return [
            quota_record(region, quota, value, used.get((quota.family, quota.pricing), 0.0))
            for quota, value in values
        ]

    def _vcpus_in_use(self, region: str) -> Counter[tuple[str, Pricing]]:
        """vCPUs of running P/G instances in the account, by (family, pricing)."""
        used: Counter[tuple[str, Pricing]] = Counter()
        ec2 = self.client("ec2", region)
        filters = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        with aws_call("DescribeInstances", region):
            for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page.get("Reservations", []):
                    for item in reservation.get("Instances", []):
                        family = quota_family(str(item.get("InstanceType", "")))
                        if family is None:
                            continue
                        cpu = item.get("CpuOptions") or {}
                        vcpus = int(cpu.get("CoreCount", 0)) * int(cpu.get("ThreadsPerCore", 1))
                        if not vcpus:
                            shape = self.gpu_shapes(region).get(item.get("InstanceType", ""))
                            vcpus = (shape.vcpus or 0) if shape else 0
                        spot = item.get("InstanceLifecycle") == "spot"
                        used[(family, Pricing.SPOT if spot else Pricing.ON_DEMAND)] += vcpus
        return used

    # --- instances ---------------------------------------------------------------------

    def _describe(self, region: str, filters: list[dict[str, Any]]) -> list[InstanceRecord]:
        records: list[InstanceRecord] = []
        ec2 = self.client("ec2", region)
        with aws_call("DescribeInstances", region):
            for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page.get("Reservations", []):
                    for item in reservation.get("Instances", []):
                        record = ln.instance_record(item, region)
                        self._where[record.instance_id] = region
                        records.append(record)
        return records

    def list_instances(
        self, owner_tag: str, regions: Sequence[str] | None = None
    ) -> list[InstanceRecord]:
        """Every instance tagged with ``owner_tag`` that is not yet terminated."""
        found: list[InstanceRecord] = []
        for region in self.regions(regions):
            found += self._describe(
                region,
                [
                    {"Name": f"tag:{TAG_OWNER}", "Values": [owner_tag]},
                    {"Name": "instance-state-name", "Values": list(ln.LISTED_STATES)},
                ],
            )
        return sorted(found, key=lambda r: (r.region, r.request_id or "", r.node_index or 0))

    def launch(self, req: LaunchRequest) -> list[InstanceRecord]:
        _validate(req)
        region = req.region
        mine = self._describe(region, _request_filters(req))
        alive: dict[int, InstanceRecord] = {}
        gone: Counter[int] = Counter()
        for record in sorted(mine, key=lambda r: r.launched_at or _EPOCH):
            node = record.node_index
            if node is None:
                continue
            if record.state in ln.GONE:
                gone[node] += 1
            else:
                alive.setdefault(node, record)
        missing = [node for node in range(req.nodes) if node not in alive]
        if not missing:
            return [alive[node] for node in range(req.nodes)]

        zone = req.zone or next((r.zone for r in alive.values() if r.zone), None)
        plan = self._plan(req, zone)
        quota = quota_code(req.instance_type, req.pricing)

        created: list[InstanceRecord] = []
        node = missing[0]
        try:
            for node in missing:
                record = self._run_node(req, node, gone[node], plan, quota.code if quota else None)
                created.append(record)
                if plan.zone is None:  # the rest of the gang goes where the first went
                    plan = replace(plan, zone=record.zone)
        except BrokerError as exc:
            if req.gang and req.nodes > 1:
                got = self._release_request(req, [*alive.values(), *created])
                if isinstance(exc, OutOfCapacity):
                    raise OutOfCapacity(
                        PROVIDER,
                        exc.zone,
                        f"gang of {req.nodes} {req.instance_type} short of node "
                        f"{node}; released the {len(got)} it had",
                    ) from None
            elif req.ingress_cidr and not alive and not created:
                self._drop_security_groups(region, {req.request_id})  # unless a lost node holds it
            raise
        nodes = {**alive, **{r.node_index: r for r in created if r.node_index is not None}}
        return [nodes[node] for node in range(req.nodes)]

    def _plan(self, req: LaunchRequest, zone: str | None) -> ln.NodePlan:
        """Image, zone, groups and interfaces of the nodes this launch call creates."""
        region = req.region
        # None for a type without GPUs: it still launches, without EFA or a GPU image.
        shape = self.gpu_shapes(region).get(req.instance_type)
        efa = req.nodes > 1 and shape is not None and shape.efa
        if efa:
            zone = zone or self._first_zone(region, req.instance_type)
        ec2 = self.client("ec2", region)
        subnet = None
        if zone and (efa or req.ingress_cidr):
            subnet = net.default_subnet(ec2, region, zone)
        security_group = None
        if req.ingress_cidr:
            vpc = subnet["VpcId"] if subnet else net.default_vpc(ec2, region)
            security_group = net.ensure_security_group(ec2, req, vpc, req.ingress_cidr)
        plan = ln.NodePlan(
            image=req.image or ln.default_image(shape), zone=zone, security_group=security_group
        )
        if not (efa and shape is not None and subnet is not None):
            return plan
        group = security_group or net.default_group(ec2, region, subnet["VpcId"])
        return replace(
            plan,
            placement_group=self._placement_group(region, req),
            interfaces=ln.efa_interfaces(shape, subnet["SubnetId"], group),
        )

    def _run_node(
        self, req: LaunchRequest, node: int, generation: int, plan: ln.NodePlan, quota: str | None
    ) -> InstanceRecord:
        ec2 = self.client("ec2", req.region)
        for _ in range(_RELAUNCH_TRIES):
            params = ln.run_params(req, node, generation, plan)
            with aws_call("RunInstances", req.region, zone=plan.zone, quota=quota):
                answer = ec2.run_instances(**params)
            record = ln.instance_record(answer["Instances"][0], req.region)
            self._where[record.instance_id] = req.region
            if record.state not in ln.GONE:
                return record
            generation += 1  # the token belonged to a node that is gone: use a fresh one
        raise ProviderError(PROVIDER, f"RunInstances in {req.region} kept returning ended nodes")

    def _first_zone(self, region: str, instance_type: str) -> str:
        zones = of.zones_offering(self.client("ec2", region), region, [instance_type])
        if not zones.get(instance_type):
            raise OutOfCapacity(PROVIDER, region, f"{instance_type} is offered in no zone")
        return zones[instance_type][0]

    def _placement_group(self, region: str, req: LaunchRequest) -> str | None:
        """A cluster placement group for the request, or None where none can be made."""
        if region in self._no_placement_groups:
            return None
        name = ln.group_name(req.request_id)
        # One try only: a gang without the group still runs, and an endpoint without
        # placement groups should not cost the backoff of every retry.
        ec2 = self.clients.client("ec2", region, attempts=1)
        try:
            with aws_call("CreatePlacementGroup", region):
                try:
                    ec2.create_placement_group(
                        GroupName=name,
                        Strategy="cluster",
                        TagSpecifications=[
                            {
                                "ResourceType": "placement-group",
                                "Tags": ln.group_tags(req),
                            }
                        ],
                    )
                except Exception as exc:
                    if error_code(exc) != "InvalidPlacementGroup.Duplicate":
                        raise
        except BrokerError as exc:
            # Not asked again in this region for the life of this provider.
            self._no_placement_groups.add(region)
            self._note(f"no cluster placement group in {region}, launching without: {exc}")
            return None
        return name

    def _release_request(self, req: LaunchRequest, known: list[InstanceRecord]) -> list[str]:
        """Roll a gang back: terminate every node of the request, the ones we know and any
        a lost answer hid from us (found by tag), then its security group. Best effort: the
        rollback must not hide the error that caused it. Returns the ids released."""
        ids = {r.instance_id for r in known}
        try:
            found = self._describe(req.region, _request_filters(req))
            ids |= {r.instance_id for r in found if r.state not in ln.GONE}
            self._terminate_ids(req.region, sorted(ids))
        except BrokerError as exc:
            self._note(f"could not release {len(ids)} nodes in {req.region}: {exc}")
        else:
            if req.ingress_cidr:
                self._drop_security_groups(req.region, {req.request_id})
        return sorted(ids)

    def terminate(self, instance_ids: Sequence[str], request_id: str) -> None:
        """Terminate the instances; ones already gone or unknown are fine. Then delete the
        security group of their request (and of ``request_id``) once no node holds it.

        ``request_id`` is not needed to find the instances on EC2 (see ``_locate``)."""
        for region, records in self._locate(instance_ids).items():
            self._terminate_ids(region, [r.instance_id for r in records if r.state not in ln.GONE])
            requests = {r.request_id for r in records if r.request_id}
            self._drop_security_groups(region, requests | ({request_id} if request_id else set()))

    def set_metadata(self, instance_ids: Sequence[str], items: Mapping[str, str]) -> None:
        """Write ``items`` as tags of the instances (nodes read them from the metadata
        service); instances that carry them already are left alone."""
        located = self._locate(instance_ids)
        found = {r.instance_id for records in located.values() for r in records}
        lost = [i for i in dict.fromkeys(instance_ids) if i not in found]
        if lost:
            raise ProviderError(PROVIDER, f"set metadata: no instance {', '.join(lost)}")
        tags = [{"Key": key, "Value": value} for key, value in items.items()]
        for region, records in located.items():
            stale = [
                r.instance_id
                for r in records
                if any(r.tags.get(key) != value for key, value in items.items())
            ]
            ec2 = self.client("ec2", region)
            for start in range(0, len(stale), _ID_CHUNK):
                with aws_call("CreateTags", region):
                    ec2.create_tags(Resources=stale[start : start + _ID_CHUNK], Tags=tags)

    def _locate(self, instance_ids: Sequence[str]) -> dict[str, list[InstanceRecord]]:
        """The records of the instances, by region; unknown ids are left out.

        Instances are looked for where this provider last saw them, then in every region
        of ``regions()`` (EC2 instance ids do not name their region)."""
        remaining = list(dict.fromkeys(instance_ids))
        if not remaining:
            return {}
        known = [self._where[i] for i in remaining if i in self._where]
        located: dict[str, list[InstanceRecord]] = {}
        for region in dict.fromkeys([*known, *self.regions()]):
            if not remaining:
                break
            records: list[InstanceRecord] = []
            for start in range(0, len(remaining), _ID_CHUNK):
                chunk = remaining[start : start + _ID_CHUNK]
                records += self._describe(region, [{"Name": "instance-id", "Values": chunk}])
            if records:
                located[region] = records
                seen = {r.instance_id for r in records}
                remaining = [i for i in remaining if i not in seen]
        return located

    def _terminate_ids(self, region: str, instance_ids: Sequence[str]) -> None:
        ec2 = self.client("ec2", region)
        for start in range(0, len(instance_ids), _ID_CHUNK):
            chunk = list(instance_ids[start : start + _ID_CHUNK])
            with aws_call("TerminateInstances", region):
                try:
                    ec2.terminate_instances(InstanceIds=chunk)
                except Exception as exc:
                    if error_code(exc) not in NOT_FOUND_CODES:
                        raise

    def _drop_security_groups(self, region: str, request_ids: set[str]) -> None:
        """Delete the security groups of these requests that no node holds any more.

        Best effort: a group that stays is noted, never a reason to fail a terminate."""
        ec2 = self.client("ec2", region)
        for request_id in sorted(request_ids):
            holding = [
                {"Name": f"tag:{TAG_REQUEST}", "Values": [request_id]},
                {"Name": "instance-state-name", "Values": list(ln.HOLDING_STATES)},
            ]
            try:
                groups = net.request_groups(ec2, region, request_id)
                if not groups or self._describe(region, holding):
                    continue
                for group in groups:
                    net.delete_group(ec2, region, group, self.group_delete_waits)
            except BrokerError as exc:
                self._note(f"security group of request {request_id} in {region} kept: {exc}")


def _request_filters(req: LaunchRequest) -> list[dict[str, Any]]:
    return [
        {"Name": f"tag:{TAG_REQUEST}", "Values": [req.request_id]},
        {"Name": f"tag:{TAG_OWNER}", "Values": [req.owner]},
    ]


def _validate(req: LaunchRequest) -> None:
    if req.nodes < 1:
        raise UserError(f"launch request {req.request_id!r}: nodes must be >= 1")
    if not req.request_id:
        raise UserError("launch request: request_id must not be empty")
    if not req.instance_type:
        raise UserError(f"launch request {req.request_id!r}: instance_type must not be empty")
    if not _REGION.match(req.region):
        raise UserError(f"aws region {req.region!r} is not a region name like us-east-1")
    if req.pricing not in (Pricing.ON_DEMAND, Pricing.SPOT):
        raise UserError(f"launch request {req.request_id!r}: aws launches on_demand or spot")
