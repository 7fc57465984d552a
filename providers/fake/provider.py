"""``FakeProvider``: a deterministic cloud with real capacity accounting and injected faults.

It keeps the promises of ``providers.base`` the way a real adapter must:
- capacity is finite per pool (zone, instance type, pricing); a launch beyond it raises
  ``OutOfCapacity(zone)``; a non-gang launch may come back with fewer nodes (a partial
  grant); a gang is all-or-nothing and rolls back what it created;
- quotas count GPUs per region over live instances;
- launch is convergent on the request id: nodes already carrying the request's tags are
  kept and only the missing node indices are created, so a retry after a "timeout after
  create" never doubles. Like a cloud's idempotency key (EC2 ``ClientToken``), this
  lookup sees the truth even while ``list_instances`` lags behind;
- throttled calls are retried inside with bounded full-jitter backoff; ``stats`` counts
  calls, attempts and throttles so tests can bound the retries;
- ``set_metadata`` writes the items into the instances' tags, as EC2 does (its nodes read
  tags from the metadata service); every node has a private ``10.x`` address, stable for
  its life, which is also where the broker reaches it.

Same seed, same calls -> same instance ids, same throttles, same results (timestamps come
from the clock given; ``ManualClock`` makes those repeatable too).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

from broker.domain import InstanceState, Pricing
from broker.errors import (
    AuthError,
    BrokerError,
    OutOfCapacity,
    ProviderError,
    QuotaExceeded,
    Throttled,
    UserError,
)
from providers.base import (
    TAG_NODE,
    TAG_OWNER,
    TAG_REQUEST,
    Capability,
    InstanceRecord,
    LaunchRequest,
    OfferRecord,
    ProviderCheck,
    QuotaRecord,
    request_tags,
)
from providers.fake.clock import Clock, SystemClock
from providers.fake.faults import FaultPlan, LaunchFailure
from providers.fake.offers import default_offers, default_quotas
from providers.fake.state import CloudState, FakeInstance, StateStore

T = TypeVar("T")
QUOTA_NAME = "GPUS"


@dataclass
class CallStats:
    """What the provider's callers caused: per operation name, calls, attempts (a throttled
    call takes several) and throttles; ``most_attempts`` is the most any one call took."""

    calls: Counter[str] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)
    most_attempts: int = 0

    @property
    def most_retries(self) -> int:
        return max(0, self.most_attempts - 1)


class FakeProvider:
    """A fake cloud. See the module docstring for its promises and ``FaultPlan`` for faults.

    ``offers``: the supply (OfferRecords with a zone; ``capacity_nodes`` None = unlimited),
    by default ``offers.default_offers``; ``regions`` keeps only those regions;
    ``quotas``: region -> GPU limit (regions left out are unlimited), by default 128 per
    region; ``state_path``: a JSON file shared by processes (see ``state.StateStore``);
    ``store``: an existing in-memory store to share with other providers of this process.
    Without either, the provider has a cloud of its own.
    """

    capabilities = frozenset(
        {Capability.LIST_OFFERS, Capability.QUOTAS, Capability.LAUNCH, Capability.SPOT}
    )

    def __init__(
        self,
        name: str = "fake",
        seed: int = 0,
        *,
        regions: Iterable[str] | None = None,
        offers: Iterable[OfferRecord] | None = None,
        quotas: Mapping[str, int] | None = None,
        faults: FaultPlan | None = None,
        clock: Clock | None = None,
        state_path: str | Path | None = None,
        store: StateStore | None = None,
    ) -> None:
        if store is not None and state_path is not None:
            raise ValueError("give state_path or store, not both")
        self.name = name
        self.seed = seed
        self.faults = faults or FaultPlan()
        self.clock: Clock = clock or SystemClock()
        supply = list(offers) if offers is not None else default_offers(name)
        if regions is not None:
            keep = set(regions)
            supply = [offer for offer in supply if offer.region in keep]
        for offer in supply:
            if not offer.zone:
                raise ValueError(f"fake offer {offer.instance_type} in {offer.region}: no zone")
        self._offers = [replace(offer, provider=name) for offer in supply]
        self._pools = {(o.zone, o.instance_type, o.pricing): o for o in self._offers}
        self._offer_index: dict[tuple[str | None, str, Pricing], int] = {}  # for set_offer
        offer_regions = {offer.region for offer in self._offers}
        if quotas is None:
            quotas = {r: n for r, n in default_quotas().items() if r in offer_regions}
        self.quota_limits: dict[str, int] = dict(quotas)
        self.stats = CallStats()
        self._store = store if store is not None else StateStore(state_path)

    @property
    def state_path(self) -> Path | None:
        return self._store.path

    # --- the Provider protocol ----------------------------------------------------------

    def list_offers(self, regions: Sequence[str] | None = None) -> Iterator[OfferRecord]:
        def run(_state: CloudState) -> list[OfferRecord]:
            now = self.clock.now()
            return [
                replace(offer, as_of=now)
                for offer in self._offers
                if regions is None or offer.region in regions
            ]

        return iter(self._call("list_offers", run))

    def quotas(self, regions: Sequence[str] | None = None) -> Iterator[QuotaRecord]:
        def run(state: CloudState) -> list[QuotaRecord]:
            return [
                QuotaRecord(
                    provider=self.name,
                    region=region,
                    name=QUOTA_NAME,
                    scope="all",
                    unit="gpus",
                    limit=float(limit),
                    used=float(self._gpus_in_use(state, region)),
                )
                for region, limit in sorted(self.quota_limits.items())
                if regions is None or region in regions
            ]

        return iter(self._call("quotas", run))

    def check(self, probe: bool = False) -> ProviderCheck:
        """Usable with no credentials; ``probe`` makes one call, which may be throttled."""
        where = str(self.state_path) if self.state_path else "this process"
        if probe:
            try:
                self._call("check", lambda _state: None)
            except BrokerError as exc:
                return ProviderCheck(self.name, False, "none needed", where, exc.message)
        return ProviderCheck(self.name, True, "none needed", where, f"{len(self._offers)} offers")

    def launch(self, req: LaunchRequest) -> list[InstanceRecord]:
        if req.nodes < 1:
            raise UserError(f"launch {req.request_id}: nodes must be >= 1, got {req.nodes}")
        return self._call("launch", lambda state: self._launch(state, req))

    def list_instances(self, owner_tag: str) -> list[InstanceRecord]:
        def run(state: CloudState) -> list[InstanceRecord]:
            call = state.bump("list_calls")
            now = self.clock.now()
            lag = timedelta(seconds=self.faults.listing_lag_seconds)
            return [
                self._record(inst)
                for inst in state.instances.values()
                if inst.tags.get(TAG_OWNER) == owner_tag
                and inst.state != InstanceState.TERMINATED
                and call > inst.visible_after_list
                and now >= inst.launched_at + lag
            ]

        return self._call("list_instances", run)

    def set_metadata(self, instance_ids: Sequence[str], items: Mapping[str, str]) -> None:
        """Add or replace ``items`` in the instances' tags; an unknown id changes nothing
        and raises ``ProviderError``."""

        def run(state: CloudState) -> None:
            unknown = [i for i in instance_ids if i not in state.instances]
            if unknown:
                raise ProviderError(self.name, f"set metadata: no instance {', '.join(unknown)}")
            for instance_id in instance_ids:
                state.instances[instance_id].tags.update(items)

        self._call("set_metadata", run)

    def terminate(self, instance_ids: Sequence[str], request_id: str) -> None:
        """Terminate the instances; ids already terminated or unknown are left alone."""

        def run(state: CloudState) -> None:
            if state.bump("terminate_calls") <= self.faults.terminate_failures:
                raise ProviderError(
                    self.name,
                    f"terminate {request_id}: request failed (injected)",
                    retryable=True,
                )
            self._terminate(state, instance_ids)

        self._call("terminate", run)

    # --- for tests and simulations ------------------------------------------------------

    def preempt(self, instance_ids: Sequence[str]) -> list[str]:
        """Take these instances away now (state PREEMPTED); returns the ids that were live."""
        with self._store.open() as state:
            taken = []
            for instance_id in instance_ids:
                inst = state.instances.get(instance_id)
                if inst is not None and inst.live:
                    inst.state = InstanceState.PREEMPTED
                    inst.terminated_at = self.clock.now()
                    taken.append(instance_id)
            return taken

    def set_offer(
        self,
        zone: str,
        instance_type: str,
        pricing: Pricing,
        *,
        capacity_nodes: int | None = None,
        price_per_hour: Decimal | None = None,
    ) -> None:
        """Move a pool's capacity or price (a simulation replaying availability and spot
        prices); what is left as None keeps its value. Live nodes above a lower capacity
        keep running: taking them away is ``preempt``'s job."""
        key = (zone, instance_type, pricing)
        offer = self._pools[key]
        changed = replace(
            offer,
            capacity_nodes=offer.capacity_nodes if capacity_nodes is None else capacity_nodes,
            price_per_hour=offer.price_per_hour if price_per_hour is None else price_per_hour,
        )
        self._pools[key] = changed
        if not self._offer_index:
            self._offer_index.update(
                ((o.zone, o.instance_type, o.pricing), i) for i, o in enumerate(self._offers)
            )
        self._offers[self._offer_index[key]] = changed

    def instances(self) -> list[InstanceRecord]:
        """Every instance ever created, terminated ones too, without lag or throttling."""
        with self._store.open() as state:
            self._apply_preemptions(state)
            return [self._record(inst) for inst in state.instances.values()]

    def free_nodes(self, zone: str, instance_type: str, pricing: Pricing) -> int | None:
        """Nodes left in a pool now (None: unlimited)."""
        offer = self._pools.get((zone, instance_type, pricing))
        if offer is None:
            return 0
        with self._store.open() as state:
            self._apply_preemptions(state)
            return self._free(state, offer)

    # --- inside -------------------------------------------------------------------------

    def _call(self, op: str, run: Callable[[CloudState], T]) -> T:
        """One API call: refused as throttled at ``throttle_rate`` and retried with
        full-jitter backoff up to ``max_attempts`` attempts, then ``run`` on the state."""
        self.stats.calls[op] += 1
        plan = self.faults
        attempt = 0
        while True:
            attempt += 1
            self.stats.attempts[op] += 1
            self.stats.most_attempts = max(self.stats.most_attempts, attempt)
            with self._store.open() as state:
                self._apply_preemptions(state)
                if not (plan.throttle_rate and self._draw(state) < plan.throttle_rate):
                    return run(state)
                self.stats.throttled[op] += 1
                if attempt >= plan.max_attempts:
                    raise Throttled(self.name, f"{op}: throttled, gave up after {attempt} attempts")
                ceiling = min(plan.backoff_cap, plan.backoff_base * 2 ** (attempt - 1))
                delay = ceiling * self._draw(state)
            self.clock.sleep(delay)

    def _draw(self, state: CloudState) -> float:
        """The next number in [0, 1) of this provider's seeded sequence."""
        digest = hashlib.sha256(f"{self.seed}:draw:{state.bump('draws')}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def _launch(self, state: CloudState, req: LaunchRequest) -> list[InstanceRecord]:
        state.bump("launch_calls")
        mine = [
            inst
            for inst in state.instances.values()
            if inst.live and inst.tags.get(TAG_REQUEST) == req.request_id
        ]
        zone = mine[0].zone if mine else self._pick_zone(state, req)
        offer = self._pools.get((zone, req.instance_type, req.pricing))
        if offer is None or offer.region != req.region:
            raise ProviderError(
                self.name,
                f"{req.instance_type} ({req.pricing}) is not offered in {zone} "
                f"of region {req.region}",
            )
        have = {inst.tags.get(TAG_NODE) for inst in mine}
        missing = [index for index in range(req.nodes) if str(index) not in have]
        gang = req.gang and req.nodes > 1
        created: list[FakeInstance] = []
        for position, index in enumerate(missing, start=1):
            error = self._injected_failure(state, position, offer) or self._shortage(
                state, offer, len(created)
            )
            if error is not None:
                if gang:
                    self._terminate(state, [inst.instance_id for inst in mine + created])
                    raise error
                if isinstance(error, OutOfCapacity | QuotaExceeded) and (mine or created):
                    break  # a partial grant
                raise error
            created.append(self._create(state, req, offer, index))
        if created and state.count("timeouts") < self.faults.timeout_after_create:
            state.bump("timeouts")
            raise ProviderError(
                self.name,
                f"launch {req.request_id}: timed out waiting for the nodes (injected)",
                retryable=True,
            )
        nodes = sorted(mine + created, key=lambda inst: int(inst.tags[TAG_NODE]))
        return [self._record(inst) for inst in nodes]

    def _pick_zone(self, state: CloudState, req: LaunchRequest) -> str:
        if req.zone:
            return req.zone
        offers = [
            offer
            for offer in self._offers
            if offer.region == req.region
            and offer.instance_type == req.instance_type
            and offer.pricing == req.pricing
        ]
        if not offers:
            raise ProviderError(
                self.name, f"{req.instance_type} ({req.pricing}) is not offered in {req.region}"
            )
        need = req.nodes if req.gang else 1
        for offer in offers:
            free = self._free(state, offer)
            if free is None or free >= need:
                return str(offer.zone)
        return str(offers[0].zone)

    def _injected_failure(
        self, state: CloudState, position: int, offer: OfferRecord
    ) -> BrokerError | None:
        for number, failure in enumerate(self.faults.launch_failures):
            if failure.at_node != position:
                continue
            if failure.zone not in (None, offer.zone):
                continue
            if failure.instance_type not in (None, offer.instance_type):
                continue
            key = f"failure:{number}"
            if failure.times is not None and state.count(key) >= failure.times:
                continue
            state.bump(key)
            return self._failure_error(failure, offer)
        return None

    def _failure_error(self, failure: LaunchFailure, offer: OfferRecord) -> BrokerError:
        zone = str(offer.zone)
        if failure.kind == "capacity":
            return OutOfCapacity(self.name, zone, f"no {offer.instance_type} nodes (injected)")
        if failure.kind == "quota":
            return QuotaExceeded(self.name, f"{offer.region}/{QUOTA_NAME}", "injected")
        if failure.kind == "auth":
            return AuthError(self.name, "credentials rejected (injected)")
        if failure.kind == "unavailable":
            return ProviderError(
                self.name, f"service unavailable in {zone} (injected)", retryable=True
            )
        return ProviderError(self.name, f"internal error in {zone} (injected)")

    def _shortage(self, state: CloudState, offer: OfferRecord, granted: int) -> BrokerError | None:
        zone = str(offer.zone)
        limit = self.faults.grant_at_most
        if limit is not None and granted >= limit:
            return OutOfCapacity(self.name, zone, f"granted only {granted} new node(s)")
        free = self._free(state, offer)
        if free is not None and free < 1:
            return OutOfCapacity(
                self.name, zone, f"no {offer.instance_type} ({offer.pricing}) nodes left"
            )
        quota = self.quota_limits.get(offer.region)
        if quota is not None:
            in_use = self._gpus_in_use(state, offer.region)
            if in_use + offer.gpus_per_node > quota:
                return QuotaExceeded(
                    self.name,
                    f"{offer.region}/{QUOTA_NAME}",
                    f"{in_use} of {quota} GPUs in use, {offer.gpus_per_node} more asked",
                )
        return None

    def _free(self, state: CloudState, offer: OfferRecord) -> int | None:
        if offer.capacity_nodes is None:
            return None
        used = sum(
            1
            for inst in state.instances.values()
            if inst.live
            and inst.zone == offer.zone
            and inst.instance_type == offer.instance_type
            and inst.pricing == offer.pricing
        )
        return max(0, offer.capacity_nodes - used)

    @staticmethod
    def _gpus_in_use(state: CloudState, region: str) -> int:
        return sum(
            inst.gpus for inst in state.instances.values() if inst.live and inst.region == region
        )

    def _create(
        self, state: CloudState, req: LaunchRequest, offer: OfferRecord, index: int
    ) -> FakeInstance:
        number = state.bump("nodes")
        digest = hashlib.sha256(f"{self.seed}:node:{number}".encode()).hexdigest()
        inst = FakeInstance(
            instance_id=f"{self.name}-{digest[:12]}",
            region=offer.region,
            zone=str(offer.zone),
            instance_type=offer.instance_type,
            pricing=offer.pricing,
            gpus=offer.gpus_per_node,
            state=InstanceState.RUNNING,
            launched_at=self.clock.now(),
            address=f"10.{(number >> 16) & 255}.{(number >> 8) & 255}.{number & 255}",
            tags=request_tags(req, index),
            visible_after_list=state.count("list_calls") + self.faults.listing_lag_calls,
        )
        state.instances[inst.instance_id] = inst
        return inst

    def _terminate(self, state: CloudState, instance_ids: Iterable[str]) -> None:
        now = self.clock.now()
        for instance_id in instance_ids:
            inst = state.instances.get(instance_id)
            if inst is not None and inst.state != InstanceState.TERMINATED:
                inst.state = InstanceState.TERMINATED
                inst.terminated_at = now

    def _apply_preemptions(self, state: CloudState) -> None:
        if not self.faults.preemptions:
            return
        now = self.clock.now()
        for plan in self.faults.preemptions:
            for inst in state.instances.values():
                if not inst.live or not plan.matches(inst.zone, inst.instance_type, inst.pricing):
                    continue
                if plan.at is not None:
                    if inst.launched_at >= plan.at:
                        continue
                    due = plan.at
                else:
                    due = inst.launched_at + timedelta(seconds=plan.after_seconds or 0.0)
                if now >= due:
                    inst.state = InstanceState.PREEMPTED
                    inst.terminated_at = due

    def _record(self, inst: FakeInstance) -> InstanceRecord:
        return InstanceRecord(
            provider=self.name,
            instance_id=inst.instance_id,
            region=inst.region,
            zone=inst.zone,
            instance_type=inst.instance_type,
            state=inst.state,
            pricing=inst.pricing,
            address=inst.address,
            launched_at=inst.launched_at,
            tags=dict(inst.tags),
            private_address=inst.address,
        )
