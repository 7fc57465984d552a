"""The provider contract (DESIGN §4): what supplies offers, what launches, their records.

A supply source is an ``OfferSource`` (offers, quotas, ``check``); one that owns machines
is also a ``Launcher`` (launch, list, terminate, metadata). A cloud is both: a ``Provider``.
The bundled catalog is an offer source only.

Promises every launcher keeps, checked by one conformance suite for all of them:
- ``launch`` is convergent: it lists what already carries the request's tags and creates
  only what is missing, and passes the cloud's own idempotency key too;
- a gang launch is all-or-nothing: short of nodes, it terminates what it got and raises
  ``OutOfCapacity`` naming the zone;
- failures cross this boundary as ``broker.errors`` types only, with no credential in them;
- ``terminate`` is idempotent.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from broker.domain import Fabric, InstanceState, Pricing

# Tag / label keys written on every instance we create.
TAG_OWNER = "gpubroker-owner"  # GPUBROKER_OWNER_TAG: shared by every installation using it
TAG_INSTALLATION = "gpubroker-installation"  # the id made once per broker database
TAG_JOB = "gpubroker-job"
TAG_ALLOCATION = "gpubroker-allocation"
TAG_REQUEST = "gpubroker-request"
TAG_NODE = "gpubroker-node"
# Metadata a node's boot script reads besides its tags: the head's private address, which
# the broker publishes with ``Launcher.set_metadata`` once every node of the gang runs.
META_HEAD = "gpubroker-head"


class Capability(enum.Enum):
    LIST_OFFERS = "list_offers"
    QUOTAS = "quotas"
    LAUNCH = "launch"
    SPOT = "spot"
    PLACEMENT_GROUPS = "placement_groups"


@dataclass(frozen=True)
class OfferRecord:
    """One purchasable node shape in one place at one pricing, as a provider reports it."""

    provider: str
    region: str
    zone: str | None
    instance_type: str
    gpu: str | None  # the source's GPU name; the catalog service canonicalises it
    gpus_per_node: int
    gpu_memory_gib: float | None
    vcpus: int | None
    memory_gib: float | None
    pricing: Pricing
    price_per_hour: Decimal | None  # None: unknown (never zero for unknown)
    interconnect_gbps: float | None = None
    rdma: Fabric = Fabric.NONE
    nvlink: bool = False
    capacity_nodes: int | None = None
    source: str = ""
    as_of: datetime | None = None


@dataclass(frozen=True)
class QuotaRecord:
    provider: str
    region: str  # "global" for project- or account-wide quotas
    name: str  # the provider's code, e.g. L-417A185B or NVIDIA_H100_GPUS
    scope: str  # GPU family / canonical GPU / vCPU class / "all"
    unit: str  # "gpus" or "vcpus"
    limit: float
    used: float = 0.0
    pricing: Pricing | None = None


@dataclass(frozen=True)
class LaunchRequest:
    """Launch ``nodes`` identical nodes as one gang; ``request_id`` makes it idempotent."""

    request_id: str
    region: str
    zone: str | None
    instance_type: str
    nodes: int
    pricing: Pricing = Pricing.ON_DEMAND
    owner: str = "gpubroker"
    # The launching installation's id; the request id embeds it too, so two installations
    # on one account never share a request id, a client token or an instance name.
    installation: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    user_data: str | None = None
    image: str | None = None
    gang: bool = True  # all-or-nothing when nodes > 1
    # Where the broker reaches the nodes from: TCP ``ports`` are opened to this CIDR only
    # (besides all traffic between the nodes of the gang). None: no ingress from outside.
    ingress_cidr: str | None = None
    ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class InstanceRecord:
    provider: str
    instance_id: str
    region: str
    zone: str | None
    instance_type: str
    state: InstanceState
    pricing: Pricing = Pricing.ON_DEMAND
    address: str | None = None  # where the broker reaches it: public when it has one
    launched_at: datetime | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    private_address: str | None = None  # where the other nodes of its gang reach it

    @property
    def request_id(self) -> str | None:
        return self.tags.get(TAG_REQUEST)

    @property
    def installation(self) -> str | None:
        return self.tags.get(TAG_INSTALLATION)

    @property
    def node_index(self) -> int | None:
        raw = self.tags.get(TAG_NODE)
        return int(raw) if raw is not None and raw.isdigit() else None


@dataclass(frozen=True)
class ProviderCheck:
    """Whether a provider is usable from here, and how. Names where credentials come from
    (``env``, ``iam-role``, ``GOOGLE_APPLICATION_CREDENTIALS`` ...), never a credential."""

    provider: str
    usable: bool
    credentials: str | None
    endpoint: str | None
    detail: str = ""  # one line for the person at the terminal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class OfferSource(Protocol):
    """What the broker plans from: offers and quotas of one supply source."""

    name: str
    capabilities: frozenset[Capability]

    def list_offers(self, regions: Sequence[str] | None = None) -> Iterator[OfferRecord]: ...

    def quotas(self, regions: Sequence[str] | None = None) -> Iterator[QuotaRecord]: ...

    def check(self, probe: bool = False) -> ProviderCheck:
        """Credential source and endpoint, found without calling the provider's API;
        ``probe`` makes one cheap call that proves the credentials work."""
        ...


@runtime_checkable
class Launcher(Protocol):
    """What owns machines: launches, lists and terminates them."""

    name: str

    def launch(self, req: LaunchRequest) -> list[InstanceRecord]: ...

    def list_instances(self, owner_tag: str) -> list[InstanceRecord]: ...

    def terminate(self, instance_ids: Sequence[str], request_id: str) -> None: ...

    def set_metadata(self, instance_ids: Sequence[str], items: Mapping[str, str]) -> None:
        """Add or replace ``items`` in what the nodes read from their metadata service.

        EC2: instance tags (launched with instance-metadata tags enabled); GCE: instance
        metadata attributes. Convergent: setting the same items twice is one change.
        """
        ...


@runtime_checkable
class Provider(OfferSource, Launcher, Protocol):
    """A cloud: it lists offers and launches them."""


def request_tags(req: LaunchRequest, node_index: int) -> dict[str, str]:
    """The tags every node of a launch carries, so a retry can find what exists."""
    return {
        **dict(req.tags),
        TAG_OWNER: req.owner,
        **({TAG_INSTALLATION: req.installation} if req.installation else {}),
        TAG_REQUEST: req.request_id,
        TAG_NODE: str(node_index),
    }
