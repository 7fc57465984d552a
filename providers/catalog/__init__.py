"""The bundled catalog: a snapshot of public list prices that ships with the package.

It lets the broker plan with no credentials at all. Each line of ``data/offers.csv`` is one
instance type in one region with its on-demand and (where sold) spot price, the date of
those prices and where they were published. Offers carry their cloud's name (``aws``,
``gcp``) as provider, so a later live refresh of that cloud supersedes them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

from broker.domain import Fabric, Pricing
from providers.base import Capability, OfferRecord, ProviderCheck, QuotaRecord

if TYPE_CHECKING:
    from broker.config import Settings

DATA_FILE = "offers.csv"


def _rows() -> Iterator[dict[str, str]]:
    text = resources.files(__package__).joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    yield from csv.DictReader(lines)


@lru_cache(maxsize=1)
def snapshot() -> tuple[OfferRecord, ...]:
    """Every bundled offer: one per zone listed (or one per region), per pricing sold."""
    offers: list[OfferRecord] = []
    for row in _rows():
        as_of = datetime.strptime(row["as_of"], "%Y-%m-%d").replace(tzinfo=UTC)
        prices = [(Pricing.ON_DEMAND, row["on_demand"]), (Pricing.SPOT, row["spot"])]
        zones: list[str | None] = [*row["zones"].split()] or [None]
        for zone in zones:
            for pricing, raw in prices:
                if not raw.strip():
                    continue
                offers.append(
                    OfferRecord(
                        provider=row["provider"],
                        region=row["region"],
                        zone=zone,
                        instance_type=row["instance_type"],
                        gpu=row["gpu"],
                        gpus_per_node=int(row["gpus"]),
                        gpu_memory_gib=float(row["gpu_memory_gib"]),
                        vcpus=int(row["vcpus"]),
                        memory_gib=float(row["memory_gib"]),
                        pricing=pricing,
                        price_per_hour=Decimal(raw),
                        interconnect_gbps=float(row["interconnect_gbps"]),
                        rdma=Fabric(row["fabric"]),
                        nvlink=row["nvlink"] == "yes",
                        source=f"catalog: {row['source']}",
                        as_of=as_of,
                    )
                )
    return tuple(offers)


def snapshot_date() -> datetime | None:
    """The newest as-of date in the snapshot."""
    return max((offer.as_of for offer in snapshot() if offer.as_of), default=None)


class CatalogProvider:
    """Lists the bundled offers: an offer source only, it owns no machines."""

    name = "catalog"
    capabilities = frozenset({Capability.LIST_OFFERS})

    def list_offers(self, regions: Sequence[str] | None = None) -> Iterator[OfferRecord]:
        wanted = set(regions) if regions else None
        for offer in snapshot():
            if wanted is None or offer.region in wanted:
                yield offer

    def quotas(self, regions: Sequence[str] | None = None) -> Iterator[QuotaRecord]:
        return iter(())

    def check(self, probe: bool = False) -> ProviderCheck:
        as_of = snapshot_date()
        when = as_of.date().isoformat() if as_of else "unknown date"
        return ProviderCheck(
            self.name,
            True,
            "none needed",
            "bundled snapshot",
            f"{len(snapshot())} offers as of {when}",
        )


def create(settings: Settings) -> CatalogProvider:
    return CatalogProvider()
