"""What the conformance suite needs from each provider under test, and the fake's harness.

A ``Target`` bundles a provider with a place it can launch in and the ways to make that
place fail. Real adapters get theirs from ``harness_aws`` / ``harness_gcp`` (moto's server
and the fake GCE server); the suite itself never knows which provider it is driving.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from broker.domain import InstanceState, Pricing
from broker.errors import (
    AuthError,
    BrokerError,
    OutOfCapacity,
    ProviderError,
    QuotaExceeded,
    Throttled,
)
from providers.base import InstanceRecord, LaunchRequest, Provider

# Values put into the environment as credentials: none may show in any error text.
CANARIES: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": "AKIACANARY7Q2W3E4R5T",
    "AWS_SECRET_ACCESS_KEY": "canary-secret-Zx81Vb27Lq09Tt55",
    "AWS_SESSION_TOKEN": "canary-session-Pp31Mn64Kk72Hh18",
}

LIVE = frozenset({InstanceState.PENDING, InstanceState.RUNNING})

# failure kind -> the broker.errors type it must arrive as
FAILURE_TYPES: dict[str, type[BrokerError]] = {
    "capacity": OutOfCapacity,
    "quota": QuotaExceeded,
    "auth": AuthError,
    "throttle": Throttled,
    "server": ProviderError,
}

Injector = Callable[[], AbstractContextManager[None]]


@dataclass
class Target:
    """One provider under test.

    ``capacity_fault(k)``: while active, a launch fails with the cloud's capacity error when
    it creates its k-th node (1-based, counted from the first node of the call).
    ``failures``: kind (keys of ``FAILURE_TYPES``) -> while active, launches fail that way.
    ``lost_reply()``: while active, the cloud creates the nodes a launch asks for but the
    reply never arrives (a timeout after create); None where a launch has no reply to lose.
    ``foreign()``: creates an instance outside our tags through the cloud's own API
    (None where the cloud has no API besides the provider's own).
    ``metadata(record)``: what that node reads from its metadata service (None: the tags
    of the record the provider lists for it, as on EC2).
    ``ingress(request_id)``: the rules the cloud holds opening a request's nodes, each as
    ``"tcp:PORT from CIDR"`` or ``"all from gang"`` (None: the cloud makes none).
    ``skips``: test name -> why that promise cannot be exercised on this target.
    """

    name: str
    provider: Provider
    region: str
    zone: str
    instance_type: str
    capacity_fault: Callable[[int], AbstractContextManager[None]]
    failures: Mapping[str, Injector]
    lost_reply: Injector | None
    foreign: Callable[[], str] | None = None
    metadata: Callable[[InstanceRecord], Mapping[str, str]] | None = None
    ingress: Callable[[str], list[str]] | None = None
    pricing: Pricing = Pricing.ON_DEMAND
    skips: Mapping[str, str] = field(default_factory=dict)
    owner: str = field(default_factory=lambda: f"conformance-{uuid.uuid4().hex[:8]}")

    def request(
        self,
        nodes: int = 1,
        *,
        request_id: str | None = None,
        owner: str | None = None,
        gang: bool = True,
        ingress_cidr: str | None = None,
        ports: tuple[int, ...] = (),
    ) -> LaunchRequest:
        return LaunchRequest(
            request_id=request_id or f"req-{uuid.uuid4().hex[:12]}",
            region=self.region,
            zone=self.zone,
            instance_type=self.instance_type,
            nodes=nodes,
            pricing=self.pricing,
            owner=owner or self.owner,
            tags={"gpubroker-job": "1", "gpubroker-allocation": "1"},
            gang=gang,
            ingress_cidr=ingress_cidr,
            ports=ports,
        )

    def live(self, owner: str | None = None) -> list[InstanceRecord]:
        """Our instances the provider lists that are still pending or running."""
        return [i for i in self.provider.list_instances(owner or self.owner) if i.state in LIVE]

    def node_metadata(self, record: InstanceRecord) -> Mapping[str, str]:
        return record.tags if self.metadata is None else self.metadata(record)


def fake_target() -> Target:
    from providers.fake import FakeProvider, FaultPlan, LaunchFailure, ManualClock

    provider = FakeProvider(seed=11, clock=ManualClock())

    @contextlib.contextmanager
    def faults(plan: FaultPlan) -> Iterator[None]:
        before = provider.faults
        provider.faults = plan
        try:
            yield
        finally:
            provider.faults = before

    def failure(kind: str) -> FaultPlan:
        return FaultPlan(launch_failures=(LaunchFailure(kind, times=None),))  # type: ignore[arg-type]

    return Target(
        name="fake",
        provider=provider,
        region="us-east-1",
        zone="us-east-1a",
        instance_type="fake-l4x1",
        capacity_fault=lambda k: faults(
            FaultPlan(launch_failures=(LaunchFailure("capacity", at_node=k, times=None),))
        ),
        failures={
            "capacity": lambda: faults(failure("capacity")),
            "quota": lambda: faults(failure("quota")),
            "auth": lambda: faults(failure("auth")),
            "server": lambda: faults(failure("unavailable")),
            "throttle": lambda: faults(
                FaultPlan(throttle_rate=0.999, max_attempts=3, backoff_base=0.0)
            ),
        },
        lost_reply=lambda: faults(FaultPlan(timeout_after_create=1)),
    )


def local_target(home: Path) -> Target:
    """The local provider with its state under ``home``. Its launches carry no user data,
    so nodes are recorded but nothing boots (no Ray, no processes)."""
    from broker.config import load_settings
    from providers.local import DEFAULT_NODES, REGION, ZONE, LocalProvider

    provider = LocalProvider(load_settings({"GPUBROKER_HOME": str(home)}), nodes=DEFAULT_NODES)
    blocker = f"blocker-{uuid.uuid4().hex[:8]}"

    @contextlib.contextmanager
    def capacity(free: int) -> Iterator[None]:
        """Other work holds every local node but ``free`` of them: the machine's real
        capacity runs out, nothing is injected into the provider."""
        held = provider.launch(
            LaunchRequest(
                request_id=f"req-{blocker}",
                region=REGION,
                zone=ZONE,
                instance_type=provider.instance_type,
                nodes=provider.nodes,
                pricing=Pricing.ON_DEMAND,
                owner=blocker,
                gang=False,  # takes what is left, however much that is
            )
        )
        provider.terminate([r.instance_id for r in held[:free]], f"req-{blocker}")
        try:
            yield
        finally:
            provider.terminate([r.instance_id for r in held], f"req-{blocker}")

    return Target(
        name="local",
        provider=provider,
        region=REGION,
        zone=ZONE,
        instance_type=provider.instance_type,
        capacity_fault=lambda k: capacity(k - 1),
        failures={"capacity": lambda: capacity(0)},
        lost_reply=None,  # a launch is a locked file update in this process
        skips={
            "test_every_failure_is_our_typed_error": (
                "the local machine has no quotas, credentials or API to throttle or fail: "
                "only its capacity can run out"
            ),
        },
    )
