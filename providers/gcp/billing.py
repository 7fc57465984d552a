"""Compute Engine prices from the Cloud Billing Catalog, as per-region unit rates.

GCE bills a GPU VM in parts: per vCPU-hour and per GiB-hour of its family, plus per
GPU-hour of its accelerator, each on demand or Spot. The catalog names them in SKU
descriptions ("A2 Instance Core running in Americas", "Spot Preemptible A2 Instance Ram
running in Americas", "Nvidia Tesla A100 GPU attached to Spot Preemptible VMs running in
Americas") and lists the regions each covers in ``serviceRegions``. Older SKUs span a
continent, newer ones a single region; where both cover a region the narrower one wins.
Commitments, reservations, custom shapes and sole tenancy are not list prices for our
shapes and are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from providers.gcp.families import ACCELERATORS, FAMILIES

COMPUTE_SERVICE = "services/6F81-5844-456A"

_SPOT_PREFIXES = ("spot preemptible ", "preemptible ")
_SPOT_INFIXES = (" attached to spot preemptible vms", " attached to preemptible vms")
_RUNNING_IN = re.compile(r"^(?P<stem>.+?) running in (?P<where>.+)$", re.IGNORECASE)
_HOST = re.compile(r"^(?P<family>.+) instance (?P<kind>core|ram)$", re.IGNORECASE)

_HOST_STEMS = {family.host_sku.lower(): family.host_sku for family in FAMILIES}
_GPU_STEMS = {
    stem.lower(): accelerator.name
    for accelerator in ACCELERATORS.values()
    for stem in accelerator.sku_names
}
_UNITS = {"core": ("h",), "ram": ("GiBy.h",), "gpu": ("h",)}


@dataclass(frozen=True)
class SkuKey:
    """What a SKU prices: ("core"|"ram", host stem) or ("gpu", accelerator), and pricing."""

    kind: str
    name: str
    spot: bool


def classify(description: str, usage_type: str) -> SkuKey | None:
    """The key a SKU description prices, or None for SKUs our shapes do not use."""
    if usage_type not in ("OnDemand", "Preemptible"):
        return None
    text = " ".join(description.split()).lower()
    spot = usage_type == "Preemptible"
    for prefix in _SPOT_PREFIXES:
        if text.startswith(prefix):
            text, spot = text[len(prefix) :], True
    for infix in _SPOT_INFIXES:
        if infix in text:
            text, spot = text.replace(infix, ""), True
    match = _RUNNING_IN.match(text)
    if match is None:
        return None
    stem = match["stem"]
    if stem in _GPU_STEMS:
        return SkuKey("gpu", _GPU_STEMS[stem], spot)
    host = _HOST.match(stem)
    if host is not None and host["family"] in _HOST_STEMS:
        return SkuKey(host["kind"].lower(), _HOST_STEMS[host["family"]], spot)
    return None


@dataclass
class PriceBook:
    """Unit prices per (key, region); the SKU with the fewest regions wins a region."""

    _rates: dict[tuple[SkuKey, str], tuple[int, str, Decimal]] = field(default_factory=dict)

    def add(
        self,
        key: SkuKey,
        regions: Iterable[str],
        price: Decimal,
        *,
        sku_id: str = "",
    ) -> None:
        regions = list(regions)
        for region in regions:
            rank = (len(regions), sku_id)
            current = self._rates.get((key, region))
            if current is None or rank < current[:2]:
                self._rates[(key, region)] = (*rank, price)

    def rate(self, kind: str, name: str, spot: bool, region: str) -> Decimal | None:
        entry = self._rates.get((SkuKey(kind, name, spot), region))
        return None if entry is None else entry[2]

    def regions(self) -> set[str]:
        return {region for _, region in self._rates}

    def __len__(self) -> int:
        return len(self._rates)


def money_of(units: Any, nanos: Any) -> Decimal:
    """A ``google.type.Money`` amount as Decimal: units plus nanos (10^-9)."""
    return Decimal(int(units or 0)) + Decimal(int(nanos or 0)).scaleb(-9)


def unit_price(sku: Any) -> tuple[Decimal, str] | None:
    """(price, usage unit) of a ``billing_v1.Sku``: its latest pricing, first paid tier."""
    infos = list(sku.pricing_info)
    if not infos:
        return None
    latest = max(
        infos, key=lambda info: info.effective_time.timestamp() if info.effective_time else 0.0
    )
    expression = latest.pricing_expression
    tiers = sorted(expression.tiered_rates, key=lambda tier: tier.start_usage_amount)
    for tier in tiers:
        if tier.unit_price.currency_code not in ("", "USD"):
            return None
        price = money_of(tier.unit_price.units, tier.unit_price.nanos)
        if price > 0:
            return price, expression.usage_unit
    return None


def add_skus(book: PriceBook, skus: Iterable[Any]) -> Iterator[str]:
    """Add each usable SKU to ``book``; yields the description of each one taken."""
    for sku in skus:
        key = classify(sku.description, sku.category.usage_type)
        if key is None:
            continue
        priced = unit_price(sku)
        if priced is None or priced[1] not in _UNITS[key.kind]:
            continue
        book.add(key, list(sku.service_regions), priced[0], sku_id=sku.sku_id)
        yield sku.description
