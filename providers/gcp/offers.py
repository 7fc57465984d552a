"""GPU offers of GCE: zones x GPU machine shapes x {on demand, Spot}, priced from SKUs.

A shape's hourly price is composed the way GCE bills it:
``vCPUs * core rate + GiB * RAM rate + GPUs * GPU rate`` with the family's host rates and
the accelerator's rate in the shape's region. Accelerator-optimised types (a2, a3, g2)
carry their GPUs in the machine type; an N1 host takes attachable GPUs, offered here as
``n1-standard-<8k>+<k>x<accelerator>`` for k in 1, 2, 4, 8 up to the zone's
``maximumCardsPerInstance``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from broker.domain import MICRO, Fabric, Pricing, utcnow
from broker.errors import ProviderError
from providers.base import OfferRecord
from providers.gcp import families
from providers.gcp.billing import COMPUTE_SERVICE, PriceBook, add_skus
from providers.gcp.errors import PROVIDER
from providers.gcp.session import Session, last_segment, pages

SOURCE = "gcp-api"
# Machine types worth listing: the GPU families and the N1 hosts GPUs attach to.
MACHINE_FILTER = 'name eq "(a2|a3|g2)-.*|n1-standard-(8|16|32|64)"'


@dataclass(frozen=True)
class Shape:
    machine_type: str
    instance_type: str
    vcpus: int
    memory_mib: int
    accelerator: str | None
    gpus: int


def zones_by_region(session: Session, regions: Sequence[str] | None) -> dict[str, list[str]]:
    from google.cloud import compute_v1

    wanted = set(regions) if regions else None
    found: dict[str, list[str]] = defaultdict(list)
    request = compute_v1.ListZonesRequest(project=session.project)
    client = session.compute("ZonesClient")
    for page in pages(client.list, request, what="list zones", session=session):
        for zone in page.items:
            region = last_segment(zone.region)
            if zone.status not in ("", "UP") or (wanted is not None and region not in wanted):
                continue
            found[region].append(zone.name)
    unknown = sorted((wanted or set()) - set(found))
    if unknown:
        raise ProviderError(PROVIDER, f"region {unknown[0]} has no zones in this project")
    return {region: sorted(zones) for region, zones in sorted(found.items())}


def accelerators_by_zone(session: Session, zones: set[str]) -> dict[str, dict[str, int]]:
    """zone -> accelerator type -> maximumCardsPerInstance."""
    from google.cloud import compute_v1

    client = session.compute("AcceleratorTypesClient")
    request = compute_v1.AggregatedListAcceleratorTypesRequest(project=session.project)
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for page in pages(
        client.aggregated_list, request, what="list accelerator types", session=session
    ):
        for scope, scoped in page.items.items():
            zone = last_segment(scope)
            if zone not in zones:
                continue
            for accelerator in scoped.accelerator_types:
                found[zone][accelerator.name] = accelerator.maximum_cards_per_instance
    return found


def machine_types_by_zone(session: Session, zones: set[str]) -> dict[str, list[object]]:
    from google.cloud import compute_v1

    client = session.compute("MachineTypesClient")
    request = compute_v1.AggregatedListMachineTypesRequest(
        project=session.project, filter=MACHINE_FILTER
    )
    found: dict[str, list[object]] = defaultdict(list)
    for page in pages(client.aggregated_list, request, what="list machine types", session=session):
        for scope, scoped in page.items.items():
            zone = last_segment(scope)
            if zone in zones:
                found[zone].extend(scoped.machine_types)
    return found


def price_book(session: Session) -> PriceBook:
    from google.cloud import billing_v1

    book = PriceBook()
    client = session.catalog()
    request = billing_v1.ListSkusRequest(
        parent=COMPUTE_SERVICE, currency_code="USD", page_size=5000
    )
    for page in pages(client.list_skus, request, what="list billing SKUs", session=session):
        for _ in add_skus(book, page.skus):
            pass
    return book


def _retired(machine_type: Any) -> bool:
    state = machine_type.deprecated.state if machine_type.deprecated else ""
    return state in ("OBSOLETE", "DELETED")


def shapes(machine_types: Sequence[Any], accelerators: dict[str, int]) -> Iterator[Shape]:
    """The GPU shapes one zone sells, from its machine types and accelerator types."""
    by_name = {mt.name: mt for mt in machine_types}
    for mt in machine_types:
        name: str = mt.name
        if families.family_of(name) is None or name.startswith("n1-") or _retired(mt):
            continue
        fixed = list(mt.accelerators)
        if not fixed:
            continue
        yield Shape(
            name,
            name,
            mt.guest_cpus,
            mt.memory_mb,
            fixed[0].guest_accelerator_type,
            fixed[0].guest_accelerator_count,
        )
    for accelerator, max_cards in sorted(accelerators.items()):
        spec = families.ACCELERATORS.get(accelerator)
        if spec is None or not spec.n1_attachable:
            continue
        for count in families.N1_GPU_COUNTS:
            host = by_name.get(families.n1_host_for(count))
            if count > max_cards or host is None:
                continue
            yield Shape(
                host.name,
                families.n1_shape(host.name, count, accelerator),
                host.guest_cpus,
                host.memory_mb,
                accelerator,
                count,
            )


def compose_price(book: PriceBook, shape: Shape, region: str, spot: bool) -> Decimal | None:
    family = families.family_of(shape.machine_type)
    if family is None or shape.accelerator is None:
        return None
    core = book.rate("core", family.host_sku, spot, region)
    ram = book.rate("ram", family.host_sku, spot, region)
    gpu = book.rate("gpu", shape.accelerator, spot, region)
    if core is None or ram is None or gpu is None:
        return None
    gib = Decimal(shape.memory_mib) / Decimal(1024)
    total = shape.vcpus * core + gib * ram + shape.gpus * gpu
    return total.quantize(MICRO, rounding=ROUND_HALF_UP)


def offer(
    shape: Shape, region: str, zone: str, pricing: Pricing, price: Decimal | None, as_of: datetime
) -> OfferRecord:
    family = families.family_of(shape.machine_type)
    accelerator = families.ACCELERATORS.get(shape.accelerator or "")
    nvlink = bool(family and family.nvlink) or (
        shape.accelerator == "nvidia-tesla-v100" and shape.gpus == 8
    )
    return OfferRecord(
        provider="gcp",
        region=region,
        zone=zone,
        instance_type=shape.instance_type,
        gpu=shape.accelerator,
        gpus_per_node=shape.gpus,
        gpu_memory_gib=accelerator.memory_gib if accelerator else None,
        vcpus=shape.vcpus,
        memory_gib=round(shape.memory_mib / 1024, 2),
        pricing=pricing,
        price_per_hour=price,
        interconnect_gbps=families.network_gbps(shape.machine_type, shape.vcpus),
        rdma=family.fabric_of(shape.machine_type) if family else Fabric.NONE,
        nvlink=nvlink,
        source=SOURCE,
        as_of=as_of,
    )


def list_offers(session: Session, regions: Sequence[str] | None) -> Iterator[OfferRecord]:
    zones = zones_by_region(session, regions)
    all_zones = {zone for zone_list in zones.values() for zone in zone_list}
    if not all_zones:
        return
    accelerators = accelerators_by_zone(session, all_zones)
    machine_types = machine_types_by_zone(session, all_zones)
    book = price_book(session)
    as_of = utcnow()
    for region, zone_list in zones.items():
        for zone in zone_list:
            for shape in shapes(machine_types.get(zone, []), accelerators.get(zone, {})):
                on_demand = compose_price(book, shape, region, spot=False)
                yield offer(shape, region, zone, Pricing.ON_DEMAND, on_demand, as_of)
                spot = compose_price(book, shape, region, spot=True)
                if spot is not None:
                    yield offer(shape, region, zone, Pricing.SPOT, spot, as_of)
