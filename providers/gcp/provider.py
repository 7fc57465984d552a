"""``GcpProvider``: GCE offers, Cloud Billing prices, GPU quotas and instances through the
real ``google-cloud-compute`` and ``google-cloud-billing`` clients over REST (DESIGN §4).

Launch promises, as every adapter keeps them:
- convergent: the nodes of a request are found by its labels first and only the missing
  node indices are created; each insert passes a ``requestId`` (see ``request_uuid``), so
  a retried call is the same call to GCE, and the deterministic names (409 on a
  duplicate) keep a later call from doubling a node;
- a gang (``nodes > 1``) is all-or-nothing: short of a node, every node of the request is
  deleted and the capacity error names the zone;
- multi-node gangs of families that support it get a compact placement policy, and a
  request with ``ingress_cidr`` gets its firewall rules (see ``firewalls``): one of each
  per request, deleted with the last node;
- operations are polled with ``ZoneOperationsClient.wait`` (the extended-operation
  ``result()`` ignores a custom endpoint);
- errors leave as ``broker.errors`` types in our own words, never SDK text.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from broker.config import Settings
from broker.errors import BrokerError, CapacityError, ProviderError, UserError
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
from providers.gcp import families, firewalls
from providers.gcp import launch as ln
from providers.gcp import operations as ops
from providers.gcp.check import check_credentials
from providers.gcp.errors import PROVIDER, RetryPolicy, call
from providers.gcp.operations import request_uuid
from providers.gcp.session import Session, last_segment, pages

_TIMEOUT_S = 60.0


class GcpProvider:
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

    def __init__(self, settings: Settings, *, retry: RetryPolicy | None = None) -> None:
        self.settings = settings
        self.session = Session(settings, policy=retry or RetryPolicy())

    @property
    def retry(self) -> RetryPolicy:
        return self.session.policy

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self.session.policy = policy

    def _call(self, fn: Callable[[], Any], what: str, **options: Any) -> Any:
        return call(fn, what=what, policy=self.session.policy, **options)

    def _regions(self, regions: Sequence[str] | None) -> Sequence[str] | None:
        return regions if regions else (self.settings.gcp_regions or None)

    def check(self, probe: bool = False) -> ProviderCheck:
        """Credential source, endpoint and project, for ``gpubroker check`` (no secret)."""
        return check_credentials(self.session, probe=probe)

    # --- offers and quotas -------------------------------------------------------------

    def list_offers(self, regions: Sequence[str] | None = None) -> Iterator[OfferRecord]:
        from providers.gcp.offers import list_offers

        return list_offers(self.session, self._regions(regions))

    def quotas(self, regions: Sequence[str] | None = None) -> Iterator[QuotaRecord]:
        from providers.gcp.quotas import list_quotas

        return list_quotas(self.session, self._regions(regions))

    # --- instances ---------------------------------------------------------------------

    def _instances(self, labels: dict[str, str]) -> list[Any]:
        """Every instance (all zones) whose labels include ``labels``."""
        from google.cloud import compute_v1

        client = self.session.compute("InstancesClient")
        request = compute_v1.AggregatedListInstancesRequest(
            project=self.session.project, filter=ln.label_filter(labels)
        )
        found: list[Any] = []
        for page in pages(
            client.aggregated_list, request, what="list instances", session=self.session
        ):
            for scoped in page.items.values():
                found.extend(
                    instance
                    for instance in scoped.instances
                    if all(instance.labels.get(key) == value for key, value in labels.items())
                )
        return found

    def list_instances(self, owner_tag: str) -> list[InstanceRecord]:
        labels = {ln.label_key(TAG_OWNER): ln.label_value(owner_tag)}
        records = [ln.instance_record(instance) for instance in self._instances(labels)]
        mine = [record for record in records if record.tags.get(TAG_OWNER) == owner_tag]
        return sorted(mine, key=lambda record: record.instance_id)

    def _by_request(self, request_id: str) -> dict[int, Any]:
        found: dict[int, Any] = {}
        labels = {ln.label_key(TAG_REQUEST): ln.label_value(request_id)}
        for instance in self._instances(labels):
            record = ln.instance_record(instance)
            if record.request_id == request_id and record.node_index is not None:
                found[record.node_index] = instance
        return found

    def set_metadata(self, instance_ids: Sequence[str], items: Mapping[str, str]) -> None:
        """Instance metadata attributes, merged into what each instance has (see
        ``metadata``)."""
        from providers.gcp.metadata import set_metadata

        set_metadata(self.session, instance_ids, items)

    # --- launch ------------------------------------------------------------------------

    def launch(self, req: LaunchRequest) -> list[InstanceRecord]:
        if req.nodes < 1:
            raise UserError(f"nodes must be >= 1, got {req.nodes}")
        machine_type, accelerator, _ = families.split_shape(req.instance_type)
        existing = self._by_request(req.request_id)
        zones = {last_segment(instance.zone) for instance in existing.values()}
        if len(zones) > 1:
            raise ProviderError(PROVIDER, f"request {req.request_id} has nodes in several zones")
        zone = zones.pop() if zones else self._pick_zone(req, machine_type, accelerator)
        family = families.family_of(machine_type)
        policy = None
        nonce = uuid.uuid4().hex  # one per call: see request_uuid
        if req.ingress_cidr and any(node not in existing for node in range(req.nodes)):
            firewalls.ensure(self.session, req, ln.request_stem(req.request_id), nonce)
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
        return [ln.instance_record(existing[node]) for node in sorted(existing)]

    def _pick_zone(self, req: LaunchRequest, machine_type: str, accelerator: str | None) -> str:
        if req.zone:
            return req.zone
        project = self.session.project
        regions = self.session.compute("RegionsClient")
        found = self._call(
            functools.partial(
                regions.get, project=project, region=req.region, retry=None, timeout=_TIMEOUT_S
            ),
            f"get region {req.region}",
        )
        wanted = [("MachineTypesClient", "machine_type", machine_type)]
        if accelerator is not None:
            wanted.append(("AcceleratorTypesClient", "accelerator_type", accelerator))
        for zone in sorted(last_segment(url) for url in found.zones):
            if all(self._offered_in(zone, *item) for item in wanted):
                return zone
        raise ProviderError(PROVIDER, f"{req.instance_type} is not offered in {req.region}")

    def _offered_in(self, zone: str, client: str, field: str, name: str) -> bool:
        """Whether the zone lists the machine or accelerator type ``name``."""
        get = self.session.compute(client).get
        call = functools.partial(
            get,
            project=self.session.project,
            zone=zone,
            retry=None,
            timeout=_TIMEOUT_S,
            **{field: name},
        )
        kind = field.replace("_", " ")
        return self._call(call, f"get {kind} in {zone}", if_missing=None) is not None

    def _ensure_placement(self, req: LaunchRequest, zone: str, nonce: str) -> str:
        from google.cloud import compute_v1

        region = ln.region_of(zone)
        request = compute_v1.InsertResourcePolicyRequest(
            project=self.session.project,
            region=region,
            resource_policy_resource=ln.placement_policy(req.request_id, region),
            request_id=request_uuid(req.request_id, "placement", nonce),
        )
        client = self.session.compute("ResourcePoliciesClient")
        what = f"create placement policy in {region}"
        op = self._call(
            lambda: client.insert_unary(request=request, retry=None, timeout=_TIMEOUT_S),
            what,
            if_conflict=None,
        )
        if op is not None:
            error = ops.failure(
                ops.wait(self.session, op, region=region, what=what), what=what, zone=zone
            )
            if error is not None:
                raise error
        return ln.policy_url(self.session.project, region, req.request_id)

    def _insert(
        self, req: LaunchRequest, node: int, zone: str, policy: str | None, call_id: str
    ) -> Any:
        """Start creating node ``node``; the operation, or None if it already exists."""
        from google.cloud import compute_v1

        request = compute_v1.InsertInstanceRequest(
            project=self.session.project,
            zone=zone,
            instance_resource=ln.instance_resource(req, node, zone, self.session.project, policy),
            request_id=request_uuid(req.request_id, node, call_id),
        )
        client = self.session.compute("InstancesClient")
        return self._call(
            lambda: client.insert_unary(request=request, retry=None, timeout=_TIMEOUT_S),
            f"create instance in {zone}",
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
            failure: BrokerError | None
            try:
                failure = ops.failure(
                    ops.wait(self.session, op, zone=zone, what=what), what=what, zone=zone
                )
            except (CapacityError, ProviderError) as exc:
                failure = exc
            if failure is not None:
                failures.append(failure)
        return failures

    # --- terminate ---------------------------------------------------------------------

    def _release(self, req: LaunchRequest, instances: Sequence[Any]) -> None:
        """Roll a failed launch back: its nodes, and then (as ``terminate`` does once the
        last node is gone) its firewall rules, which no node holds when none was made."""
        ids = [ln.instance_record(instance).instance_id for instance in instances]
        if ids:
            self.terminate(ids, request_uuid("release", *ids))
        elif req.ingress_cidr:
            firewalls.delete(self.session, ln.request_stem(req.request_id))

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
            zone, name, number = ln.split_instance_id(instance_id)
            found = self._call(
                functools.partial(
                    client.get,
                    project=project,
                    zone=zone,
                    instance=name,
                    retry=None,
                    timeout=_TIMEOUT_S,
                ),
                f"get instance in {zone}",
                if_missing=None,
            )
            if found is None or (number is not None and str(found.id) != number):
                continue  # gone already, or a later node now carries the name
            policies.update(
                url for url in found.resource_policies if last_segment(url).startswith("gpb-")
            )
            owner_request = ln.instance_record(found).request_id
            if owner_request and ln.request_stem(owner_request) in found.tags.items:
                opened.add(owner_request)
            request = compute_v1.DeleteInstanceRequest(
                project=project,
                zone=zone,
                instance=name,
                request_id=request_uuid("delete", request_id, zone, name, found.id),
            )
            op = self._call(
                functools.partial(
                    client.delete_unary, request=request, retry=None, timeout=_TIMEOUT_S
                ),
                f"delete instance in {zone}",
                if_missing=None,
            )
            if op is not None:
                started.append((zone, op))
        for zone, op in started:
            what = f"delete instance in {zone}"
            done = ops.wait(self.session, op, zone=zone, what=what)
            codes = [error.code for error in done.error.errors] if done.error else []
            if codes and "RESOURCE_NOT_FOUND" not in codes:
                failure = ops.failure(done, what=what, zone=zone)
                if failure is not None:
                    raise failure
        for url in sorted(policies):
            self._delete_policy(url)
        for owner_request in sorted(opened):
            if not self._by_request(owner_request):
                firewalls.delete(self.session, ln.request_stem(owner_request))

    def _delete_policy(self, url: str) -> None:
        """Best effort: a policy still used by other nodes of the gang stays until they go."""
        region, name = ln.policy_location(url)
        client = self.session.compute("ResourcePoliciesClient")
        try:
            op = self._call(
                functools.partial(
                    client.delete_unary,
                    project=self.session.project,
                    region=region,
                    resource_policy=name,
                    retry=None,
                    timeout=_TIMEOUT_S,
                ),
                f"delete placement policy in {region}",
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
